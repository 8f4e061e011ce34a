package bpf

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/tlv"
)

// tcActShot is TC_ACT_SHOT: the program dropped the frame.
const tcActShot = 2

// mpCapableSYN is an MP_CAPABLE option of a SYN, version 1 (RFC 8684).
var mpCapableSYN = []byte{30, 4, 0x01, 0x81}

// skbMark is the head of struct __sk_buff up to mark, for a test run's
// context: len and pkt_type must be zero.
type skbMark struct{ Len, PktType, Mark uint32 }

func loadHold(t *testing.T, delay bool, ports ...uint16) *SynHold {
	t.Helper()
	labtest.Require(t)
	if err := Supported(); err != nil {
		t.Fatalf("Supported: %v", err)
	}
	load := LoadSynHold
	if delay {
		load = LoadDelay
	}
	h, err := load(ports)
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func runProg(t *testing.T, p *ebpf.Program, frame []byte, mark uint32) uint32 {
	t.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
	if mark != 0 {
		opts.Context = skbMark{Mark: mark}
	}
	ret, err := p.Run(opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret
}

// reverse is f's frames sent the other way: the converter's answers.
func reverse(f framer, dport uint16) framer {
	return framer{srcMAC: f.dstMAC, dstMAC: f.srcMAC, src: f.dst, dst: f.src, dport: dport}
}

// withSeqAck writes the sequence and acknowledgment numbers of a built
// frame (the programs read them; checksums do not matter to them).
func withSeqAck(b []byte, tcpOff int, seq, ack uint32) []byte {
	binary.BigEndian.PutUint32(b[tcpOff+4:], seq)
	binary.BigEndian.PutUint32(b[tcpOff+8:], ack)
	return b
}

func tcpOffset(b []byte) int {
	if binary.BigEndian.Uint16(b[12:]) == 0x0800 {
		return 14 + int(b[14]&0x0f)*4
	}
	return 14 + 40
}

func readHeld(t *testing.T, r *ringbuf.Reader) (HeldFrame, bool) {
	t.Helper()
	r.SetDeadline(time.Now().Add(200 * time.Millisecond))
	rec, err := r.Read()
	if err != nil {
		return HeldFrame{}, false
	}
	ev, err := ParseHeldFrame(rec.RawSample)
	if err != nil {
		t.Fatalf("ParseHeldFrame: %v", err)
	}
	return ev, true
}

func counterDelta(t *testing.T, h *SynHold, before map[string]uint64) map[string]uint64 {
	t.Helper()
	after, err := h.Counters()
	if err != nil {
		t.Fatal(err)
	}
	d := map[string]uint64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// TestSynHoldPrograms runs hand-built frames through hold_syn and
// hold_synack: an MPTCP Convert SYN with data is noted, the SYN+ACK that
// acknowledges its data is dropped and copied whole to the ring buffer,
// and everything else passes untouched and unnoted.
func TestSynHoldPrograms(t *testing.T) {
	h := loadHold(t, false, 5124)
	r, err := h.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	msg, err := tlv.EndMessage(tlv.AppendConnect(tlv.BeginMessage(nil), tlv.Connect{Port: 80, Addr: netip.MustParseAddr("192.0.2.1")}), 0)
	if err != nil {
		t.Fatal(err)
	}
	early := append(append([]byte{}, msg...), "hello"...)
	v4 := framer{srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		src: netip.MustParseAddr("10.201.1.2"), dst: netip.MustParseAddr("10.201.1.1"), dport: 5124}
	v6 := v4
	v6.src, v6.dst = netip.MustParseAddr("fd01:1::2"), netip.MustParseAddr("fd01:1::1")

	for _, f := range []framer{v4, v6} {
		t.Run(f.src.String(), func(t *testing.T) {
			const isn, sport = 1000, 40000
			before, _ := h.Counters()
			syn := f.build(seg{sport: sport, flags: flagSYN, opts: mpCapableSYN, payload: early})
			syn = withSeqAck(syn, tcpOffset(syn), isn, 0)
			if ret := runProg(t, h.objs.HoldSyn, syn, 0); ret != tcxNext {
				t.Fatalf("hold_syn returned %d, want TCX_NEXT", int32(ret))
			}
			client, local := netip.AddrPortFrom(f.src, sport), netip.AddrPortFrom(f.dst, 5124)
			fl, ok := h.Lookup(client, local)
			if !ok || fl.ISN != isn || fl.DataLen != uint32(len(early)) || fl.Held {
				t.Fatalf("noted flow %+v %v, want isn %d, %d bytes, not held", fl, ok, isn, len(early))
			}
			back := reverse(f, sport)
			synack := back.build(seg{sport: 5124, flags: flagSYN | flagACK, opts: mpCapableSYN})
			synack = withSeqAck(synack, tcpOffset(synack), 7777, isn+1+uint32(len(early)))
			// A marked copy (the user space's re-send) passes.
			if ret := runProg(t, h.objs.HoldSynack, synack, ReleaseMark); ret != tcxNext {
				t.Errorf("marked SYN+ACK: returned %d, want TCX_NEXT", int32(ret))
			}
			if ret := runProg(t, h.objs.HoldSynack, synack, 0); ret != tcActShot {
				t.Fatalf("hold_synack returned %d, want TC_ACT_SHOT", int32(ret))
			}
			ev, ok := readHeld(t, r)
			if !ok {
				t.Fatal("no held frame in the ring buffer")
			}
			if !bytes.Equal(ev.Frame, synack) || ev.SynNanos == 0 {
				t.Errorf("held frame %x (syn %d), want %x", ev.Frame, ev.SynNanos, synack)
			}
			if fl, _ := h.Lookup(client, local); !fl.Held {
				t.Errorf("flow not marked held: %+v", fl)
			}
			if err := h.Forget(client, local); err != nil {
				t.Fatal(err)
			}
			// Forgotten: the next SYN+ACK passes.
			if ret := runProg(t, h.objs.HoldSynack, synack, 0); ret != tcxNext {
				t.Errorf("after Forget: returned %d, want TCX_NEXT", int32(ret))
			}
			if d := counterDelta(t, h, before); d["syns_noted"] != 1 || d["synacks_held"] != 1 || len(d) != 2 {
				t.Errorf("counters moved %v, want syns_noted and synacks_held by 1", d)
			}
		})
	}

	t.Run("SYN+ACK without the data acknowledged", func(t *testing.T) {
		before, _ := h.Counters()
		syn := v4.build(seg{sport: 40100, flags: flagSYN, opts: mpCapableSYN, payload: early})
		syn = withSeqAck(syn, tcpOffset(syn), 5000, 0)
		runProg(t, h.objs.HoldSyn, syn, 0)
		synack := reverse(v4, 40100).build(seg{sport: 5124, flags: flagSYN | flagACK})
		synack = withSeqAck(synack, tcpOffset(synack), 1, 5001) // Fast Open refused: only the SYN acked
		if ret := runProg(t, h.objs.HoldSynack, synack, 0); ret != tcxNext {
			t.Errorf("returned %d, want TCX_NEXT", int32(ret))
		}
		if _, ok := h.Lookup(netip.AddrPortFrom(v4.src, 40100), netip.AddrPortFrom(v4.dst, 5124)); ok {
			t.Error("flow kept after its SYN+ACK went out")
		}
		if d := counterDelta(t, h, before); d["synacks_unacked"] != 1 {
			t.Errorf("counters moved %v, want synacks_unacked by 1", d)
		}
	})

	notNoted := []struct {
		name    string
		s       seg
		dport   uint16
		counter string
	}{
		{"plain TCP Convert SYN", seg{sport: 40200, flags: flagSYN, payload: early}, 5124, "syns_plain_tcp"},
		{"SYN without data", seg{sport: 40201, flags: flagSYN, opts: mpCapableSYN}, 5124, ""},
		{"MP_JOIN SYN", seg{sport: 40202, flags: flagSYN, opts: mpJoin(0x01020304)}, 5124, ""},
		{"SYN with other data", seg{sport: 40203, flags: flagSYN, opts: mpCapableSYN, payload: []byte("GET / HTTP/1.1\r\n")}, 5124, ""},
		{"another port", seg{sport: 40204, flags: flagSYN, opts: mpCapableSYN, payload: early}, 443, ""},
		{"ACK with a Convert message", seg{sport: 40205, flags: flagACK, opts: mpCapableSYN, payload: early}, 5124, ""},
	}
	for _, tc := range notNoted {
		t.Run(tc.name, func(t *testing.T) {
			f := v4
			f.dport = tc.dport
			before, _ := h.Counters()
			if ret := runProg(t, h.objs.HoldSyn, f.build(tc.s), 0); ret != tcxNext {
				t.Errorf("returned %d, want TCX_NEXT", int32(ret))
			}
			if _, ok := h.Lookup(netip.AddrPortFrom(f.src, tc.s.sport), netip.AddrPortFrom(f.dst, tc.dport)); ok {
				t.Error("noted")
			}
			d := counterDelta(t, h, before)
			if tc.counter != "" && d[tc.counter] != 1 || len(d) > 1 || tc.counter == "" && len(d) > 0 {
				t.Errorf("counters moved %v, want only %q", d, tc.counter)
			}
		})
	}
}

// TestSynHoldAnyPort: port 0 (transparent mode) notes Convert SYNs to
// every port.
func TestSynHoldAnyPort(t *testing.T) {
	h := loadHold(t, false, 0)
	msg, err := tlv.EndMessage(tlv.AppendConnect(tlv.BeginMessage(nil), tlv.Connect{Port: 443, Addr: netip.MustParseAddr("192.0.2.1")}), 0)
	if err != nil {
		t.Fatal(err)
	}
	f := framer{srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, dstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		src: netip.MustParseAddr("10.201.1.2"), dst: netip.MustParseAddr("192.0.2.1"), dport: 443}
	runProg(t, h.objs.HoldSyn, f.build(seg{sport: 40300, flags: flagSYN, opts: mpCapableSYN, payload: msg}), 0)
	if _, ok := h.Lookup(netip.AddrPortFrom(f.src, 40300), netip.AddrPortFrom(f.dst, 443)); !ok {
		t.Error("not noted")
	}
}

// TestDelayProgram: delay_reply holds the SYN+ACKs and RSTs from its
// ports, lets a marked copy and everything else pass.
func TestDelayProgram(t *testing.T) {
	h := loadHold(t, true, 7000)
	r, err := h.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	srv := framer{srcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 3}, dstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 4},
		src: netip.MustParseAddr("10.201.3.2"), dst: netip.MustParseAddr("10.201.3.1"), dport: 50000}
	cases := []struct {
		name string
		s    seg
		mark uint32
		held bool
	}{
		{"SYN+ACK", seg{sport: 7000, flags: flagSYN | flagACK}, 0, true},
		{"RST", seg{sport: 7000, flags: flagRST | flagACK}, 0, true},
		{"marked SYN+ACK", seg{sport: 7000, flags: flagSYN | flagACK}, ReleaseMark, false},
		{"data", seg{sport: 7000, flags: flagACK, payload: []byte("x")}, 0, false},
		{"SYN+ACK from another port", seg{sport: 7001, flags: flagSYN | flagACK}, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			frame := srv.build(tc.s)
			ret := runProg(t, h.objs.DelayReply, frame, tc.mark)
			if want := map[bool]uint32{true: tcActShot, false: tcxNext}[tc.held]; ret != want {
				t.Fatalf("returned %d, want %d", int32(ret), int32(want))
			}
			if !tc.held {
				return
			}
			ev, ok := readHeld(t, r)
			if !ok || !bytes.Equal(ev.Frame, frame) {
				t.Errorf("held frame %x (%v), want %x", ev.Frame, ok, frame)
			}
		})
	}
}

func TestParseHeldFrame(t *testing.T) {
	rec := make([]byte, 16+320)
	binary.NativeEndian.PutUint64(rec[0:], 42)
	binary.NativeEndian.PutUint32(rec[8:], 3)
	binary.NativeEndian.PutUint32(rec[12:], 7)
	copy(rec[16:], "abc")
	ev, err := ParseHeldFrame(rec)
	if err != nil || ev.SynNanos != 42 || ev.Ifindex != 7 || string(ev.Frame) != "abc" {
		t.Errorf("ParseHeldFrame = %+v, %v", ev, err)
	}
	binary.NativeEndian.PutUint32(rec[8:], 321)
	if _, err := ParseHeldFrame(rec); err == nil {
		t.Error("a length beyond the frame was accepted")
	}
	if _, err := ParseHeldFrame(rec[:10]); err == nil {
		t.Error("a short record was accepted")
	}
}
