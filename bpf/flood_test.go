package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
)

// malformedMessages are Convert-looking SYN payloads the program must not
// steer, keyed by what is wrong with them.
func malformedMessages(dst netip.AddrPort) map[string][]byte {
	valid := convertMessage(dst, "x") // 24-byte message + 1 data byte
	with := func(i int, b byte) []byte {
		m := bytes.Clone(valid)
		m[i] = b
		return m
	}
	return map[string][]byte{
		"bad magic":               with(3, 0x64),
		"zero magic":              append([]byte{1, 6, 0, 0}, valid[4:]...),
		"version 2":               with(0, 2),
		"huge total length":       with(1, 255),
		"total length 1":          with(1, 1),
		"total length 0":          with(1, 0),
		"truncated message":       valid[:12],
		"5-byte payload":          valid[:5],
		"unknown first TLV":       with(4, 0x0b),
		"TLV length 0":            with(5, 0),
		"TLV longer than message": with(5, 6),
	}
}

// TestMalformedConvertSYNs floods the converter with SYNs carrying broken
// Convert messages from real client sockets: none may be steered, all must
// reach the real server with their bytes intact.
func TestMalformedConvertSYNs(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr
	const perVariant = 10

	for _, tc := range []struct {
		name, network string
		server, peer  netip.Addr
	}{
		{"ipv4", "tcp4", ad.ServerV4, ad.ClientPath1V4},
		{"ipv6", "tcp6", ad.ServerV6, ad.ClientPath1V6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conv := e.transparentListener(t, tc.network, testPort)
			srv := listen(t, e.lab.Server, tc.network, net.JoinHostPort(tc.server.String(), strconv.Itoa(convertPort)), false)
			dst := netip.AddrPortFrom(tc.server, convertPort)
			msgs := malformedMessages(dst)
			want := map[string]int{}
			for _, m := range msgs {
				want[string(m)] += perVariant
			}

			// The server reads each connection to EOF.
			var mu sync.Mutex
			got := map[string]int{}
			var wg sync.WaitGroup
			go func() {
				for {
					c, err := srv.AcceptTCP()
					if err != nil {
						return
					}
					if from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); from != tc.peer {
						t.Errorf("server sees %s, want the client %s", from, tc.peer)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer c.Close()
						c.SetReadDeadline(time.Now().Add(5 * time.Second))
						b, _ := io.ReadAll(c)
						mu.Lock()
						got[string(b)]++
						mu.Unlock()
					}()
				}
			}()

			before := e.counters(t)
			var dials sync.WaitGroup
			for name, m := range msgs {
				for range perVariant {
					dials.Add(1)
					go func() {
						defer dials.Done()
						err := lab.RunIn(e.lab.Client, func() error {
							ctx, cancel := context.WithTimeout(context.Background(), dialDeadline)
							defer cancel()
							c, err := client.DialRaw(ctx, dst, true, m)
							if err != nil {
								return err
							}
							defer c.Close()
							// shutdown in SYN_SENT would abort the connection.
							if err := sockinfo.WaitEstablished(ctx, c); err != nil {
								return err
							}
							return c.CloseWrite() // the server's read ends
						})
						if err != nil {
							t.Errorf("%s: %v", name, err)
						}
					}()
				}
			}
			dials.Wait()
			deadline := time.Now().Add(5 * time.Second)
			for {
				mu.Lock()
				n := 0
				for _, v := range got {
					n += v
				}
				mu.Unlock()
				if n >= len(msgs)*perVariant || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			wg.Wait()

			d := delta(e.counters(t), before)
			t.Logf("counters after %d malformed Convert SYNs: %v", len(msgs)*perVariant, d)
			if d["steered"]+d["lookup_failed"]+d["assign_failed"] != 0 || d["passed"] < uint64(len(msgs)*perVariant) {
				t.Errorf("counters %v: want nothing steered, passed >= %d", d, len(msgs)*perVariant)
			}
			for name, m := range msgs {
				if got[string(m)] != want[string(m)] {
					t.Errorf("%s: server got the message %d times, want %d", name, got[string(m)], want[string(m)])
				}
			}
			for b, n := range got {
				if want[b] == 0 {
					t.Errorf("server got % x %d times: not a message sent", b, n)
				}
			}
			if c := acceptWithin(t, conv, 50*time.Millisecond); c != nil {
				t.Errorf("converter accepted a malformed SYN from %s", c.RemoteAddr())
			}
		})
	}
}

