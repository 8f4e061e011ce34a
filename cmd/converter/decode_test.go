package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"github.com/convert-tc/converter/tlv/tlvtest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// init registers -update (rewrite the pcap fixtures in testdata/) unless
// another test file of the package registered it already: a second
// registration would panic.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files in testdata/")
	}
}

func updating() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// decodeCLIResult is what one run of the CLI printed and returned.
type decodeCLIResult struct {
	code     int
	out, err string
}

func runDecodeCLI(t testing.TB, stdin []byte, args ...string) decodeCLIResult {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), append([]string{"converter"}, args...),
		stdio{in: bytes.NewReader(stdin), out: &out, err: &errOut})
	return decodeCLIResult{code: code, out: out.String(), err: errOut.String()}
}

// decodeVector is one vector of tlv/testdata/vectors.txt.
type decodeVector struct{ tlvtest.Vector }

func loadDecodeVectors(t testing.TB) []decodeVector {
	t.Helper()
	var vs []decodeVector
	for _, v := range tlvtest.Load(t) {
		vs = append(vs, decodeVector{v})
	}
	return vs
}

func decodeVectorByID(t testing.TB, id string) decodeVector {
	t.Helper()
	return decodeVector{tlvtest.ByID(t, id)}
}

func (v decodeVector) args(extra ...string) []string {
	args := append([]string{"decode", "--hex", v.InputHex}, extra...)
	if v.Dir == "reply" {
		args = append(args, "--reply")
	}
	return args
}

// decodeMsgOut is the part of the JSON message the vector test checks.
type decodeMsgOut struct {
	Version     *int `json:"version"`
	TotalLength *int `json:"total_length"`
	TLVs        []struct {
		Length int `json:"length"`
	} `json:"tlvs"`
	TrailingBytes *int `json:"trailing_bytes"`
	Error         *struct {
		Code   int    `json:"code"`
		Name   string `json:"name"`
		Reason string `json:"reason"`
		Action string `json:"action"`
	} `json:"error"`
}

func TestDecodeVectors(t *testing.T) {
	for _, v := range loadDecodeVectors(t) {
		t.Run(v.ID, func(t *testing.T) {
			r := runDecodeCLI(t, nil, v.args("--json")...)
			if strings.Count(r.out, "\n") != 1 || !strings.HasSuffix(r.out, "\n") || r.err != "" {
				t.Fatalf("want one JSON line and no stderr, got %q, stderr %q", r.out, r.err)
			}
			var m decodeMsgOut
			if err := json.Unmarshal([]byte(r.out), &m); err != nil {
				t.Fatalf("invalid JSON %q: %v", r.out, err)
			}
			if m.Version == nil || m.TotalLength == nil || m.TLVs == nil || m.TrailingBytes == nil {
				t.Fatalf("missing fields in %s", r.out)
			}
			checkDecodeOutcome(t, v, r.code, m)
		})
	}
}

func checkDecodeOutcome(t *testing.T, v decodeVector, code int, m decodeMsgOut) {
	t.Helper()
	switch {
	case v.Expect == "ok" || v.Expect == "cookie":
		if code != exitOK || m.Error != nil {
			t.Fatalf("exit %d, error %+v; want valid", code, m.Error)
		}
		wordCount := 1
		for _, tl := range m.TLVs {
			wordCount += tl.Length
		}
		if wordCount != *m.TotalLength {
			t.Errorf("TLV lengths add up to %d words, total length %d", wordCount, *m.TotalLength)
		}
	case v.Expect == "reset" || v.Expect == "abort":
		name := map[string]string{"reset": "reset (no Error TLV)", "abort": "silent abort (no Error TLV)"}[v.Expect]
		if code != exitRefused || m.Error == nil || m.Error.Code != -1 || m.Error.Action != v.Expect || m.Error.Name != name {
			t.Fatalf("exit %d, error %+v; want %s", code, m.Error, v.Expect)
		}
	case strings.HasPrefix(v.Expect, "error="):
		want, _ := strconv.Atoi(strings.TrimPrefix(v.Expect, "error="))
		if code != exitRefused || m.Error == nil || m.Error.Code != want || m.Error.Action != "reply" || m.Error.Reason == "" {
			t.Fatalf("exit %d, error %+v; want code %d", code, m.Error, want)
		}
	default:
		t.Fatalf("unknown expectation %q", v.Expect)
	}
}

