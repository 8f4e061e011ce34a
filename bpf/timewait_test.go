package bpf

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/lab"
)

// TestTimeWaitNotLocal ends a converted connection with the converter
// closing first, which leaves its socket in TIME_WAIT with the client's
// 4-tuple, then opens a plain connection from the same client port to the
// real server. It must reach the server: a TIME_WAIT socket does not make
// a flow local (steer.c, local_flow). Before, the SYN was marked and
// delivered to the TIME_WAIT socket, which hands a new SYN to a listener on
// its port when there is one: the converter's transparent listener on the
// port would have taken a plain connection.
func TestTimeWaitNotLocal(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr
	// With TCP early demux on (the default), the kernel attaches the
	// TIME_WAIT socket to the unmarked SYN before routing it, and
	// ip_forward/ip6_forward drop forwarded packets that carry a socket:
	// the plain connection would then stall until TIME_WAIT ends (about
	// 60 s; 68 s measured here) instead of reaching the server. The
	// sysctl is per namespace and covers IPv6 too.
	run(t, "ip", "netns", "exec", e.lab.Converter, "sysctl", "-qw", "net.ipv4.tcp_early_demux=0")
	server := listen(t, e.lab.Server, "tcp", ":"+strconv.Itoa(convertPort), false)

	for i, tc := range []struct {
		name         string
		network      string
		server, peer netip.Addr
	}{
		{"ipv4", "tcp4", ad.ServerV4, ad.ClientPath1V4},
		{"ipv6", "tcp6", ad.ServerV6, ad.ClientPath1V6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := e.transparentListener(t, tc.network, testPort)
			// The converter's listener on the destination port, as
			// the engine opens for joins: the one a TIME_WAIT socket
			// would hand a new SYN to.
			perPort := e.transparentListener(t, tc.network, convertPort)
			dst := netip.AddrPortFrom(tc.server, convertPort)
			src := netip.AddrPortFrom(tc.peer, uint16(41000+i))
			msg := convertMessage(dst, "bye")

			c := dialFrom(t, e.lab.Client, src, dst, msg)
			conv := acceptWithin(t, ln, dialDeadline)
			if conv == nil {
				t.Fatalf("converter accepted nothing; counters %v", e.counters(t))
			}
			readN(t, conv, len(msg))
			// The converter half-closes first, then the client closes:
			// the converter's side ends in TIME_WAIT. Half-closing, as
			// the engine's relay does, keeps the converter's socket a
			// full one in FIN_WAIT2 until the client's FIN arrives;
			// closed at once, it would become an orphan whose FIN_WAIT2
			// the kernel keeps as a time-wait socket, which the program
			// cannot tell from TIME_WAIT (the client's FIN would then
			// not be delivered and the test would wait in vain).
			conv.CloseWrite()
			c.SetReadDeadline(time.Now().Add(dialDeadline))
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("client reading to EOF: %v", err)
			}
			c.Close()
			waitTimeWait(t, e.lab.Converter, src, dst)
			conv.Close()
			// The client's own socket must be gone (its FIN, not
			// marked, is reset by the server) before its port can
			// connect to the same destination again.
			waitSockets(t, e.lab.Client, "", func(local, _ string) bool { return sameAddrPort(local, src) }, false)

			before := e.counters(t)
			pc := dialFrom(t, e.lab.Client, src, dst, nil)
			if _, err := pc.Write([]byte("plain")); err != nil {
				t.Fatal(err)
			}
			s := acceptWithin(t, server, dialDeadline)
			if s == nil {
				t.Fatalf("the server did not get the plain connection from %s; counters %v", src, delta(e.counters(t), before))
			}
			if got := s.RemoteAddr().(*net.TCPAddr).AddrPort(); got.Addr().Unmap() != src.Addr() || got.Port() != src.Port() {
				t.Errorf("server sees %s, want %s", got, src)
			}
			if got := readN(t, s, 5); string(got) != "plain" {
				t.Errorf("server read %q", got)
			}
			if c := acceptWithin(t, perPort, 10*time.Millisecond); c != nil {
				t.Errorf("the converter's :%d listener took the plain connection from %s", convertPort, c.RemoteAddr())
			}
			d := delta(e.counters(t), before)
			t.Logf("counters for a plain connection over a TIME_WAIT tuple: %v", d)
			if d["time_wait"] == 0 || d["est_marked"]+d["steered"] != 0 {
				t.Errorf("counters %v: want time_wait > 0, nothing marked or steered", d)
			}
		})
	}
}

// dialFrom connects from src in netns ns (SO_REUSEADDR, so that the port
// can be used again at once), sending payload in the SYN (TFO without a
// cookie) when there is one.
func dialFrom(t *testing.T, ns string, src, dst netip.AddrPort, payload []byte) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(src), Timeout: dialDeadline, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		ctlErr := rc.Control(func(fd uintptr) {
			opts := [][2]int{{unix.SOL_SOCKET, unix.SO_REUSEADDR}}
			if payload != nil {
				opts = append(opts, [2]int{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT}, [2]int{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE})
			}
			for _, o := range opts {
				if err == nil {
					err = unix.SetsockoptInt(int(fd), o[0], o[1], 1)
				}
			}
		})
		if ctlErr != nil {
			return ctlErr
		}
		return err
	}}
	d.SetMultipathTCP(false)
	var c net.Conn
	err := lab.RunIn(ns, func() (err error) {
		if c, err = d.Dial("tcp", dst.String()); err != nil {
			return err
		}
		if payload != nil {
			_, err = c.Write(payload)
		}
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", dst, src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// waitTimeWait waits until netns ns holds a TIME_WAIT socket of the
// connection between local and remote (ss lists time-wait sockets).
func waitTimeWait(t *testing.T, ns string, remote, local netip.AddrPort) {
	t.Helper()
	waitSockets(t, ns, "time-wait", func(l, r string) bool { return sameAddrPort(l, local) && sameAddrPort(r, remote) }, true)
}

// waitSockets waits until netns ns has (want) or has no (!want) TCP socket
// in state (all states when empty) whose local and remote addresses, as ss
// prints them, match.
func waitSockets(t *testing.T, ns, state string, match func(local, remote string) bool, want bool) {
	t.Helper()
	args := []string{"netns", "exec", ns, "ss", "-Htan"}
	if state != "" {
		args = append(args, "state", state)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
	defer cancel()
	for {
		out := run(t, "ip", args...)
		found := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			// With a state filter ss leaves the state column out.
			if n := len(f); n >= 4 && match(f[n-2], f[n-1]) {
				found = true
			}
		}
		if found == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("in %s, a matching socket (state %q) present: %v, want %v:\n%s", ns, state, found, want, out)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func sameAddrPort(s string, ap netip.AddrPort) bool {
	got, err := netip.ParseAddrPort(strings.NewReplacer("[::ffff:", "", "]", "").Replace(s))
	if err != nil {
		got, err = netip.ParseAddrPort(s)
	}
	return err == nil && got.Addr().Unmap() == ap.Addr() && got.Port() == ap.Port()
}