// TestMalformedFrames injects hand-built frames on the client's path-1
// link: broken IP and TCP headers, lying lengths, option walks that end
// badly, MP_JOINs that must not match. Only the valid controls may be
// steered; every frame must be counted, none may fail a lookup.
func TestMalformedFrames(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr
	e.transparentListener(t, "tcp4", testPort)
	e.transparentListener(t, "tcp6", testPort)
	const token = 0x0a0b0c0d
	if err := e.s.AddToken(token); err != nil {
		t.Fatal(err)
	}

	srcMAC, dstMAC := macOf(t, e.lab.Client, lab.IfClientPath1), macOf(t, e.lab.Converter, lab.IfConvPath1)
	f4 := framer{srcMAC: srcMAC, dstMAC: dstMAC, src: ad.ClientPath1V4, dst: ad.ServerV4, dport: convertPort}
	f6 := framer{srcMAC: srcMAC, dstMAC: dstMAC, src: ad.ClientPath1V6, dst: ad.ServerV6, dport: convertPort}
	msg4 := convertMessage(netip.AddrPortFrom(ad.ServerV4, convertPort), "x")
	msg6 := convertMessage(netip.AddrPortFrom(ad.ServerV6, convertPort), "x")
	const tcp4, tcp6 = 14 + 20, 14 + 40 // TCP header offsets

	type variant struct {
		name   string
		frame  func(sport uint16) []byte
		steers bool
	}
	syn4 := func(payload []byte, opts ...byte) func(uint16) []byte {
		return func(sport uint16) []byte {
			return f4.build(seg{sport: sport, flags: flagSYN, opts: opts, payload: payload})
		}
	}
	edit := func(f func(uint16) []byte, fn func([]byte) []byte) func(uint16) []byte {
		return func(sport uint16) []byte { return fn(f(sport)) }
	}
	set := func(f func(uint16) []byte, off int, b byte) func(uint16) []byte {
		return edit(f, func(p []byte) []byte { p[off] = b; return p })
	}
	flags := func(fl byte, payload []byte, opts ...byte) func(uint16) []byte {
		return func(sport uint16) []byte {
			return f4.build(seg{sport: sport, flags: fl, opts: opts, payload: payload})
		}
	}
	join := mpJoin(token)
	variants := []variant{
		{"valid Convert SYN (control)", syn4(msg4), true},
		{"valid IPv6 Convert SYN (control)", func(sport uint16) []byte {
			return f6.build(seg{sport: sport, flags: flagSYN, payload: msg6})
		}, true},
		{"MP_JOIN with registered token (control)", syn4(nil, join...), true},
		{"SYN+ACK with Convert payload", flags(flagSYN|flagACK, msg4), false},
		{"SYN+RST with Convert payload", flags(flagSYN|flagRST, msg4), false},
		{"SYN+FIN with Convert payload", flags(flagSYN|flagFIN, msg4), false},
		{"frame cut inside the message", edit(syn4(msg4), func(p []byte) []byte { return p[:tcp4+20+3] }), false},
		{"frame cut after the TCP header", edit(syn4(msg4), func(p []byte) []byte { return p[:tcp4+20] }), false},
		{"data offset past IP length", set(syn4(msg4), tcp4+12, 0xf0), false},
		{"data offset 4", set(syn4(msg4), tcp4+12, 0x40), false},
		{"data offset 0", set(syn4(msg4), tcp4+12, 0x00), false},
		{"IPv4 header length 15", set(syn4(msg4), 14, 0x4f), false},
		{"IPv4 header length 4", set(syn4(msg4), 14, 0x44), false},
		{"IPv4 more fragments", set(syn4(msg4), 14+6, 0x20), false},
		{"IPv4 fragment offset", set(syn4(msg4), 14+7, 0x01), false},
		{"IPv4 total length below headers", edit(syn4(msg4), func(p []byte) []byte { binary.BigEndian.PutUint16(p[16:], 30); return p }), false},
		{"IPv4 total length 0xffff", edit(syn4(msg4), func(p []byte) []byte { binary.BigEndian.PutUint16(p[16:], 0xffff); return p }), false},
		{"IPv6 hop-by-hop next header without the header", func(sport uint16) []byte {
			p := f6.build(seg{sport: sport, flags: flagSYN, payload: msg6})
			p[14+6] = 0
			return p
		}, false},
		{"IPv6 Convert SYN behind destination options", func(sport uint16) []byte {
			return withExt(f6.build(seg{sport: sport, flags: flagSYN, payload: msg6}), destOpts)
		}, true},
		{"IPv6 Convert SYN behind hop-by-hop and destination options", func(sport uint16) []byte {
			return withExt(f6.build(seg{sport: sport, flags: flagSYN, payload: msg6}), hopByHop, destOpts)
		}, true},
		{"IPv6 Convert SYN behind a fragment header", func(sport uint16) []byte {
			return withExt(f6.build(seg{sport: sport, flags: flagSYN, payload: msg6}), fragHdr)
		}, false},
		{"IPv6 Convert SYN behind a routing header with a segment left", func(sport uint16) []byte {
			return withExt(f6.build(seg{sport: sport, flags: flagSYN, payload: msg6}), routing(1))
		}, false},
		{"IPv6 Convert SYN behind 5 extension headers", func(sport uint16) []byte {
			return withExt(f6.build(seg{sport: sport, flags: flagSYN, payload: msg6}), hopByHop, destOpts, destOpts, destOpts, destOpts)
		}, false},
		{"IPv6 payload length 0", func(sport uint16) []byte {
			p := f6.build(seg{sport: sport, flags: flagSYN, payload: msg6})
			p[14+4], p[14+5] = 0, 0
			return p
		}, false},
		{"IPv6 frame cut inside the message", func(sport uint16) []byte {
			return f6.build(seg{sport: sport, flags: flagSYN, payload: msg6})[:tcp6+20+5]
		}, false},
		{"not IP", set(syn4(msg4), 12, 0x88), false},
		{"Ethernet header only", edit(syn4(msg4), func(p []byte) []byte { return p[:14] }), false},
		{"IPv4 header cut", edit(syn4(msg4), func(p []byte) []byte { return p[:14+10] }), false},
		{"MP_JOIN with unknown token", syn4(nil, mpJoin(token+1)...), false},
		{"MP_JOIN with registered token in SYN+ACK", flags(flagSYN|flagACK, nil, join...), false},
		{"MP_JOIN length 4", syn4(nil, append([]byte{30, 4, 0x10, 0}, join[4:8]...)...), false},
		{"MP_CAPABLE subtype with registered token", syn4(nil, append([]byte{30, 12, 0x00, 0}, join[4:]...)...), false},
		{"MP_JOIN after EOL", syn4(nil, append([]byte{0}, join...)...), false},
		{"option length 0 before MP_JOIN", syn4(nil, append([]byte{8, 0}, join...)...), false},
		{"option length 1 before MP_JOIN", syn4(nil, append([]byte{8, 1}, join...)...), false},
		{"option length 255 before MP_JOIN", syn4(nil, append([]byte{8, 255}, join...)...), false},
		{"40 NOPs", syn4(msg4[:0], bytes.Repeat([]byte{1}, 40)...), false},
		{"MP_JOIN cut by the frame end", edit(syn4(nil, append(bytes.Repeat([]byte{1}, 28), join...)...), func(p []byte) []byte { return p[:len(p)-6] }), false},
	}

	sock := packetSocket(t, e.lab.Client, lab.IfClientPath1)
	const perVariant = 20
	sport := uint16(20000)
	for _, v := range variants {
		n := perVariant
		if v.steers {
			n = 1 // a second copy would hit the flow the first one created
		}
		before := e.counters(t)
		for range n {
			sport++
			sock.send(t, v.frame(sport))
		}
		d := waitCounted(t, e, before, n)
		wantSteered := map[bool]uint64{true: uint64(n)}[v.steers]
		if d["steered"] != wantSteered || d["lookup_failed"]+d["assign_failed"] != 0 {
			t.Errorf("%s x%d: counters %v, want steered %d and no failures", v.name, n, d, wantSteered)
		}
	}
	final := e.counters(t)
	t.Logf("counters after the frame flood: %v", final)
	if final["joins_steered"] != 1 {
		t.Errorf("joins_steered = %d, want 1 (the control)", final["joins_steered"])
	}
}