func TestDecodeExactJSON(t *testing.T) {
	tests := map[string]string{
		"A1": `{"version":1,"total_length":6,"tlvs":[{"type":10,"name":"Connect","length":5,"port":80,"address":"192.0.2.1","options":[]}],"trailing_bytes":0}`,
		"A2": `{"version":1,"total_length":6,"tlvs":[{"type":10,"name":"Connect","length":5,"port":80,"address":"192.0.2.1","options":[]}],"trailing_bytes":37}`,
		"A3": `{"version":1,"total_length":7,"tlvs":[{"type":10,"name":"Connect","length":6,"port":443,"address":"2001:db8::1","options":[{"kind":30,"data":""}]}],"trailing_bytes":0}`,
		"A8": `{"version":1,"total_length":11,"tlvs":[{"type":10,"name":"Connect","length":5,"port":80,"address":"192.0.2.1","options":[]},{"type":22,"name":"Cookie","length":5,"cookie":"a1b2c3d4e5f60718293a4b5c6d7e8f90"}],"trailing_bytes":0}`,
		"B8": `{"version":1,"total_length":9,"tlvs":[{"type":21,"name":"Supported TCP Extensions","length":2,"kinds":[4,8,30]},` +
			`{"type":20,"name":"Extended TCP Header","length":6,"options":[{"kind":2,"data":"05b4"},{"kind":4,"data":""},{"kind":8,"data":"1122334455667788"},{"kind":1,"data":""},{"kind":3,"data":"07"}]}],"trailing_bytes":0}`,
		"B3": `{"version":1,"total_length":5,"tlvs":[{"type":20,"name":"Extended TCP Header","length":4,"options":[{"kind":2,"data":"0578"},{"kind":4,"data":""},{"kind":3,"data":"08"}]}],"trailing_bytes":0}`,
		"C3": `{"version":1,"total_length":6,"tlvs":[{"type":30,"name":"Error","length":5,"code":3,"code_name":"Missing Cookie","value":"00a1b2c3d4e5f60718293a4b5c6d7e8f90"}],"trailing_bytes":0}`,
		"D4": `{"version":1,"total_length":7,"tlvs":[{"type":10,"name":"Connect","length":5,"port":80,"address":"192.0.2.1","options":[]}],"trailing_bytes":0,` +
			`"error":{"code":2,"name":"Unsupported Message","reason":"TLV type 99 (Unassigned (99)) not accepted from the client","action":"reply"}}`,
		"D9":  `{"version":1,"total_length":0,"tlvs":[],"trailing_bytes":0,"error":{"code":-1,"name":"reset (no Error TLV)","reason":"total length 0","action":"reset"}}`,
		"D25": `{"version":0,"total_length":0,"tlvs":[],"trailing_bytes":0,"error":{"code":-1,"name":"silent abort (no Error TLV)","reason":"no bytes","action":"abort"}}`,
	}
	for id, want := range tests {
		t.Run(id, func(t *testing.T) {
			r := runDecodeCLI(t, nil, decodeVectorByID(t, id).args("--json")...)
			if r.out != want+"\n" {
				t.Fatalf("got  %s\nwant %s", r.out, want)
			}
		})
	}
}

// A zero at the end of the last option of an Extended TCP Header (Window
// Scale 0) is option data, not padding.
func TestDecodeExtendedHeaderTrailingZero(t *testing.T) {
	r := runDecodeCLI(t, nil, "decode", "--reply", "--json", "--hex", "01042263 14030000 020405b4 01030300")
	want := `{"version":1,"total_length":4,"tlvs":[{"type":20,"name":"Extended TCP Header","length":3,"options":` +
		`[{"kind":2,"data":"05b4"},{"kind":1,"data":""},{"kind":3,"data":"00"}]}],"trailing_bytes":0}` + "\n"
	if r.code != exitOK || r.out != want {
		t.Fatalf("exit %d, got %s want %s", r.code, r.out, want)
	}
}

func TestDecodeHuman(t *testing.T) {
	tests := []struct {
		id    string
		code  int
		lines []string // the whole output
	}{
		{"A7", exitOK, []string{
			"Convert v1, total length 7 words (28 bytes)",
			"  Info (1)",
			"  Connect (10), 5 words: 203.0.113.5:443",
		}},
		{"A2", exitOK, []string{
			"Convert v1, total length 6 words (24 bytes)",
			"  Connect (10), 5 words: 192.0.2.1:80",
			"  trailing bytes: 37",
		}},
		{"A3", exitOK, []string{
			"Convert v1, total length 7 words (28 bytes)",
			"  Connect (10), 6 words: [2001:db8::1]:443 options: MPTCP(30)",
		}},
		{"B8", exitOK, []string{
			"Convert v1, total length 9 words (36 bytes)",
			"  Supported TCP Extensions (21): SACK-Permitted(4) Timestamps(8) MPTCP(30)",
			"  Extended TCP Header (20), 6 words: MSS(2)=05b4 SACK-Permitted(4) Timestamps(8)=1122334455667788 NOP(1) Window Scale(3)=07",
		}},
		{"C32", exitOK, []string{
			"Convert v1, total length 2 words (8 bytes)",
			"  Error (30): Not Authorized (32) value 00",
		}},
		{"D3", exitRefused, []string{
			"Convert v1, total length 2 words (8 bytes)",
			"  refused: Malformed Message (1): Connect TLV with length 0",
		}},
		{"D9", exitRefused, []string{
			"Convert v1, total length 0 words (0 bytes)",
			"  refused: reset (no Error TLV): total length 0",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			r := runDecodeCLI(t, nil, decodeVectorByID(t, tt.id).args()...)
			want := strings.Join(tt.lines, "\n") + "\n"
			if r.code != tt.code || r.out != want {
				t.Fatalf("exit %d, output\n%s\nwant exit %d, output\n%s", r.code, r.out, tt.code, want)
			}
		})
	}
}

