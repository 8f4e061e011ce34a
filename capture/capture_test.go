package capture

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/convert-tc/converter/capture/capturetest"
	"github.com/convert-tc/converter/dissect"
	"github.com/convert-tc/converter/tlv/tlvtest"
)

// wantStream is what TestStreamsSamples checks of a Stream: Data starts
// with data and holds n bytes.
type wantStream struct {
	packet   int
	at       time.Duration // after capturetest.Base
	src, dst string
	syn      bool
	dir      Direction
	data     []byte
	n        int
}

func TestStreamsSamples(t *testing.T) {
	in := func(id string) []byte { return tlvtest.ByID(t, id).Input }
	want := map[string][]wantStream{
		"tfo-ipv4.pcap": {
			{1, 123456789, "192.0.2.10:40001", "198.51.100.1:5124", true, FromClient, in("A2"), 61},
			{4, 140000000, "198.51.100.1:5124", "192.0.2.10:40001", false, FromServer, in("B1"), 68},
		},
		"split-ipv6.pcap": {
			{6, time.Second + 200000000, "[2001:db8::10]:40002", "[2001:db8:1::1]:5124", false, FromClient, in("A3"), 28},
			{8, time.Second + 200001000, "[2001:db8:1::1]:5124", "[2001:db8::10]:40002", false, FromServer, in("C32"), 8},
		},
		"malformed-ipv4.pcapng": {
			{1, 2 * time.Second, "203.0.113.7:40003", "198.51.100.1:5124", true, FromClient, in("D3"), 8},
			{6, 2*time.Second + 2010, "203.0.113.7:40004", "198.51.100.1:5124", false, FromClient, []byte("GET / HTTP/1.1\r\n"), 37},
			{7, 2*time.Second + 3000, "198.51.100.1:5124", "203.0.113.7:40003", false, FromServer, tlvtest.ByID(t, "D3").Reply, 16},
		},
	}
	for _, c := range capturetest.Samples(t) {
		t.Run(c.Name, func(t *testing.T) {
			var warn bytes.Buffer
			got, err := Streams(bytes.NewReader(c.Encode(t)), convertOptions(&warn))
			if err != nil || warn.Len() != 0 {
				t.Fatalf("error %v, warnings %q", err, warn.String())
			}
			checkStreams(t, got, want[c.Name])
		})
	}
}

func checkStreams(t *testing.T, got []Stream, want []wantStream) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d streams, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		ok := g.Packet == w.packet && g.Time.Equal(capturetest.Base.Add(w.at)) && g.Time.Location() == time.UTC &&
			g.Src == netip.MustParseAddrPort(w.src) && g.Dst == netip.MustParseAddrPort(w.dst) &&
			g.SYN == w.syn && g.Dir == w.dir && bytes.HasPrefix(g.Data, w.data) && len(g.Data) == w.n && !g.Snapped
		if !ok {
			t.Errorf("stream %d: packet %d at %s, %s -> %s, syn %v, %s, %d bytes %q, snapped %v; want %+v",
				i, g.Packet, g.Time, g.Src, g.Dst, g.SYN, g.Dir, len(g.Data), g.Data, g.Snapped, w)
		}
	}
}

// The sample read gzip-compressed gives the same streams.
func TestStreamsGzip(t *testing.T) {
	for _, c := range capturetest.Samples(t) {
		raw := c.Encode(t)
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(raw)
		zw.Close()
		var warn bytes.Buffer
		plain, err1 := Streams(bytes.NewReader(raw), convertOptions(&warn))
		zipped, err2 := Streams(&gz, convertOptions(&warn))
		if err1 != nil || err2 != nil || fmt.Sprint(plain) != fmt.Sprint(zipped) {
			t.Errorf("%s: plain %v (%v), gzip %v (%v)", c.Name, plain, err1, zipped, err2)
		}
	}
}

func TestStreamsErrors(t *testing.T) {
	tests := map[string]struct {
		in   []byte
		want string
	}{
		"empty":            {nil, "not a capture file: EOF"},
		"short header":     {[]byte{0xd4, 0xc3, 0xb2, 0xa1, 2, 0}, "not a capture file: EOF"},
		"unsupported link": {capturetest.PcapHeader(105), "unsupported link type 105"},
	}
	for name, tt := range tests {
		streams, err := Streams(bytes.NewReader(tt.in), Options{})
		if streams != nil || err == nil || err.Error() != tt.want {
			t.Errorf("%s: streams %v, error %v; want %q", name, streams, err, tt.want)
		}
	}
}

// collect is Options that record the warnings.
func collect(ws *[]Warning) Options {
	var discard bytes.Buffer
	o := convertOptions(&discard)
	o.Warn = func(w Warning) { *ws = append(*ws, w) }
	return o
}

