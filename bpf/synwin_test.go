package bpf

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/internal/tfowindow"
	"github.com/convert-tc/converter/tlv"
)

// tcxNext is TCX_NEXT as the program's return value reads in Go.
const tcxNext = ^uint32(0)

func loadClamp(t *testing.T) *SynWindowClamp {
	t.Helper()
	labtest.Require(t)
	if err := Supported(); err != nil {
		t.Fatalf("Supported: %v", err)
	}
	c, err := LoadSynWindowClamp()
	if err != nil {
		t.Fatalf("LoadSynWindowClamp: %+v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wscaleOpt(shift byte) []byte { return []byte{1, 3, 3, shift} } // NOP, window scale

// TestSynWindowRewrites runs hand-built frames through the program
// (BPF_PROG_TEST_RUN) and checks the window and the TCP checksum of what
// comes out: Convert SYNs with window scaling get window >> wscale (at
// least 1), everything else leaves byte for byte as it came.
func TestSynWindowRewrites(t *testing.T) {
	c := loadClamp(t)
	info, err := tlv.EndMessage(tlv.AppendInfo(tlv.BeginMessage(nil)), 0)
	if err != nil {
		t.Fatal(err)
	}
	// A message may start with its Cookie (RFC 8803 Appendix A, A9).
	cookieFirst, err := tlv.EndMessage(tlv.AppendConnect(tlv.AppendCookie(tlv.BeginMessage(nil), []byte{1, 2, 3, 4, 5, 6, 7, 8}),
		tlv.Connect{Port: 80, Addr: netip.MustParseAddr("192.0.2.1")}), 0)
	if err != nil {
		t.Fatal(err)
	}
	v4 := framer{srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		src: netip.MustParseAddr("10.201.1.2"), dst: netip.MustParseAddr("10.201.1.1"), dport: 5124}
	v6 := v4
	v6.src, v6.dst = netip.MustParseAddr("fd01:1::2"), netip.MustParseAddr("fd01:1::1")
	mss := []byte{2, 4, 0x05, 0xb4}
	cases := []struct {
		name    string
		f       framer
		s       seg
		window  uint16 // in the frame
		want    uint16 // after the program
		counter string
	}{
		{"v4 Convert SYN, wscale 7", v4, seg{sport: 40000, flags: flagSYN, opts: append(append([]byte{}, mss...), wscaleOpt(7)...), payload: info}, 64240, 501, "clamped"},
		{"v6 Convert SYN, wscale 10", v6, seg{sport: 40001, flags: flagSYN, opts: wscaleOpt(10), payload: info}, 64800, 63, "clamped"},
		{"wscale above 14 counts as 14", v4, seg{sport: 40002, flags: flagSYN, opts: wscaleOpt(15), payload: info}, 65535, 3, "clamped"},
		{"small window keeps 1", v4, seg{sport: 40003, flags: flagSYN, opts: wscaleOpt(14), payload: info}, 1000, 1, "clamped"},
		{"v4 Convert SYN starting with a Cookie", v4, seg{sport: 40010, flags: flagSYN, opts: wscaleOpt(7), payload: cookieFirst}, 64240, 501, "clamped"},
		{"no window scale", v4, seg{sport: 40004, flags: flagSYN, opts: mss, payload: info}, 64240, 64240, "unscaled"},
		{"wscale 0", v4, seg{sport: 40005, flags: flagSYN, opts: wscaleOpt(0), payload: info}, 64240, 64240, "unscaled"},
		{"SYN with other data", v4, seg{sport: 40006, flags: flagSYN, opts: wscaleOpt(7), payload: []byte("GET / HTTP/1.1\r\n")}, 64240, 64240, ""},
		{"SYN without data", v4, seg{sport: 40007, flags: flagSYN, opts: wscaleOpt(7)}, 64240, 64240, ""},
		{"SYN+ACK with a Convert message", v4, seg{sport: 40008, flags: flagSYN | flagACK, opts: wscaleOpt(7), payload: info}, 64240, 64240, ""},
		{"ACK with a Convert message", v4, seg{sport: 40009, flags: flagACK, payload: info}, 501, 501, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.f.build(tc.s)
			tcpOff := len(in) - 20 - (len(tc.s.opts)+3)/4*4 - len(tc.s.payload)
			setWindow(tc.f, in, tcpOff, tc.window)
			before, _ := c.Counters()
			out := make([]byte, len(in))
			ret, err := c.objs.Synwin.Run(&ebpf.RunOptions{Data: in, DataOut: out})
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if ret != tcxNext {
				t.Errorf("returned %d, want TCX_NEXT", int32(ret))
			}
			if got := binary.BigEndian.Uint16(out[tcpOff+14:]); got != tc.want {
				t.Errorf("window %d, want %d", got, tc.want)
			}
			if !tcpChecksumOK(tc.f, out, tcpOff) {
				t.Errorf("TCP checksum wrong after the program")
			}
			if tc.want == tc.window && string(out) != string(in) {
				t.Errorf("frame changed though the window did not")
			}
			after, _ := c.Counters()
			for name := range after {
				d := after[name] - before[name]
				if (name == tc.counter) != (d == 1) || d > 1 {
					t.Errorf("counter %s moved by %d (want it to move only for %q)", name, d, tc.counter)
				}
			}
		})
	}
}

// setWindow writes a window into a built frame and fixes its checksum.
func setWindow(f framer, b []byte, tcpOff int, w uint16) {
	binary.BigEndian.PutUint16(b[tcpOff+14:], w)
	binary.BigEndian.PutUint16(b[tcpOff+16:], 0)
	binary.BigEndian.PutUint16(b[tcpOff+16:], checksum(pseudoAndTCP(f, b, tcpOff)))
}

func pseudoAndTCP(f framer, b []byte, tcpOff int) []byte {
	tcp := b[tcpOff:]
	src, dst := f.src.AsSlice(), f.dst.AsSlice()
	pseudo := append(append(append([]byte{}, src...), dst...), 0, 6, byte(len(tcp)>>8), byte(len(tcp)))
	return append(pseudo, tcp...)
}

// tcpChecksumOK: the checksum over pseudo-header and segment, checksum
// field included, is zero for a valid segment.
func tcpChecksumOK(f framer, b []byte, tcpOff int) bool {
	return checksum(pseudoAndTCP(f, b, tcpOff)) == 0
}

// TestSynWindowRemovesTheFault runs the kernel fault's probe in a private
// namespace with and without the program on its loopback: with it, the
// MPTCP level of a socket accepted with SYN data must stop at the
// client's window, as it does without SYN data.
func TestSynWindowRemovesTheFault(t *testing.T) {
	c := loadClamp(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	without, err := tfowindow.Probe(ctx, nil)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	t.Logf("without the program: %v", without)
	with, err := tfowindow.Probe(ctx, func(lo int) (func(), error) {
		if err := c.Attach(lo); err != nil {
			return nil, err
		}
		return func() {
			if err := c.Detach(lo); err != nil {
				t.Errorf("detach from the probe's lo: %v", err)
			}
		}, nil
	})
	if err != nil {
		t.Fatalf("probe with the program: %v", err)
	}
	t.Logf("with the program: %v", with)
	if with.Faulty {
		t.Errorf("the fault persists with the program on lo: %v", with)
	}
	if n, _ := c.Counters(); n["clamped"] != 1 {
		t.Errorf("counters %v: want the probe's one Convert SYN clamped", n)
	}
	if st, _ := c.Status(); len(st.Links) != 0 {
		t.Errorf("links left after the probe: %+v", st.Links)
	}
	if !without.Faulty {
		t.Logf("this kernel does not have the fault; the program changed nothing that mattered")
	}
}
