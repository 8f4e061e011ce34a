package capture

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/convert-tc/converter/capture/capturetest"
)

// handshake is a Handshake with times after capturetest.Base; synackAt is
// ignored when synack is 0.
func handshake(c capturetest.Conn, syn int, synAt time.Duration, synack int, synackAt time.Duration) Handshake {
	h := Handshake{Client: c.Client, Server: c.Server, SYN: syn, SYNTime: capturetest.Base.Add(synAt)}
	if synack != 0 {
		h.SYNACK, h.SYNACKTime = synack, capturetest.Base.Add(synackAt)
	}
	return h
}

func readCapture(t *testing.T, c capturetest.Capture) ([]Stream, []Handshake) {
	t.Helper()
	var warn bytes.Buffer
	streams, hs, err := Read(bytes.NewReader(c.Encode(t)), convertOptions(&warn))
	if err != nil || warn.Len() != 0 {
		t.Fatalf("error %v, warnings %q", err, warn.String())
	}
	return streams, hs
}

// checkHandshakes compares the handshakes, and the one each stream names.
func checkHandshakes(t *testing.T, streams []Stream, hs, want []Handshake, streamHS []int) {
	t.Helper()
	if fmt.Sprint(hs) != fmt.Sprint(want) {
		t.Errorf("handshakes\n%v\nwant\n%v", hs, want)
	}
	if len(streams) != len(streamHS) {
		t.Fatalf("%d streams, want %d", len(streams), len(streamHS))
	}
	for i, s := range streams {
		if s.Handshake != streamHS[i] {
			t.Errorf("stream %d (packet %d): handshake %d, want %d", i, s.Packet, s.Handshake, streamHS[i])
		}
	}
}

func TestReadHandshakesSamples(t *testing.T) {
	samples := capturetest.Samples(t)
	tfo, malformed := samples[0], samples[2]
	streams, hs := readCapture(t, tfo)
	checkHandshakes(t, streams, hs, []Handshake{handshake(tfo.Conns[0], 1, 123456789, 2, 124000001)}, []int{0, 0})

	streams, hs = readCapture(t, malformed)
	s := 2 * time.Second
	checkHandshakes(t, streams, hs, []Handshake{
		handshake(malformed.Conns[0], 1, s, 3, s+1000),
		handshake(malformed.Conns[1], 2, s+10, 4, s+1010),
		handshake(malformed.Conns[2], 10, s+5000, 11, s+6000), // no data, no stream
	}, []int{0, 1, 0})
}

// Retransmissions keep the first SYN and SYN+ACK; a SYN with a new
// sequence number on the same addresses opens a new connection; a SYN+ACK
// whose SYN was not captured opens none.
func TestReadHandshakesRetransmitted(t *testing.T) {
	ap := netip.MustParseAddrPort
	c := capturetest.Capture{Name: "retransmitted", Link: capturetest.LinkSLL2,
		Conns: []capturetest.Conn{
			{Client: ap("[2001:db8::2]:40000"), Server: ap("[2001:db8::1]:5124")},
			{Client: ap("[2001:db8::3]:40000"), Server: ap("[2001:db8::1]:5124")},
		},
		Packets: []capturetest.Packet{
			{Conn: 0, From: capturetest.Client, At: 0, Flags: "S", Seq: 100},
			{Conn: 0, From: capturetest.Client, At: time.Second, Flags: "S", Seq: 100},
			{Conn: 0, From: capturetest.Server, At: time.Second + 1, Flags: "SA", Seq: 500, Ack: 101},
			{Conn: 0, From: capturetest.Server, At: time.Second + 2, Flags: "SA", Seq: 500, Ack: 101},
			{Conn: 1, From: capturetest.Server, At: time.Second + 3, Flags: "SA", Seq: 700, Ack: 301},
			{Conn: 0, From: capturetest.Client, At: 2 * time.Second, Flags: "S", Seq: 900, Payload: []byte("x")},
			{Conn: 0, From: capturetest.Server, At: 2*time.Second + 1, Flags: "SA", Seq: 1500, Ack: 902},
		},
	}
	streams, hs := readCapture(t, c)
	checkHandshakes(t, streams, hs, []Handshake{
		handshake(c.Conns[0], 1, 0, 3, time.Second+1),
		handshake(c.Conns[0], 6, 2*time.Second, 7, 2*time.Second+1),
	}, []int{1})
}