func TestStreamsWarnings(t *testing.T) {
	tfo := capturetest.Samples(t)[0]
	client, server := tfo.Conns[0].Client, tfo.Conns[0].Server
	a1 := tlvtest.ByID(t, "A1").Input

	t.Run("ends inside a packet", func(t *testing.T) {
		raw := tfo.Encode(t)
		var ws []Warning
		streams, err := Streams(bytes.NewReader(raw[:len(raw)-10]), collect(&ws))
		want := []Warning{{Kind: EndsInPacket, Packet: 8}}
		if err != nil || len(streams) != 2 || fmt.Sprint(ws) != fmt.Sprint(want) {
			t.Fatalf("error %v, %d streams, warnings %v; want %v", err, len(streams), ws, want)
		}
		if s := ws[0].String(); s != "the capture ends inside packet 8" {
			t.Errorf("warning text %q", s)
		}
	})

	t.Run("snap length and skipped link type", func(t *testing.T) {
		// A pcapng file with an Ethernet and an 802.11 interface: the SYN
		// carries the first 20 bytes of A1 only, cut by the snap length.
		var b bytes.Buffer
		w, err := pcapgo.NewNgWriterInterface(&b, pcapgo.NgInterface{LinkType: layers.LinkTypeEthernet, SnapLength: 74},
			pcapgo.DefaultNgWriterOptions)
		if err != nil {
			t.Fatal(err)
		}
		wifi, err := w.AddInterface(pcapgo.NgInterface{LinkType: layers.LinkTypeIEEE802_11})
		if err != nil {
			t.Fatal(err)
		}
		frame := ethernetSYN(t, client, server, a1)
		at := capturetest.Base
		for _, p := range []struct {
			iface int
			data  []byte
		}{{wifi, []byte{1, 2, 3}}, {0, frame[:74]}, {wifi, []byte{4, 5, 6}}} {
			ci := gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(p.data), Length: len(p.data), InterfaceIndex: p.iface}
			if p.iface == 0 {
				ci.Length = len(frame)
			}
			if err := w.WritePacket(ci, p.data); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		var ws []Warning
		streams, err := Streams(&b, collect(&ws))
		want := []Warning{
			{Kind: LinkSkipped, Packet: 1, LinkType: uint32(layers.LinkTypeIEEE802_11)},
			{Kind: SnappedShort, Packet: 2, Src: client, Dst: server, Dir: FromClient},
		}
		if err != nil || fmt.Sprint(ws) != fmt.Sprint(want) {
			t.Fatalf("error %v, warnings %v; want %v", err, ws, want)
		}
		if len(streams) != 1 || !streams[0].Snapped || !bytes.Equal(streams[0].Data, a1[:20]) {
			t.Fatalf("streams %+v", streams)
		}
		texts := []string{
			"packets of link type 105 skipped",
			"192.0.2.10:40001 -> 198.51.100.1:5124: the capture cut the client stream short (snap length)",
		}
		for i, w := range ws {
			if w.String() != texts[i] {
				t.Errorf("warning %d: %q, want %q", i, w.String(), texts[i])
			}
		}
	})
}

// ethernetSYN is a client SYN carrying payload, framed in Ethernet.
func ethernetSYN(t *testing.T, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 99, SYN: true, Window: 64240}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzStreams feeds corrupt captures: Streams must report them or read
// them, never panic or hang on a huge length, and give only well-formed
// streams whose messages render as JSON.
func FuzzStreams(f *testing.F) {
	for _, c := range capturetest.Samples(f) {
		f.Add(c.Encode(f))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ws []Warning
		streams, hs, _ := Read(bytes.NewReader(b), collect(&ws))
		for i, s := range streams {
			if len(s.Data) == 0 || s.Packet < 1 || (i > 0 && streams[i-1].Packet > s.Packet) ||
				!s.Src.IsValid() || !s.Dst.IsValid() || s.Time.Location() != time.UTC || s.Dir > FromServer ||
				s.Handshake >= len(hs) || connKeyOf(s.Src, s.Dst) != connKeyOf(hs[s.Handshake].Client, hs[s.Handshake].Server) {
				t.Fatalf("stream %d: %+v", i, s)
			}
			js, err := dissect.Decode(s.Data, messageDir(s.Dir)).JSON()
			if err != nil || !json.Valid(js) || bytes.Contains(js, []byte("\n")) {
				t.Fatalf("stream %d: bad JSON %q (%v)", i, js, err)
			}
		}
		for i, h := range hs {
			if h.SYN < 1 || (i > 0 && hs[i-1].SYN >= h.SYN) || (h.SYNACK != 0 && h.SYNACK <= h.SYN) {
				t.Fatalf("handshake %d: %+v", i, h)
			}
		}
		for _, w := range ws {
			if s := w.String(); s == "" || strings.Contains(s, "\n") || w.Kind < LinkSkipped || w.Kind > SnappedShort {
				t.Fatalf("warning %+v: %q", w, s)
			}
		}
	})
}