func TestDecodeHexSeparators(t *testing.T) {
	plain := runDecodeCLI(t, nil, "decode", "--json", "--hex", "010622630a05005000000000000000000000ffffc0000201")
	spaced := runDecodeCLI(t, nil, "decode", "--json", "--hex", " 01:06:22:63\n0a 05 00 50\t00000000 00000000 0000ffff c0000201 ")
	if plain.code != exitOK || spaced.code != exitOK || plain.out != spaced.out {
		t.Fatalf("plain %+v, spaced %+v", plain, spaced)
	}
}

func TestDecodeUsageErrors(t *testing.T) {
	tests := map[string][]string{
		"no input":          {"decode"},
		"no input json":     {"decode", "--json"},
		"bad hex":           {"decode", "--hex", "01zz"},
		"odd hex":           {"decode", "--hex", "010"},
		"hex and pcap":      {"decode", "--hex", "01", "--pcap", "testdata/tfo-ipv4.pcap"},
		"reply with pcap":   {"decode", "--reply", "--pcap", "testdata/tfo-ipv4.pcap"},
		"positional":        {"decode", "010622630a05005000000000000000000000ffffc0000201"},
		"unknown flag":      {"decode", "--bogus"},
		"missing value":     {"decode", "--hex"},
		"missing file":      {"decode", "--pcap", "testdata/does-not-exist.pcap"},
		"not a capture":     {"decode", "--pcap", "decode_test.go"},
		"empty capture":     {"decode", "--pcap", "-"},
		"unsupported link":  {"decode", "--pcap", "-", "--json"},
		"positional + json": {"decode", "--json", "extra"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			var stdin []byte
			if name == "unsupported link" {
				stdin = pcapFileHeader(105) // IEEE 802.11
			}
			r := runDecodeCLI(t, stdin, args...)
			if r.code != exitUsage || r.out != "" || !strings.HasPrefix(r.err, "converter: ") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2, nothing on stdout, a message", r.code, r.out, r.err)
			}
		})
	}
}

// pcapFileHeader is a little-endian nanosecond pcap file header.
func pcapFileHeader(link uint32) []byte {
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h[0:], 0xa1b23c4d)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], 65535)
	binary.LittleEndian.PutUint32(h[20:], link)
	return h
}

// Capture fixtures.

type fxSide uint8

const (
	fxClient fxSide = iota
	fxServer
)

type fxConn struct{ client, server netip.AddrPort }

type fxPacket struct {
	conn    int
	from    fxSide
	at      time.Duration // after fxBase
	flags   string        // S, A, P, F, R
	seq     uint32
	ack     uint32
	payload []byte
}

type pcapFixture struct {
	file    string
	link    uint32 // pcapLinkEthernet, pcapLinkSLL2 (pcap) or pcapLinkSLL (pcapng)
	conns   []fxConn
	packets []fxPacket
}

var fxBase = time.Date(2025, 3, 27, 10, 0, 0, 0, time.UTC)

func fxUnhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fxCat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func pcapFixtures(t testing.TB) []pcapFixture {
	a2 := fxUnhex(t, decodeVectorByID(t, "A2").InputHex)
	a3 := fxUnhex(t, decodeVectorByID(t, "A3").InputHex)
	b1 := fxUnhex(t, decodeVectorByID(t, "B1").InputHex)
	c32 := fxUnhex(t, decodeVectorByID(t, "C32").InputHex)
	d3 := fxUnhex(t, decodeVectorByID(t, "D3").InputHex)
	d3reply := fxUnhex(t, "010422631e030100010222630a000000")
	http := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	get := []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
	ap := netip.MustParseAddrPort
	return []pcapFixture{
		{
			// (1) TFO: the request and its HTTP GET ride in the SYN; the
			// reply B1 starts the converter's first data, with the response.
			file: "tfo-ipv4.pcap", link: pcapLinkEthernet,
			conns: []fxConn{{ap("192.0.2.10:40001"), ap("198.51.100.1:5124")}},
			packets: []fxPacket{
				{0, fxClient, 123456789, "S", 1000, 0, a2},
				{0, fxServer, 124000001, "SA", 5000, 1062, nil},
				{0, fxClient, 125000000, "A", 1062, 5001, nil},
				{0, fxServer, 140000000, "PA", 5001, 1062, fxCat(b1, http)},
				{0, fxClient, 141000000, "A", 1062, 5001 + 28 + 40, nil},
				{0, fxClient, 150000000, "FA", 1062, 5001 + 28 + 40, nil},
				{0, fxServer, 151000000, "FA", 5001 + 28 + 40, 1063, nil},
				{0, fxClient, 152000000, "A", 1063, 5001 + 28 + 41, nil},
			},
		},
		{
			// (2) The request follows the handshake in two segments. The
			// first was lost before the capture point: the second shows up
			// first, then the retransmitted first, then a spurious
			// retransmission of the second. The reply is an Error.
			file: "split-ipv6.pcap", link: pcapLinkSLL2,
			conns: []fxConn{{ap("[2001:db8::10]:40002"), ap("[2001:db8:1::1]:5124")}},
			packets: []fxPacket{
				{0, fxClient, 1 * time.Second, "S", 7000, 0, nil},
				{0, fxServer, 1*time.Second + 1000, "SA", 9000, 7001, nil},
				{0, fxClient, 1*time.Second + 2000, "A", 7001, 9001, nil},
				{0, fxClient, 1*time.Second + 3000, "PA", 7011, 9001, a3[10:]},
				{0, fxServer, 1*time.Second + 4000, "A", 9001, 7001, nil},
				{0, fxClient, 1*time.Second + 200000000, "PA", 7001, 9001, a3[:10]},
				{0, fxClient, 1*time.Second + 200000500, "PA", 7011, 9001, a3[10:]},
				{0, fxServer, 1*time.Second + 200001000, "PA", 9001, 7029, c32},
				{0, fxServer, 1*time.Second + 200001001, "FA", 9009, 7029, nil},
				{0, fxClient, 1*time.Second + 200002000, "R", 7029, 0, nil},
			},
		},
		{
			// (3) A malformed request (D3) in a TFO SYN and the converter's
			// echo; a plain HTTP connection to the converter port; a
			// connection that carries no data at all (no record).
			file: "malformed-ipv4.pcapng", link: pcapLinkSLL,
			conns: []fxConn{
				{ap("203.0.113.7:40003"), ap("198.51.100.1:5124")},
				{ap("203.0.113.7:40004"), ap("198.51.100.1:5124")},
				{ap("203.0.113.7:40005"), ap("198.51.100.1:5124")},
			},
			packets: []fxPacket{
				{0, fxClient, 2 * time.Second, "S", 100, 0, d3},
				{1, fxClient, 2*time.Second + 10, "S", 300, 0, nil},
				{0, fxServer, 2*time.Second + 1000, "SA", 200, 109, nil},
				{1, fxServer, 2*time.Second + 1010, "SA", 400, 301, nil},
				{0, fxClient, 2*time.Second + 2000, "A", 109, 201, nil},
				{1, fxClient, 2*time.Second + 2010, "PA", 301, 401, get},
				{0, fxServer, 2*time.Second + 3000, "PA", 201, 109, d3reply},
				{0, fxServer, 2*time.Second + 3001, "FA", 217, 109, nil},
				{0, fxClient, 2*time.Second + 4000, "R", 109, 0, nil},
				{2, fxClient, 2*time.Second + 5000, "S", 500, 0, nil},
				{2, fxServer, 2*time.Second + 6000, "SA", 600, 501, nil},
				{2, fxClient, 2*time.Second + 7000, "A", 501, 601, nil},
				{1, fxServer, 2*time.Second + 8000, "FA", 401, 301 + uint32(len(get)), nil},
				{2, fxClient, 2*time.Second + 9000, "FA", 501, 601, nil},
				{2, fxServer, 2*time.Second + 10000, "FA", 601, 502, nil},
			},
		},
	}
}

// TestPcapFixtures rewrites the capture fixtures with -update and otherwise
// checks that the committed ones match their description.
func TestPcapFixtures(t *testing.T) {
	for _, f := range pcapFixtures(t) {
		got := f.encode(t)
		path := filepath.Join("testdata", f.file)
		if updating() {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestPcapFixtures -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go test -run TestPcapFixtures -update", path)
		}
	}
}

