package capture

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/convert-tc/converter/capture/capturetest"
	"github.com/convert-tc/converter/dissect"
	"github.com/convert-tc/converter/tlv"
)

// messageDir is who sends the Convert message of a stream.
func messageDir(d Direction) dissect.Direction {
	if d == FromServer {
		return dissect.Reply
	}
	return dissect.Request
}

// convertOptions keep the Convert message of each stream, as the decode
// command does, and write warnings to warn.
func convertOptions(warn *bytes.Buffer) Options {
	return Options{
		Enough: func(d Direction, b []byte) bool { return !dissect.Decode(b, messageDir(d)).Incomplete() },
		Limit:  tlv.MaxMessageLen,
		Warn:   func(w Warning) { fmt.Fprintln(warn, w) },
	}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seg is a client segment of a connection whose SYN had sequence number 99.
func seg(index int, syn bool, seq uint32, payload []byte) *tcpPacket {
	return &tcpPacket{
		packetMeta: packetMeta{index: index, syn: syn,
			src: netip.MustParseAddrPort("192.0.2.10:40000"), dst: netip.MustParseAddrPort("198.51.100.1:5124")},
		ack: !syn, seq: seq, payload: payload,
	}
}

func TestReassembly(t *testing.T) {
	msg := unhex(t, "010622630a05005000000000000000000000ffffc0000201") // A1
	data := capturetest.Cat(msg, []byte("GET /"))
	syn := seg(1, true, 99, nil)
	tests := []struct {
		name      string
		pkts      []*tcpPacket
		first     int // packet carrying the first byte
		trailing  int
		truncated bool
	}{
		{"in the SYN", []*tcpPacket{seg(1, true, 99, data)}, 1, 5, false},
		{"SYN data retransmitted after the handshake",
			[]*tcpPacket{seg(1, true, 99, data), seg(2, false, 100, data)}, 1, 5, false},
		{"in order", []*tcpPacket{syn, seg(2, false, 100, data[:3]), seg(3, false, 103, data[3:])}, 2, 5, false},
		{"reversed", []*tcpPacket{syn, seg(2, false, 110, data[10:]), seg(3, false, 100, data[:10])}, 3, 5, false},
		{"overlapping and duplicated", []*tcpPacket{syn, seg(2, false, 100, data[:8]), seg(3, false, 100, data[:8]),
			seg(4, false, 104, data[4:20]), seg(5, false, 115, data[15:])}, 2, 5, false},
		{"keep-alive byte before the stream", []*tcpPacket{syn, seg(2, false, 99, []byte{0}), seg(3, false, 100, msg)}, 3, 0, false},
		{"cut short", []*tcpPacket{syn, seg(2, false, 100, msg[:20])}, 2, 0, true},
		{"gap never filled", []*tcpPacket{syn, seg(2, false, 100, msg[:4]), seg(3, false, 110, msg[10:])}, 2, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var warn bytes.Buffer
			tr := newTracker(convertOptions(&warn))
			for _, p := range tt.pkts {
				tr.packet(p)
			}
			streams := tr.close()
			if len(streams) != 1 {
				t.Fatalf("%d streams, want 1 (warnings %q)", len(streams), warn.String())
			}
			s := streams[0]
			m := dissect.Decode(s.Data, dissect.Request)
			if s.Packet != tt.first || m.TrailingBytes() != tt.trailing || m.Incomplete() != tt.truncated || s.Dir != FromClient {
				t.Fatalf("stream from packet %d, %d trailing bytes, error %v; want packet %d, %d, truncated %v",
					s.Packet, m.TrailingBytes(), m.Err(), tt.first, tt.trailing, tt.truncated)
			}
		})
	}
}

// A stream whose first bytes were not captured gives a warning, no stream.
func TestStartMissing(t *testing.T) {
	reply := seg(3, false, 5001, []byte("reply bytes"))
	reply.src, reply.dst = reply.dst, reply.src
	tests := map[string][]*tcpPacket{
		"first segment lost": {seg(1, true, 99, nil), seg(2, false, 110, []byte("later bytes"))},
		"no SYN+ACK":         {seg(1, true, 99, nil), reply},
	}
	for name, pkts := range tests {
		t.Run(name, func(t *testing.T) {
			var warn bytes.Buffer
			tr := newTracker(convertOptions(&warn))
			for _, p := range pkts {
				tr.packet(p)
			}
			if streams := tr.close(); len(streams) != 0 || !strings.Contains(warn.String(), "not captured") {
				t.Fatalf("%d streams, warnings %q", len(streams), warn.String())
			}
		})
	}
}

// Packets without a captured SYN are not followed.
func TestWithoutSYN(t *testing.T) {
	var warn bytes.Buffer
	tr := newTracker(convertOptions(&warn))
	tr.packet(seg(1, false, 100, unhex(t, "010622630a05005000000000000000000000ffffc0000201")))
	if streams := tr.close(); len(streams) != 0 || warn.Len() != 0 {
		t.Fatalf("%d streams, warnings %q", len(streams), warn.String())
	}
}

// Without Enough, a stream is complete at Limit, and a segment that starts
// past Limit is not kept for later.
func TestLimit(t *testing.T) {
	data := []byte("0123456789abcdefghij")
	tests := []struct {
		name string
		pkts []*tcpPacket
		want string
	}{
		{"complete at the limit, with the rest of its segment",
			[]*tcpPacket{seg(1, true, 99, nil), seg(2, false, 100, data[:5]), seg(3, false, 105, data[5:12]), seg(4, false, 112, data[12:])},
			"0123456789ab"},
		{"segment past the limit dropped",
			[]*tcpPacket{seg(1, true, 99, nil), seg(2, false, 100, data[:5]), seg(3, false, 110, data[10:]), seg(4, false, 105, data[5:10])},
			"0123456789"},
		{"short of the limit at the end", []*tcpPacket{seg(1, true, 99, data[:6])}, "012345"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(Options{Limit: 8})
			for _, p := range tt.pkts {
				tr.packet(p)
			}
			streams := tr.close()
			if len(streams) != 1 || string(streams[0].Data) != tt.want {
				t.Fatalf("streams %+v, want one with %q", streams, tt.want)
			}
		})
	}
}
