package bpf

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
)

const (
	testMark     = 0x2a
	testPort     = 5124
	testTable    = "100"
	convertPort  = 80   // the Convert SYNs' original destination port
	plainPort    = 8080 // a real server port, never steered
	sshPort      = 22   // a port with an ordinary listener on the converter
	dialDeadline = 5 * time.Second
)

// steerEnv is a lab with policy routing and the steer program on cv1 and
// cv2 of the converter.
type steerEnv struct {
	lab *lab.Lab
	s   *Steering
}

func newSteerEnv(t *testing.T) *steerEnv {
	l := upLab(t)
	// The client opens extra subflows only when a test adds an endpoint,
	// so that counters do not depend on joins racing the test.
	run(t, "ip", "-n", l.Client, "mptcp", "endpoint", "flush")
	for _, fam := range []string{"-4", "-6"} {
		run(t, "ip", "-n", l.Converter, fam, "rule", "add", "fwmark", "0x2a", "lookup", testTable)
	}
	run(t, "ip", "-n", l.Converter, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", testTable)
	run(t, "ip", "-n", l.Converter, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", testTable)

	s, err := LoadSteering(SteeringConfig{Mark: testMark, Port: testPort})
	if err != nil {
		t.Fatalf("LoadSteering: %+v", err)
	}
	t.Cleanup(func() { s.Close() })
	attachIn(t, l.Converter, s.Attach, lab.IfConvPath1, lab.IfConvPath2)
	return &steerEnv{lab: l, s: s}
}

// transparentListener opens the kind of listener steering feeds: MPTCP,
// IP(V6)_TRANSPARENT, TFO without cookies.
func (e *steerEnv) transparentListener(t *testing.T, network string, port int) *net.TCPListener {
	t.Helper()
	transparent := sockopt{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"}
	addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(port))
	if network == "tcp6" {
		transparent = sockopt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT"}
		addr = net.JoinHostPort("::", strconv.Itoa(port))
	}
	return listen(t, e.lab.Converter, network, addr, true, transparent,
		sockopt{unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 64, "TCP_FASTOPEN"},
		sockopt{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1, "TCP_FASTOPEN_NO_COOKIE"})
}

// dialClient sends payload in an MPTCP SYN from the client namespace.
func (e *steerEnv) dialClient(t *testing.T, dst netip.AddrPort, payload []byte) *net.TCPConn {
	t.Helper()
	var c *net.TCPConn
	err := lab.RunIn(e.lab.Client, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
		defer cancel()
		c, err = client.DialRaw(ctx, dst, true, payload)
		return err
	})
	if err != nil {
		t.Fatalf("DialRaw %s: %v", dst, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *steerEnv) counters(t *testing.T) map[string]uint64 {
	t.Helper()
	c, err := e.s.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// convertMessage is a Convert header and a Connect TLV for dst, followed by
// data (RFC 8803 sections 5 and 6.1).
func convertMessage(dst netip.AddrPort, data string) []byte {
	a := dst.Addr().As16()
	m := []byte{1, 6, 0x22, 0x63, 0x0a, 5, byte(dst.Port() >> 8), byte(dst.Port())}
	m = append(m, a[:]...)
	return append(m, data...)
}

// TestSteering sends a Convert SYN to the real server's address and wants
// the converter's transparent listener to get it with the original
// destination, the rest of the flow delivered locally, the server to see
// nothing of it, and plain connections to pass through untouched.
func TestSteering(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr

	// Servers that must see only the plain connections.
	serverConvert := listen(t, e.lab.Server, "tcp", ":"+strconv.Itoa(convertPort), false)
	serverPlain := listen(t, e.lab.Server, "tcp", ":"+strconv.Itoa(plainPort), false)

	for _, tc := range []struct {
		name         string
		network      string
		server, peer netip.Addr
	}{
		{"ipv4", "tcp4", ad.ServerV4, ad.ClientPath1V4},
		{"ipv6", "tcp6", ad.ServerV6, ad.ClientPath1V6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := e.transparentListener(t, tc.network, testPort)
			dst := netip.AddrPortFrom(tc.server, convertPort)
			msg := convertMessage(dst, "hello")
			before := e.counters(t)

			c := e.dialClient(t, dst, msg)
			conv := acceptWithin(t, ln, dialDeadline)
			if conv == nil {
				t.Fatalf("converter accepted nothing; counters %v", delta(e.counters(t), before))
			}
			if got := conv.LocalAddr().(*net.TCPAddr).AddrPort(); got.Addr().Unmap() != tc.server || got.Port() != convertPort {
				t.Errorf("getsockname = %s, want the original destination %s", got, dst)
			}
			if got := conv.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != tc.peer {
				t.Errorf("peer = %s, want the client %s", got, tc.peer)
			}
			if mp, err := conv.MultipathTCP(); err != nil || !mp {
				t.Errorf("accepted connection is not MPTCP (%v)", err)
			}
			if got := readN(t, conv, len(msg)); !bytes.Equal(got, msg) {
				t.Errorf("converter read % x, want % x", got, msg)
			}

			// The rest of the flow: both directions, delivered locally.
			if _, err := c.Write([]byte("more")); err != nil {
				t.Fatal(err)
			}
			if got := readN(t, conv, 4); string(got) != "more" {
				t.Errorf("converter read %q after the SYN, want %q", got, "more")
			}
			ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
			defer cancel()
			if err := sockinfo.WaitEstablished(ctx, conv); err != nil {
				t.Fatal(err)
			}
			if _, err := conv.Write([]byte("reply")); err != nil {
				t.Fatal(err)
			}
			if got := readN(t, c, 5); string(got) != "reply" {
				t.Errorf("client read %q, want %q", got, "reply")
			}

			d := delta(e.counters(t), before)
			t.Logf("counters after one Convert connection: %v", d)
			if d["steered"] != 1 || d["est_marked"] == 0 || d["lookup_failed"]+d["assign_failed"]+d["joins_steered"] != 0 {
				t.Errorf("counters %v, want steered 1, est_marked > 0, no failures", d)
			}
			if s := acceptWithin(t, serverConvert, 10*time.Millisecond); s != nil {
				t.Errorf("the server got a steered connection from %s", s.RemoteAddr())
			}

			// A plain connection to a real server passes through.
			before = e.counters(t)
			plain := netip.AddrPortFrom(tc.server, plainPort)
			var pc net.Conn
			err := lab.RunIn(e.lab.Client, func() (err error) {
				pc, err = net.DialTimeout("tcp", plain.String(), dialDeadline)
				return err
			})
			if err != nil {
				t.Fatalf("plain dial %s: %v", plain, err)
			}
			defer pc.Close()
			if _, err := pc.Write([]byte("plain")); err != nil {
				t.Fatal(err)
			}
			s := acceptWithin(t, serverPlain, dialDeadline)
			if s == nil {
				t.Fatalf("server did not get the plain connection")
			}
			if got := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != tc.peer {
				t.Errorf("server sees %s, want the client's own %s", got, tc.peer)
			}
			if got := readN(t, s, 5); string(got) != "plain" {
				t.Errorf("server read %q", got)
			}
			d = delta(e.counters(t), before)
			t.Logf("counters after one plain connection: %v", d)
			if d["passed"] < 2 || d["steered"]+d["est_marked"]+d["lookup_failed"]+d["assign_failed"] != 0 {
				t.Errorf("counters %v, want passed >= 2 and nothing else", d)
			}
		})
	}
	checkCloseDetaches(t, e)
}

// TestSteeringSkipsOrdinaryListeners sends a Convert SYN to a server port
// on which the converter host has an ordinary, non-transparent listener of
// its own (sshd on :22). That listener is not the converter's: the SYN must
// go to the converter's listener on the configured Port, both with no port
// registered and with another one registered, and neither the ordinary
// listener nor the real server may see the connection.
func TestSteeringSkipsOrdinaryListeners(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr
	// Dual-stack listeners: the converter's own "sshd", and the real one.
	sshd := listen(t, e.lab.Converter, "tcp", ":"+strconv.Itoa(sshPort), false)
	server := listen(t, e.lab.Server, "tcp", ":"+strconv.Itoa(sshPort), false)

	for _, tc := range []struct {
		name         string
		network      string
		server, peer netip.Addr
	}{
		{"ipv4", "tcp4", ad.ServerV4, ad.ClientPath1V4},
		{"ipv6", "tcp6", ad.ServerV6, ad.ClientPath1V6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := e.transparentListener(t, tc.network, testPort)
			dst := netip.AddrPortFrom(tc.server, sshPort)
			for _, registered := range []uint16{0, convertPort} {
				if registered != 0 {
					if err := e.s.AddListenerPort(registered); err != nil {
						t.Fatal(err)
					}
				}
				msg := convertMessage(dst, "ssh")
				before := e.counters(t)
				c := e.dialClient(t, dst, msg)
				conv := acceptWithin(t, ln, dialDeadline)
				if conv == nil {
					t.Fatalf("port %d registered: the converter's :%d listener accepted nothing; counters %v", registered, testPort, delta(e.counters(t), before))
				}
				if got := conv.LocalAddr().(*net.TCPAddr).AddrPort(); got.Addr().Unmap() != tc.server || got.Port() != sshPort {
					t.Errorf("getsockname = %s, want the original destination %s", got, dst)
				}
				if got := readN(t, conv, len(msg)); !bytes.Equal(got, msg) {
					t.Errorf("converter read % x, want % x", got, msg)
				}
				d := delta(e.counters(t), before)
				if d["steered"] != 1 || d["lookup_failed"]+d["assign_failed"] != 0 {
					t.Errorf("port %d registered: counters %v, want steered 1, no failures", registered, d)
				}
				if s := acceptWithin(t, sshd, 10*time.Millisecond); s != nil {
					t.Errorf("the converter's ordinary :%d listener got a Convert connection from %s", sshPort, s.RemoteAddr())
				}
				if s := acceptWithin(t, server, 10*time.Millisecond); s != nil {
					t.Errorf("the server got a Convert connection from %s", s.RemoteAddr())
				}
				c.Close()
				conv.Close()
				if err := e.s.RemoveListenerPort(registered); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// checkCloseDetaches wants the links visible before Close and gone after.
func checkCloseDetaches(t *testing.T, e *steerEnv) {
	st, err := e.s.Status()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status before Close: %+v", st)
	if len(st.Links) != 2 {
		t.Fatalf("status lists %d links, want 2 (cv1, cv2)", len(st.Links))
	}
	// bpftool shows tcx links from version 7.3 on (Debian 12 has 7.1).
	bpftoolSees := strings.Contains(bpftoolNet(t, e.lab, lab.IfConvPath1), "tcx/ingress")
	if !bpftoolSees {
		t.Logf("this bpftool does not list tcx links; relying on the link ids")
	}
	if err := e.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, a := range st.Links {
		if l, err := linkFromID(a.LinkID); err == nil {
			l.Close()
			t.Errorf("link %d on %s still exists after Close", a.LinkID, a.Interface)
		}
	}
	if n := tcxLinksOf(t, st.ProgramID); n != 0 {
		t.Errorf("%d tcx links still run program %d after Close", n, st.ProgramID)
	}
	for _, ifname := range []string{lab.IfConvPath1, lab.IfConvPath2} {
		if out := bpftoolNet(t, e.lab, ifname); bpftoolSees && strings.Contains(out, "tcx") {
			t.Errorf("bpftool still shows a tcx program on %s after Close:\n%s", ifname, out)
		}
	}
}
