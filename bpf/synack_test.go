package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
)

// TestSynAckCapture dials a server from the converter namespace and checks
// that the options of the server's SYN+ACK are in the map, that they are
// the ones on the wire (tcpdump), and that Delete removes them. The
// steering program is on the same interface first, as with address
// preservation: the capture must see the SYN+ACKs all the same.
func TestSynAckCapture(t *testing.T) {
	l := upLab(t)
	s, err := LoadSteering(SteeringConfig{Mark: testMark, Port: testPort})
	if err != nil {
		t.Fatalf("LoadSteering: %+v", err)
	}
	defer s.Close()
	attachIn(t, l.Converter, s.Attach, lab.IfConvServer)
	c, err := LoadSynAckCapture()
	if err != nil {
		t.Fatalf("LoadSynAckCapture: %+v", err)
	}
	defer c.Close()
	attachIn(t, l.Converter, c.Attach, lab.IfConvServer)

	const port = 7001
	ln := listen(t, l.Server, "tcp", fmt.Sprintf(":%d", port), false)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()

	for _, tc := range []struct {
		name string
		addr netip.Addr
		mss  uint16
	}{
		{"ipv4", l.Addr.ServerV4, 1460},
		{"ipv6", l.Addr.ServerV6, 1440},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := netip.AddrPortFrom(tc.addr, port)
			pc := startCapture(t, l, l.Converter, lab.IfConvServer, fmt.Sprintf("tcp and src port %d", port))
			var local netip.AddrPort
			err := lab.RunIn(l.Converter, func() error {
				conn, err := net.Dial("tcp", server.String())
				if err != nil {
					return err
				}
				defer conn.Close()
				local = conn.LocalAddr().(*net.TCPAddr).AddrPort()
				return nil
			})
			if err != nil {
				t.Fatalf("dial %s from the converter: %v", server, err)
			}

			opts, ok := c.Lookup(local, server)
			if !ok {
				t.Fatalf("Lookup(%s, %s): nothing captured", local, server)
			}
			t.Logf("SYN+ACK options from %s to %s: % x", server, local, opts)
			checkSynAckOptions(t, opts, tc.mss)

			if pc != nil {
				wire := synAckOnWire(t, pc, tc.addr, local.Port())
				if !bytes.Equal(opts, wire) {
					t.Errorf("captured by BPF % x\non the wire     % x", opts, wire)
				}
			}

			if err := c.Delete(local, server); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, ok := c.Lookup(local, server); ok {
				t.Errorf("Lookup after Delete still finds an entry")
			}
			if err := c.Delete(local, server); err != nil {
				t.Errorf("second Delete: %v", err)
			}
		})
	}

	counters, err := c.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("synack counters: %v", counters)
	// The server's SYN+ACKs answer the two connects; nothing else
	// crosses sv but their ACKs and FINs.
	if counters["captured"] != 2 || counters["update_failed"] != 0 || counters["skipped"] != 0 {
		t.Errorf("counters = %v, want captured 2, update_failed 0, skipped 0", counters)
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Links) != 1 || st.Links[0].Interface != lab.IfConvServer || st.Links[0].LinkID == 0 || st.Links[0].ProgramID != st.ProgramID {
		t.Errorf("status = %+v, want one link on %s running program %d", st, lab.IfConvServer, st.ProgramID)
	}
}

// checkSynAckOptions parses opts and wants Linux's SYN+ACK set: MSS,
// SACK permitted, timestamps and window scale.
func checkSynAckOptions(t *testing.T, opts []byte, mss uint16) {
	t.Helper()
	seen := map[byte][]byte{}
	for i := 0; i < len(opts); {
		kind := opts[i]
		if kind == 0 {
			break
		}
		if kind == 1 {
			i++
			continue
		}
		if i+1 >= len(opts) || int(opts[i+1]) < 2 || i+int(opts[i+1]) > len(opts) {
			t.Fatalf("malformed options at byte %d: % x", i, opts)
		}
		seen[kind] = opts[i+2 : i+int(opts[i+1])]
		i += int(opts[i+1])
	}
	if v := seen[2]; len(v) != 2 || binary.BigEndian.Uint16(v) != mss {
		t.Errorf("MSS option = % x, want %d", v, mss)
	}
	if v, ok := seen[4]; !ok || len(v) != 0 {
		t.Errorf("SACK permitted option missing: % x", opts)
	}
	if v := seen[8]; len(v) != 8 {
		t.Errorf("timestamp option = % x, want 8 bytes", v)
	}
	if v := seen[3]; len(v) != 1 {
		t.Errorf("window scale option = % x, want 1 byte", v)
	}
}