func (f pcapFixture) encode(t testing.TB) []byte {
	t.Helper()
	var b bytes.Buffer
	write := f.writer(t, &b)
	for _, p := range f.packets {
		frame := f.frame(t, p)
		ci := gopacket.CaptureInfo{Timestamp: fxBase.Add(p.at), CaptureLength: len(frame), Length: len(frame)}
		if err := write(ci, frame); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// writer writes the file header and returns the packet writer. pcapgo
// writes link types as 8 bits, so the SLL2 header is written here.
func (f pcapFixture) writer(t testing.TB, b *bytes.Buffer) func(gopacket.CaptureInfo, []byte) error {
	t.Helper()
	switch f.link {
	case pcapLinkEthernet:
		w := pcapgo.NewWriterNanos(b)
		if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
			t.Fatal(err)
		}
		return w.WritePacket
	case pcapLinkSLL2:
		b.Write(pcapFileHeader(pcapLinkSLL2))
		return pcapgo.NewWriterNanos(b).WritePacket
	}
	iface := pcapgo.NgInterface{Name: "any", LinkType: layers.LinkTypeLinuxSLL, TimestampResolution: 9}
	w, err := pcapgo.NewNgWriterInterface(b, iface,
		pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "converter decode tests"}})
	if err != nil {
		t.Fatal(err)
	}
	return func(ci gopacket.CaptureInfo, data []byte) error {
		if err := w.WritePacket(ci, data); err != nil {
			return err
		}
		return w.Flush()
	}
}

func (f pcapFixture) frame(t testing.TB, p fxPacket) []byte {
	t.Helper()
	c := f.conns[p.conn]
	src, dst := c.client, c.server
	if p.from == fxServer {
		src, dst = dst, src
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: p.seq, Ack: p.ack, Window: 64240,
		SYN: strings.Contains(p.flags, "S"), ACK: strings.Contains(p.flags, "A"),
		PSH: strings.Contains(p.flags, "P"), FIN: strings.Contains(p.flags, "F"),
		RST: strings.Contains(p.flags, "R"),
	}
	if tcp.SYN {
		tcp.Options = []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}
	}
	ls, etherType := fxIPLayers(t, src.Addr(), dst.Addr(), tcp)
	if f.link == pcapLinkEthernet {
		eth := &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: etherType}
		ls = append([]gopacket.SerializableLayer{eth}, ls...)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, append(ls, gopacket.Payload(p.payload))...); err != nil {
		t.Fatal(err)
	}
	return fxCat(fxCookedHeader(f.link, p.from, uint16(etherType)), buf.Bytes())
}

func fxIPLayers(t testing.TB, src, dst netip.Addr, tcp *layers.TCP) ([]gopacket.SerializableLayer, layers.EthernetType) {
	t.Helper()
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		return []gopacket.SerializableLayer{ip, tcp}, layers.EthernetTypeIPv4
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return []gopacket.SerializableLayer{ip, tcp}, layers.EthernetTypeIPv6
}

// fxCookedHeader is the Linux SLL or SLL2 header of a packet captured on the
// converter host: packets from the client come in (type 0), the others go
// out (type 4).
func fxCookedHeader(link uint32, from fxSide, etherType uint16) []byte {
	pktType := byte(0)
	if from == fxServer {
		pktType = 4
	}
	mac := []byte{2, 0, 0, 0, 0, 1, 0, 0}
	switch link {
	case pcapLinkSLL:
		h := []byte{0, pktType, 0, 1, 0, 6}
		return binary.BigEndian.AppendUint16(append(h, mac...), etherType)
	case pcapLinkSLL2:
		h := binary.BigEndian.AppendUint16(nil, etherType)
		h = append(h, 0, 0, 0, 0, 0, 2, 0, 1, pktType, 6)
		return append(h, mac...)
	}
	return nil
}