// waitCounted waits until the program has counted n more packets (each
// packet lands in exactly one of these counters) and returns the change.
func waitCounted(t *testing.T, e *steerEnv, before map[string]uint64, n int) map[string]uint64 {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		d := delta(e.counters(t), before)
		total := d["steered"] + d["passed"] + d["est_marked"] + d["lookup_failed"] + d["assign_failed"]
		if total >= uint64(n) || time.Now().After(deadline) {
			if total < uint64(n) {
				t.Errorf("only %d of %d frames counted: %v", total, n, d)
			}
			return d
		}
		time.Sleep(time.Millisecond)
	}
}

func macOf(t *testing.T, ns, ifname string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := lab.RunIn(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// rawSocket sends whole Ethernet frames out of one interface.
type rawSocket struct {
	fd int
	sa unix.SockaddrLinklayer
}

func packetSocket(t *testing.T, ns, ifname string) *rawSocket {
	t.Helper()
	s := &rawSocket{fd: -1}
	err := lab.RunIn(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		// Protocol 0: the socket sends only and receives nothing.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket(AF_PACKET): %w", err)
		}
		s.fd, s.sa = fd, unix.SockaddrLinklayer{Ifindex: ifi.Index}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	return s
}

func (s *rawSocket) send(t *testing.T, frame []byte) {
	t.Helper()
	if err := unix.Sendto(s.fd, frame, 0, &s.sa); err != nil {
		t.Fatalf("send %d-byte frame: %v", len(frame), err)
	}
}
