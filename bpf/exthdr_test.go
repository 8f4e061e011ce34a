package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/tlv"
)

// extCases are IPv6 extension header chains in front of a Convert SYN and
// whether the programs parse through them to TCP (parse_tcp in parse.h):
// hop-by-hop (first only), routing with no segments left and destination
// options, 4 headers and 256 bytes at most; fragments, routing headers with
// segments left and anything longer are left alone.
var extCases = []struct {
	name   string
	exts   []ext
	parsed bool
	edit   func([]byte) []byte // applied to the frame after the headers are in
}{
	{name: "destination options", exts: []ext{destOpts}, parsed: true},
	{name: "hop-by-hop, destination options", exts: []ext{hopByHop, destOpts}, parsed: true},
	{name: "hop-by-hop, routing (0 left), destination options", exts: []ext{hopByHop, routing(0), destOpts}, parsed: true},
	{name: "4 headers", exts: []ext{hopByHop, destOpts, routing(0), destOpts}, parsed: true},
	{name: "256 bytes of headers", exts: []ext{destOptsLen(248), destOpts}, parsed: true},
	{name: "5 headers", exts: []ext{hopByHop, destOpts, destOpts, destOpts, destOpts}},
	{name: "264 bytes of headers", exts: []ext{destOptsLen(256), destOpts}},
	{name: "hop-by-hop not first", exts: []ext{destOpts, hopByHop}},
	{name: "fragment header", exts: []ext{fragHdr}},
	{name: "destination options, fragment header", exts: []ext{destOpts, fragHdr}},
	{name: "routing with a segment left", exts: []ext{routing(1)}},
	{name: "payload length below the headers", exts: []ext{destOpts, destOpts}, edit: func(p []byte) []byte {
		binary.BigEndian.PutUint16(p[14+4:], 12)
		return p
	}},
	{name: "frame cut inside a header", exts: []ext{destOpts, destOptsLen(64)}, edit: func(p []byte) []byte {
		return p[:14+40+8+20]
	}},
}

// TestSynWindowIPv6ExtensionHeaders runs IPv6 Convert SYNs behind
// extension headers through the clamp (BPF_PROG_TEST_RUN): the window of
// those parse_tcp walks through is lowered, the others leave unchanged.
func TestSynWindowIPv6ExtensionHeaders(t *testing.T) {
	c := loadClamp(t)
	info, err := tlv.EndMessage(tlv.AppendInfo(tlv.BeginMessage(nil)), 0)
	if err != nil {
		t.Fatal(err)
	}
	f := framer{srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		src: netip.MustParseAddr("fd01:1::2"), dst: netip.MustParseAddr("fd01:3::2"), dport: 80}
	s := seg{sport: 40000, flags: flagSYN, opts: wscaleOpt(10), payload: info}
	for _, tc := range extCases {
		t.Run(tc.name, func(t *testing.T) {
			plain := f.build(s)
			setWindow(f, plain, 14+40, 64800)
			in := withExt(plain, tc.exts...)
			tcpOff := len(in) - (len(plain) - 14 - 40)
			if tc.edit != nil {
				in = tc.edit(in)
			}
			before, _ := c.Counters()
			out := make([]byte, len(in))
			if _, err := c.objs.Synwin.Run(&ebpf.RunOptions{Data: in, DataOut: out}); err != nil {
				t.Fatalf("run: %v", err)
			}
			after, _ := c.Counters()
			clamped := after["clamped"] - before["clamped"]
			if !tc.parsed {
				if clamped != 0 || string(out) != string(in) {
					t.Errorf("clamped %d, frame changed %v; want the packet left alone", clamped, string(out) != string(in))
				}
				return
			}
			if clamped != 1 {
				t.Errorf("clamped counter moved by %d, want 1", clamped)
			}
			if got := binary.BigEndian.Uint16(out[tcpOff+14:]); got != 63 {
				t.Errorf("window %d, want 64800 >> 10 = 63", got)
			}
			if !tcpChecksumOK(f, out, tcpOff) {
				t.Errorf("TCP checksum wrong after the program")
			}
		})
	}
}

// TestSteeringIPv6DestinationOptions converts a connection whose client
// puts a destination options header (one PadN option) in every packet
// (IPV6_DSTOPTS): the Convert SYN must be steered and accepted by the
// kernel through the header, and the rest of the flow delivered locally.
// The MPTCP socket layer takes no IPv6 header options, so the client is
// plain TCP (the listener falls back).
func TestSteeringIPv6DestinationOptions(t *testing.T) {
	e := newSteerEnv(t)
	ad := e.lab.Addr
	ln := e.transparentListener(t, "tcp6", testPort)
	dst := netip.AddrPortFrom(ad.ServerV6, convertPort)
	msg := convertMessage(dst, "dstopts")
	// Only packets with a destination options header right after the
	// IPv6 header (next header 60).
	pc := startCapture(t, e.lab, e.lab.Converter, lab.IfConvPath1, "ip6 and ip6[6] == 60")
	before := e.counters(t)

	d := net.Dialer{Timeout: dialDeadline, Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		ctlErr := rc.Control(func(fd uintptr) {
			hdr := string([]byte{0, 0, 1, 4, 0, 0, 0, 0}) // next header (kernel's), length 0, PadN
			if err = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, hdr); err != nil {
				err = fmt.Errorf("setsockopt(IPV6_DSTOPTS): %w", err)
				return
			}
			for _, o := range []int{unix.TCP_FASTOPEN_CONNECT, unix.TCP_FASTOPEN_NO_COOKIE} {
				if err == nil {
					err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, o, 1)
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
	err := lab.RunIn(e.lab.Client, func() (err error) {
		if c, err = d.Dial("tcp6", dst.String()); err != nil {
			return err
		}
		_, err = c.Write(msg)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s with a destination options header: %v", dst, err)
	}
	defer c.Close()
	conv := acceptWithin(t, ln, dialDeadline)
	if conv == nil {
		t.Fatalf("converter accepted nothing; counters %v", delta(e.counters(t), before))
	}
	if got := readN(t, conv, len(msg)); !bytes.Equal(got, msg) {
		t.Errorf("converter read % x, want % x", got, msg)
	}
	if _, err := conv.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, c, 5); string(got) != "reply" {
		t.Errorf("client read %q, want %q", got, "reply")
	}
	n := delta(e.counters(t), before)
	t.Logf("counters: %v", n)
	if n["steered"] != 1 || n["est_marked"] == 0 || n["lookup_failed"]+n["assign_failed"] != 0 {
		t.Errorf("counters %v, want steered 1, est_marked > 0, no failures", n)
	}
	if pc != nil {
		syns := 0
		for _, s := range pc.Segments(t) {
			if s.TCP.SYN && !s.TCP.ACK && s.Src == ad.ClientPath1V6 {
				syns++
			}
		}
		if syns != 1 {
			t.Errorf("%d SYNs with a destination options header on %s, want 1", syns, lab.IfConvPath1)
		}
	}
}