// The records the fixtures must give, one JSON line each.
var pcapFixtureRecords = map[string]struct {
	code  int
	lines []string
}{
	"tfo-ipv4.pcap": {exitOK, []string{
		`{"time":"2025-03-27T10:00:00.123456789Z","src":"192.0.2.10:40001","dst":"198.51.100.1:5124","syn":true,"direction":"request","message":` +
			`{"version":1,"total_length":6,"tlvs":[{"type":10,"name":"Connect","length":5,"port":80,"address":"192.0.2.1","options":[]}],"trailing_bytes":37}}`,
		`{"time":"2025-03-27T10:00:00.140000000Z","src":"198.51.100.1:5124","dst":"192.0.2.10:40001","syn":false,"direction":"reply","message":` +
			`{"version":1,"total_length":7,"tlvs":[{"type":20,"name":"Extended TCP Header","length":6,"options":[{"kind":2,"data":"05b4"},{"kind":4,"data":""},{"kind":8,"data":"1122334455667788"},{"kind":1,"data":""},{"kind":3,"data":"07"}]}],"trailing_bytes":40}}`,
	}},
	"split-ipv6.pcap": {exitOK, []string{
		`{"time":"2025-03-27T10:00:01.200000000Z","src":"[2001:db8::10]:40002","dst":"[2001:db8:1::1]:5124","syn":false,"direction":"request","message":` +
			`{"version":1,"total_length":7,"tlvs":[{"type":10,"name":"Connect","length":6,"port":443,"address":"2001:db8::1","options":[{"kind":30,"data":""}]}],"trailing_bytes":0}}`,
		`{"time":"2025-03-27T10:00:01.200001000Z","src":"[2001:db8:1::1]:5124","dst":"[2001:db8::10]:40002","syn":false,"direction":"reply","message":` +
			`{"version":1,"total_length":2,"tlvs":[{"type":30,"name":"Error","length":1,"code":32,"code_name":"Not Authorized","value":"00"}],"trailing_bytes":0}}`,
	}},
	"malformed-ipv4.pcapng": {exitRefused, []string{
		`{"time":"2025-03-27T10:00:02.000000000Z","src":"203.0.113.7:40003","dst":"198.51.100.1:5124","syn":true,"direction":"request","message":` +
			`{"version":1,"total_length":2,"tlvs":[],"trailing_bytes":0,"error":{"code":1,"name":"Malformed Message","reason":"Connect TLV with length 0","action":"reply"}}}`,
		`{"time":"2025-03-27T10:00:02.000002010Z","src":"203.0.113.7:40004","dst":"198.51.100.1:5124","syn":false,"direction":"request","message":` +
			`{"version":71,"total_length":69,"tlvs":[],"trailing_bytes":0,"error":{"code":0,"name":"Unsupported Version","reason":"version 71","action":"reply"}}}`,
		`{"time":"2025-03-27T10:00:02.000003000Z","src":"198.51.100.1:5124","dst":"203.0.113.7:40003","syn":false,"direction":"reply","message":` +
			`{"version":1,"total_length":4,"tlvs":[{"type":30,"name":"Error","length":3,"code":1,"code_name":"Malformed Message","value":"00010222630a000000"}],"trailing_bytes":0}}`,
	}},
}

func TestDecodePcapJSON(t *testing.T) {
	for file, want := range pcapFixtureRecords {
		t.Run(file, func(t *testing.T) {
			r := runDecodeCLI(t, nil, "decode", "--json", "--pcap", filepath.Join("testdata", file))
			checkPcapRecords(t, r, want.code, want.lines)
		})
	}
}

func checkPcapRecords(t *testing.T, r decodeCLIResult, code int, lines []string) {
	t.Helper()
	got := strings.Split(strings.TrimSuffix(r.out, "\n"), "\n")
	if r.code != code || r.err != "" || len(got) != len(lines) {
		t.Fatalf("exit %d (want %d), stderr %q, %d records (want %d):\n%s", r.code, code, r.err, len(got), len(lines), r.out)
	}
	for i := range lines {
		if !json.Valid([]byte(got[i])) {
			t.Errorf("record %d is not JSON: %s", i, got[i])
		}
		if got[i] != lines[i] {
			t.Errorf("record %d\n got  %s\n want %s", i, got[i], lines[i])
		}
	}
}

func TestDecodePcapHuman(t *testing.T) {
	r := runDecodeCLI(t, nil, "decode", "--pcap", filepath.Join("testdata", "tfo-ipv4.pcap"))
	want := strings.Join([]string{
		"2025-03-27T10:00:00.123456789Z 192.0.2.10:40001 -> 198.51.100.1:5124 request [SYN]",
		"Convert v1, total length 6 words (24 bytes)",
		"  Connect (10), 5 words: 192.0.2.1:80",
		"  trailing bytes: 37",
		"2025-03-27T10:00:00.140000000Z 198.51.100.1:5124 -> 192.0.2.10:40001 reply",
		"Convert v1, total length 7 words (28 bytes)",
		"  Extended TCP Header (20), 6 words: MSS(2)=05b4 SACK-Permitted(4) Timestamps(8)=1122334455667788 NOP(1) Window Scale(3)=07",
		"  trailing bytes: 40",
	}, "\n") + "\n"
	if r.code != exitOK || r.out != want {
		t.Fatalf("exit %d, output\n%s\nwant\n%s", r.code, r.out, want)
	}
}

func TestDecodePcapStdinAndGzip(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "split-ipv6.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	want := pcapFixtureRecords["split-ipv6.pcap"]
	for name, in := range map[string][]byte{"plain": raw, "gzip": gz.Bytes()} {
		t.Run(name, func(t *testing.T) {
			checkPcapRecords(t, runDecodeCLI(t, in, "decode", "--json", "--pcap", "-"), want.code, want.lines)
		})
	}
}