// synAckOnWire returns the option bytes of the SYN+ACK from server to
// localPort in the capture.
func synAckOnWire(t *testing.T, c *labtest.Capture, server netip.Addr, localPort uint16) []byte {
	t.Helper()
	for _, p := range c.Segments(t) {
		if p.TCP.SYN && p.TCP.ACK && p.Src == server && uint16(p.TCP.DstPort) == localPort {
			return p.TCP.Contents[20:]
		}
	}
	t.Fatalf("no SYN+ACK from %s to port %d in the capture", server, localPort)
	return nil
}

// TestSynAckOwnConnectsOnly runs hand-built SYN+ACKs through the program
// (BPF_PROG_TEST_RUN, in the converter's namespace, where the socket
// lookups happen). Two sockets there connect to the same server port from
// the same local port on two local addresses; their SYNs are lost, so they
// stay in SYN_SENT. Each one's SYN+ACK must be kept under
// its own 4-tuple, whatever the order; a SYN+ACK for no socket, or for an
// established connection (a retransmission), must only be counted as
// skipped. IPv6 includes one behind a destination options header.
func TestSynAckOwnConnectsOnly(t *testing.T) {
	l := upLab(t)
	c, err := LoadSynAckCapture()
	if err != nil {
		t.Fatalf("LoadSynAckCapture: %+v", err)
	}
	defer c.Close()
	// Local addresses on lo; the "server" is an unused address on the
	// server link with a permanent neighbour entry, so that the SYNs leave
	// with a MAC address nobody has and are lost.
	for _, a := range []string{"192.0.2.1/32", "192.0.2.3/32"} {
		run(t, "ip", "-n", l.Converter, "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{"2001:db8::1/128", "2001:db8::3/128"} {
		run(t, "ip", "-n", l.Converter, "addr", "add", a, "dev", "lo", "nodad")
	}
	server4, server6 := netip.MustParseAddr("10.201.3.99"), netip.MustParseAddr("fd01:3::99")
	for _, a := range []netip.Addr{server4, server6} {
		run(t, "ip", "-n", l.Converter, "neigh", "replace", a.String(), "lladdr", "02:00:00:00:00:99", "nud", "permanent", "dev", lab.IfConvServer)
	}

	const localPort, serverPort = 40123, 80
	mss := func(v uint16) []byte { return []byte{2, 4, byte(v >> 8), byte(v)} }
	for _, tc := range []struct {
		name                       string
		server, localA, localB, no netip.Addr
		loopback                   netip.Addr
		exts                       []ext
	}{
		{"ipv4", server4, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4"), netip.MustParseAddr("127.0.0.1"), nil},
		{"ipv6", server6, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("2001:db8::4"), netip.MustParseAddr("::1"), nil},
		{"ipv6 destination options", server6, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("2001:db8::4"), netip.MustParseAddr("::1"), []ext{destOpts}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := netip.AddrPortFrom(tc.server, serverPort)
			a := netip.AddrPortFrom(tc.localA, localPort)
			b := netip.AddrPortFrom(tc.localB, localPort)
			connectPending(t, l.Converter, a, server)
			connectPending(t, l.Converter, b, server)
			est := establishedPair(t, l.Converter, tc.loopback)

			synAck := func(from, to netip.AddrPort, opts []byte) []byte {
				f := framer{srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
					src: from.Addr(), dst: to.Addr(), dport: to.Port()}
				frame := f.build(seg{sport: from.Port(), flags: flagSYN | flagACK, opts: opts})
				if len(tc.exts) > 0 {
					frame = withExt(frame, tc.exts...)
				}
				return frame
			}
			optsA, optsB := append(mss(1000), 1, 1, 4, 2), append(mss(2000), 1, 3, 3, 7)
			before, _ := c.Counters()
			for _, frame := range [][]byte{
				synAck(server, b, optsB),
				synAck(server, a, optsA),
				synAck(server, netip.AddrPortFrom(tc.no, localPort), mss(3000)),
				synAck(est[1], est[0], mss(4000)),
			} {
				err := lab.RunIn(l.Converter, func() error {
					_, err := c.objs.Synack.Run(&ebpf.RunOptions{Data: frame})
					return err
				})
				if err != nil {
					t.Fatalf("run: %v", err)
				}
			}
			for _, want := range []struct {
				local netip.AddrPort
				opts  []byte
			}{{a, optsA}, {b, optsB}} {
				got, ok := c.Lookup(want.local, server)
				if !ok || !bytes.Equal(got, want.opts) {
					t.Errorf("Lookup(%s, %s) = % x, %v; want % x", want.local, server, got, ok, want.opts)
				}
				if err := c.Delete(want.local, server); err != nil {
					t.Error(err)
				}
			}
			for _, k := range [][2]netip.AddrPort{{netip.AddrPortFrom(tc.no, localPort), server}, {est[0], est[1]}} {
				if got, ok := c.Lookup(k[0], k[1]); ok {
					t.Errorf("Lookup(%s, %s) = % x: stored a SYN+ACK no SYN_SENT socket waited for", k[0], k[1], got)
				}
			}
			after, _ := c.Counters()
			d := delta(after, before)
			if d["captured"] != 2 || d["skipped"] != 2 || d["update_failed"] != 0 {
				t.Errorf("counters moved by %v, want captured 2, skipped 2", d)
			}
		})
	}
	if st, err := c.Status(); err != nil || st.Maps[0].Entries != 0 {
		t.Errorf("status %+v, %v: want an empty map after the deletes", st.Maps, err)
	}
}

// connectPending starts a non-blocking connect from local to remote in
// netns ns and leaves the socket in SYN_SENT (the route must lose the SYN);
// it is closed when the test ends.
func connectPending(t *testing.T, ns string, local, remote netip.AddrPort) {
	t.Helper()
	fam, sa := unix.AF_INET, func(ap netip.AddrPort) unix.Sockaddr {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	if local.Addr().Is6() {
		fam, sa = unix.AF_INET6, func(ap netip.AddrPort) unix.Sockaddr {
			return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		}
	}
	fd := -1
	err := lab.RunIn(ns, func() error {
		var err error
		if fd, err = unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, sa(local)); err != nil {
			return fmt.Errorf("bind %s: %w", local, err)
		}
		if err := unix.Connect(fd, sa(remote)); err != unix.EINPROGRESS {
			return fmt.Errorf("connect %s: %v, want EINPROGRESS", remote, err)
		}
		return nil
	})
	if fd >= 0 {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		t.Fatal(err)
	}
}

// establishedPair connects to a listener on addr in netns ns and returns
// the client side's local and remote address of the established
// connection, which stays open until the test ends.
func establishedPair(t *testing.T, ns string, addr netip.Addr) [2]netip.AddrPort {
	t.Helper()
	ln := listen(t, ns, "tcp", netip.AddrPortFrom(addr, 0).String(), false)
	var conn net.Conn
	err := lab.RunIn(ns, func() (err error) {
		conn, err = net.Dial("tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if s := acceptWithin(t, ln, dialDeadline); s == nil {
		t.Fatal("no connection accepted on the loopback")
	}
	return [2]netip.AddrPort{conn.LocalAddr().(*net.TCPAddr).AddrPort(), conn.RemoteAddr().(*net.TCPAddr).AddrPort()}
}