// A capture cut inside its last packet still gives the records before it.
func TestDecodePcapCutShort(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "tfo-ipv4.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	r := runDecodeCLI(t, raw[:len(raw)-10], "decode", "--json", "--pcap", "-")
	want := pcapFixtureRecords["tfo-ipv4.pcap"]
	if r.code != exitOK || strings.Count(r.out, "\n") != len(want.lines) || !strings.Contains(r.err, "warning") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.out, r.err)
	}
}

func TestPcapLinkPayload(t *testing.T) {
	ip4 := []byte{0x45, 0, 0, 20}
	ip6 := []byte{0x60, 0, 0, 0}
	eth := func(et ...byte) []byte { return fxCat(make([]byte, 12), et) }
	sll := func(et ...byte) []byte { return fxCat(make([]byte, 14), et) }
	sll2 := func(et ...byte) []byte { return fxCat(et, make([]byte, 18)) }
	tests := []struct {
		name string
		link uint32
		in   []byte
		want []byte // nil: not IP
	}{
		{"ethernet ipv4", pcapLinkEthernet, fxCat(eth(0x08, 0x00), ip4), ip4},
		{"ethernet ipv6", pcapLinkEthernet, fxCat(eth(0x86, 0xdd), ip6), ip6},
		{"ethernet vlan", pcapLinkEthernet, fxCat(eth(0x81, 0x00), []byte{0, 5, 0x08, 0x00}, ip4), ip4},
		{"ethernet q-in-q", pcapLinkEthernet, fxCat(eth(0x88, 0xa8), []byte{0, 5, 0x81, 0x00, 0, 6, 0x86, 0xdd}, ip6), ip6},
		{"ethernet arp", pcapLinkEthernet, fxCat(eth(0x08, 0x06), ip4), nil},
		{"ethernet short", pcapLinkEthernet, make([]byte, 13), nil},
		{"sll", pcapLinkSLL, fxCat(sll(0x08, 0x00), ip4), ip4},
		{"sll short", pcapLinkSLL, make([]byte, 15), nil},
		{"sll2", pcapLinkSLL2, fxCat(sll2(0x86, 0xdd), ip6), ip6},
		{"sll2 short", pcapLinkSLL2, make([]byte, 19), nil},
		{"raw", pcapLinkRaw, ip6, ip6},
		{"raw ipv4", pcapLinkIPv4, ip4, ip4},
		{"raw ipv6", pcapLinkIPv6, ip6, ip6},
		{"null", pcapLinkNull, fxCat([]byte{2, 0, 0, 0}, ip4), ip4},
		{"loop", pcapLinkLoop, fxCat([]byte{0, 0, 0, 30}, ip6), ip6},
		{"unsupported", 105, ip4, nil},
	}
	for _, tt := range tests {
		got, ok := pcapLinkPayload(tt.link, tt.in)
		if ok != (tt.want != nil) || !bytes.Equal(got, tt.want) {
			t.Errorf("%s: got %x, %v; want %x", tt.name, got, ok, tt.want)
		}
	}
}

// fxSeg is a client segment of a connection whose SYN had sequence number 99.
func fxSeg(index int, syn bool, seq uint32, payload []byte) *pcapTCPPacket {
	return &pcapTCPPacket{
		pcapPacketMeta: pcapPacketMeta{index: index, syn: syn,
			src: netip.MustParseAddrPort("192.0.2.10:40000"), dst: netip.MustParseAddrPort("198.51.100.1:5124")},
		ack: !syn, seq: seq, payload: payload,
	}
}

func TestFlowReassembly(t *testing.T) {
	msg := fxUnhex(t, "010622630a05005000000000000000000000ffffc0000201") // A1
	data := fxCat(msg, []byte("GET /"))
	syn := fxSeg(1, true, 99, nil)
	tests := []struct {
		name      string
		pkts      []*pcapTCPPacket
		first     int // packet carrying the first byte
		trailing  int
		truncated bool
	}{
		{"in the SYN", []*pcapTCPPacket{fxSeg(1, true, 99, data)}, 1, 5, false},
		{"SYN data retransmitted after the handshake",
			[]*pcapTCPPacket{fxSeg(1, true, 99, data), fxSeg(2, false, 100, data)}, 1, 5, false},
		{"in order", []*pcapTCPPacket{syn, fxSeg(2, false, 100, data[:3]), fxSeg(3, false, 103, data[3:])}, 2, 5, false},
		{"reversed", []*pcapTCPPacket{syn, fxSeg(2, false, 110, data[10:]), fxSeg(3, false, 100, data[:10])}, 3, 5, false},
		{"overlapping and duplicated", []*pcapTCPPacket{syn, fxSeg(2, false, 100, data[:8]), fxSeg(3, false, 100, data[:8]),
			fxSeg(4, false, 104, data[4:20]), fxSeg(5, false, 115, data[15:])}, 2, 5, false},
		{"keep-alive byte before the stream", []*pcapTCPPacket{syn, fxSeg(2, false, 99, []byte{0}), fxSeg(3, false, 100, msg)}, 3, 0, false},
		{"cut short", []*pcapTCPPacket{syn, fxSeg(2, false, 100, msg[:20])}, 2, 0, true},
		{"gap never filled", []*pcapTCPPacket{syn, fxSeg(2, false, 100, msg[:4]), fxSeg(3, false, 110, msg[10:])}, 2, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var warn bytes.Buffer
			tr := newFlowTracker(&warn)
			for _, p := range tt.pkts {
				tr.packet(p)
			}
			recs := tr.close()
			if len(recs) != 1 {
				t.Fatalf("%d records, want 1 (warnings %q)", len(recs), warn.String())
			}
			r := recs[0]
			truncated := r.msg.err != nil && r.msg.err.Truncated
			if r.meta.index != tt.first || r.msg.trailing() != tt.trailing || truncated != tt.truncated || r.dir != msgRequest {
				t.Fatalf("record from packet %d, %d trailing bytes, error %v; want packet %d, %d, truncated %v",
					r.meta.index, r.msg.trailing(), r.msg.err, tt.first, tt.trailing, tt.truncated)
			}
		})
	}
}

// A stream whose first bytes were not captured gives a warning, no record.
func TestFlowStartMissing(t *testing.T) {
	reply := fxSeg(3, false, 5001, []byte("reply bytes"))
	reply.src, reply.dst = reply.dst, reply.src
	tests := map[string][]*pcapTCPPacket{
		"first segment lost": {fxSeg(1, true, 99, nil), fxSeg(2, false, 110, []byte("later bytes"))},
		"no SYN+ACK":         {fxSeg(1, true, 99, nil), reply},
	}
	for name, pkts := range tests {
		t.Run(name, func(t *testing.T) {
			var warn bytes.Buffer
			tr := newFlowTracker(&warn)
			for _, p := range pkts {
				tr.packet(p)
			}
			if recs := tr.close(); len(recs) != 0 || !strings.Contains(warn.String(), "not captured") {
				t.Fatalf("%d records, warnings %q", len(recs), warn.String())
			}
		})
	}
}

// Packets without a captured SYN are not followed.
func TestFlowWithoutSYN(t *testing.T) {
	var warn bytes.Buffer
	tr := newFlowTracker(&warn)
	tr.packet(fxSeg(1, false, 100, fxUnhex(t, "010622630a05005000000000000000000000ffffc0000201")))
	if recs := tr.close(); len(recs) != 0 || warn.Len() != 0 {
		t.Fatalf("%d records, warnings %q", len(recs), warn.String())
	}
}

func FuzzDecodeHex(f *testing.F) {
	for _, v := range loadDecodeVectors(f) {
		f.Add(fxUnhex(f, v.InputHex), v.Dir == "reply")
	}
	f.Fuzz(func(t *testing.T, b []byte, reply bool) {
		args := []string{"decode", "--json", "--hex", hex.EncodeToString(b)}
		if reply {
			args = append(args, "--reply")
		}
		r := runDecodeCLI(t, nil, args...)
		if r.code != exitOK && r.code != exitRefused {
			t.Fatalf("exit %d, stderr %q", r.code, r.err)
		}
		if strings.Count(r.out, "\n") != 1 || !json.Valid([]byte(r.out)) {
			t.Fatalf("not one JSON line: %q", r.out)
		}
		var m decodeMsgOut
		if err := json.Unmarshal([]byte(r.out), &m); err != nil || (m.Error != nil) != (r.code == exitRefused) {
			t.Fatalf("exit %d with %s (%v)", r.code, r.out, err)
		}
		human := runDecodeCLI(t, nil, append([]string{"decode"}, args[2:]...)...)
		if human.code != r.code || !strings.HasPrefix(human.out, "Convert") {
			t.Fatalf("human output: exit %d, %q", human.code, human.out)
		}
	})
}

// FuzzDecodePcap feeds corrupt captures: the decoder must report them (exit
// 2) or decode them, never panic, hang on a huge length, or print bad JSON.
func FuzzDecodePcap(f *testing.F) {
	for file := range pcapFixtureRecords {
		b, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := runDecodeCLI(t, b, "decode", "--json", "--pcap", "-")
		if r.code != exitOK && r.code != exitRefused && r.code != exitUsage {
			t.Fatalf("exit %d, stderr %q", r.code, r.err)
		}
		for _, line := range strings.Split(strings.TrimSuffix(r.out, "\n"), "\n") {
			if line != "" && !json.Valid([]byte(line)) {
				t.Fatalf("bad JSON line %q", line)
			}
		}
	})
}
