package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/capture/capturetest"
	"github.com/convert-tc/converter/dissect"
	"github.com/convert-tc/converter/tlv"
	"github.com/convert-tc/converter/tlv/tlvtest"
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
				stdin = capturetest.PcapHeader(105) // IEEE 802.11
			}
			r := runDecodeCLI(t, stdin, args...)
			if r.code != exitUsage || r.out != "" || !strings.HasPrefix(r.err, "converter: ") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2, nothing on stdout, a message", r.code, r.out, r.err)
			}
		})
	}
}

// The records the fixtures must give, one JSON line each.
var pcapFixtureRecords = map[string]struct {
	code  int
	lines []string
}{
	"tfo-ipv4.pcap": {exitOK, []string{
		`{"time":"2025-03-27T10:00:00.123456789Z","src":"192.0.2.10:40001","dst":"198.51.100.1:5124","syn":true,"direction":"request","message":` +
			`{"version":1,"total_length":6,"tlvs":[{"type":10,"name":"Connect","length":5,"port":80,"address":"192.0.2.1","options":[]}],"trailing_bytes":37}}`,
		// The request rides in the SYN; the capture holds no server leg.
		`{"kind":"handshake","client":"192.0.2.10:40001","converter":"198.51.100.1:5124","destination":"192.0.2.1:80",` +
			`"client_syn":"2025-03-27T10:00:00.123456789Z","server_syn":null,"server_synack":null,"client_synack":"2025-03-27T10:00:00.124000001Z","held":false}`,
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
		// Each record starts with the converter's version.
		want := `{"version":` + jsonString(t, version) + "," + lines[i][1:]
		if got[i] != want {
			t.Errorf("record %d\n got  %s\n want %s", i, got[i], want)
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
		"handshake 192.0.2.10:40001 -> 198.51.100.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN not captured, " +
			"server SYN+ACK not captured, client SYN+ACK +0.543ms (not held: the server's SYN+ACK was not captured)",
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

// TestDecodeHexMatchesDissect: decode --hex prints the message as package
// dissect renders it (its tests hold the exact output) and exits 1 exactly
// when the message is refused.
func TestDecodeHexMatchesDissect(t *testing.T) {
	for _, v := range loadDecodeVectors(t) {
		t.Run(v.ID, func(t *testing.T) {
			dir := dissect.Request
			if v.Dir == "reply" {
				dir = dissect.Reply
			}
			m := dissect.Decode(v.Input, dir)
			code := exitOK
			if m.Err() != nil {
				code = exitRefused
			}
			js, err := m.JSON()
			if err != nil {
				t.Fatal(err)
			}
			for _, tt := range []struct {
				args []string
				want string
			}{
				// The converter's version comes first; "version" is the message's.
				{v.args("--json"), `{"converter_version":` + jsonString(t, version) + "," + string(js[1:]) + "\n"},
				{v.args(), m.Text()},
			} {
				r := runDecodeCLI(t, nil, tt.args...)
				if r.code != code || r.out != tt.want || r.err != "" {
					t.Fatalf("%q: exit %d, stdout %q, stderr %q; want exit %d, stdout %q", tt.args, r.code, r.out, r.err, code, tt.want)
				}
			}
		})
	}
}

// jsonString is s encoded as a JSON string.
func jsonString(t testing.TB, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPcapFixtures rewrites the capture fixtures (capturetest.Samples) with
// -update and otherwise checks that the committed ones match them.
func TestPcapFixtures(t *testing.T) {
	for _, c := range capturetest.Samples(t) {
		got := c.Encode(t)
		path := filepath.Join("testdata", c.Name)
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

// connectRequest is a request whose Connect TLV names dest.
func connectRequest(t testing.TB, dest string) []byte {
	t.Helper()
	d := netip.MustParseAddrPort(dest)
	b, err := tlv.EndMessage(tlv.AppendConnect(tlv.BeginMessage(nil), tlv.Connect{Port: d.Port(), Addr: d.Addr()}), 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// synAt is the SYN of connection conn's Client at at, carrying payload, or
// with from Server the SYN+ACK that answers it.
func synAt(conn int, from capturetest.Side, at time.Duration, payload []byte) capturetest.Packet {
	if from == capturetest.Server {
		return capturetest.Packet{Conn: conn, From: from, At: at, Flags: "SA", Seq: 5000, Ack: 1001}
	}
	return capturetest.Packet{Conn: conn, From: from, At: at, Flags: "S", Seq: 1000, Payload: payload}
}

// handshakeLines is the handshake records of decode --pcap of c, text
// and JSON (without the version).
func handshakeLines(t *testing.T, c capturetest.Capture) (text, js []string) {
	t.Helper()
	raw := c.Encode(t)
	r := runDecodeCLI(t, raw, "decode", "--pcap", "-")
	if r.code != exitOK || r.err != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.err)
	}
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, "handshake ") {
			text = append(text, l)
		}
	}
	r = runDecodeCLI(t, raw, "decode", "--json", "--pcap", "-")
	prefix := `{"version":` + jsonString(t, version) + `,"kind":"handshake",`
	for _, l := range strings.Split(strings.TrimSuffix(r.out, "\n"), "\n") {
		if strings.HasPrefix(l, prefix) {
			js = append(js, "{"+strings.TrimPrefix(l, prefix))
		} else if !strings.Contains(l, `"message":`) {
			t.Errorf("a record is neither a message nor a handshake: %s", l)
		}
	}
	return text, js
}

func TestDecodePcapHandshake(t *testing.T) {
	ap := netip.MustParseAddrPort
	ms := time.Millisecond
	req := connectRequest(t, "192.0.2.1:80")
	client := capturetest.Conn{Client: ap("10.0.0.2:40000"), Server: ap("10.0.0.1:5124")}
	leg := capturetest.Conn{Client: ap("10.0.1.1:50000"), Server: ap("192.0.2.1:80")}
	const (
		C = capturetest.Client
		S = capturetest.Server
	)
	tests := []struct {
		name  string
		conns []capturetest.Conn
		pkts  []capturetest.Packet
		text  []string
		json  []string // checked when given
	}{{
		name:  "held",
		conns: []capturetest.Conn{client, leg},
		pkts:  []capturetest.Packet{synAt(0, C, 0, req), synAt(1, C, ms/2, nil), synAt(1, S, 300*ms, nil), synAt(0, S, 300*ms+400_000, nil)},
		text: []string{"handshake 10.0.0.2:40000 -> 10.0.0.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN +0.500ms, " +
			"server SYN+ACK +300.000ms, client SYN+ACK +300.400ms (held: the client's SYN+ACK left after the server's)"},
		json: []string{`{"client":"10.0.0.2:40000","converter":"10.0.0.1:5124","destination":"192.0.2.1:80",` +
			`"client_syn":"2025-03-27T10:00:00.000000000Z","server_syn":"2025-03-27T10:00:00.000500000Z",` +
			`"server_synack":"2025-03-27T10:00:00.300000000Z","client_synack":"2025-03-27T10:00:00.300400000Z","held":true}`},
	}, {
		name:  "not held",
		conns: []capturetest.Conn{client, leg},
		pkts:  []capturetest.Packet{synAt(0, C, 0, req), synAt(1, C, ms/2, nil), synAt(0, S, ms, nil), synAt(1, S, 300*ms, nil)},
		text: []string{"handshake 10.0.0.2:40000 -> 10.0.0.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN +0.500ms, " +
			"server SYN+ACK +300.000ms, client SYN+ACK +1.000ms (not held: the client's SYN+ACK left before the server's)"},
		json: []string{`{"client":"10.0.0.2:40000","converter":"10.0.0.1:5124","destination":"192.0.2.1:80",` +
			`"client_syn":"2025-03-27T10:00:00.000000000Z","server_syn":"2025-03-27T10:00:00.000500000Z",` +
			`"server_synack":"2025-03-27T10:00:00.300000000Z","client_synack":"2025-03-27T10:00:00.001000000Z","held":false}`},
	}, {
		// A connection to the destination opened before the Client's SYN,
		// and one to another port after it, are not its leg.
		name: "missing server leg",
		conns: []capturetest.Conn{leg, client,
			{Client: ap("10.0.1.1:50001"), Server: ap("192.0.2.1:81")}},
		pkts: []capturetest.Packet{synAt(0, C, 0, nil), synAt(0, S, ms, nil), synAt(1, C, 2*ms, req),
			synAt(2, C, 3*ms, nil), synAt(2, S, 4*ms, nil), synAt(1, S, 5*ms, nil)},
		text: []string{"handshake 10.0.0.2:40000 -> 10.0.0.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN not captured, " +
			"server SYN+ACK not captured, client SYN+ACK +3.000ms (not held: the server's SYN+ACK was not captured)"},
		json: []string{`{"client":"10.0.0.2:40000","converter":"10.0.0.1:5124","destination":"192.0.2.1:80",` +
			`"client_syn":"2025-03-27T10:00:00.002000000Z","server_syn":null,"server_synack":null,` +
			`"client_synack":"2025-03-27T10:00:00.005000000Z","held":false}`},
	}, {
		// The server refused the leg (a RST): no SYN+ACK on either side.
		name:  "refused",
		conns: []capturetest.Conn{client, leg},
		pkts: []capturetest.Packet{synAt(0, C, 0, req), synAt(1, C, ms, nil),
			{Conn: 1, From: S, At: 2 * ms, Flags: "RA", Ack: 1001}, {Conn: 0, From: S, At: 3 * ms, Flags: "RA", Ack: 1025}},
		text: []string{"handshake 10.0.0.2:40000 -> 10.0.0.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN +1.000ms, " +
			"server SYN+ACK not captured, client SYN+ACK not captured (not held: the client's SYN+ACK was not captured)"},
	}, {
		// Two Clients of one destination: the legs go to them in the
		// order of their SYNs. The second is answered at the very time its
		// server answered, which is held.
		name: "concurrent",
		conns: []capturetest.Conn{client, {Client: ap("10.0.0.3:40001"), Server: ap("10.0.0.1:5124")},
			leg, {Client: ap("10.0.1.1:50002"), Server: ap("192.0.2.1:80")}},
		pkts: []capturetest.Packet{synAt(0, C, 0, req), synAt(1, C, ms/10, req), synAt(2, C, ms/2, nil), synAt(3, C, 6*ms/10, nil),
			synAt(3, S, 100*ms, nil), synAt(1, S, 100*ms, nil), synAt(2, S, 200*ms, nil), synAt(0, S, 200*ms+300_000, nil)},
		text: []string{
			"handshake 10.0.0.2:40000 -> 10.0.0.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN +0.500ms, " +
				"server SYN+ACK +200.000ms, client SYN+ACK +200.300ms (held: the client's SYN+ACK left after the server's)",
			"handshake 10.0.0.3:40001 -> 10.0.0.1:5124 via 192.0.2.1:80: client SYN +0, server-leg SYN +0.500ms, " +
				"server SYN+ACK +99.900ms, client SYN+ACK +99.900ms (held: the client's SYN+ACK left after the server's)",
		},
	}, {
		name: "ipv6",
		conns: []capturetest.Conn{{Client: ap("[2001:db8::2]:40000"), Server: ap("[2001:db8::1]:5124")},
			{Client: ap("[2001:db8::1]:50000"), Server: ap("[2001:db8:1::1]:443")}},
		pkts: []capturetest.Packet{synAt(0, C, 0, connectRequest(t, "[2001:db8:1::1]:443")), synAt(1, C, ms/2, nil),
			synAt(1, S, 30*ms, nil), synAt(0, S, 30*ms+100_000, nil)},
		text: []string{"handshake [2001:db8::2]:40000 -> [2001:db8::1]:5124 via [2001:db8:1::1]:443: client SYN +0, server-leg SYN +0.500ms, " +
			"server SYN+ACK +30.000ms, client SYN+ACK +30.100ms (held: the client's SYN+ACK left after the server's)"},
		json: []string{`{"client":"[2001:db8::2]:40000","converter":"[2001:db8::1]:5124","destination":"[2001:db8:1::1]:443",` +
			`"client_syn":"2025-03-27T10:00:00.000000000Z","server_syn":"2025-03-27T10:00:00.000500000Z",` +
			`"server_synack":"2025-03-27T10:00:00.030000000Z","client_synack":"2025-03-27T10:00:00.030100000Z","held":true}`},
	}, {
		// Transparent mode: the Clients address the destination, which
		// the converter answers as; it opens the legs from the first
		// Client's address (preserve). The second Client's SYN comes
		// before the first leg but is not a leg.
		name: "transparent",
		conns: []capturetest.Conn{{Client: ap("10.0.0.2:40000"), Server: ap("192.0.2.1:80")},
			{Client: ap("10.0.0.3:40001"), Server: ap("192.0.2.1:80")},
			{Client: ap("10.0.0.2:50000"), Server: ap("192.0.2.1:80")},
			{Client: ap("10.0.0.3:50001"), Server: ap("192.0.2.1:80")}},
		pkts: []capturetest.Packet{synAt(0, C, 0, req), synAt(1, C, ms/10, req), synAt(2, C, ms/2, nil), synAt(3, C, ms, nil),
			synAt(2, S, 10*ms, nil), synAt(0, S, 10*ms+100_000, nil), synAt(3, S, 20*ms, nil), synAt(1, S, 20*ms+100_000, nil)},
		text: []string{
			"handshake 10.0.0.2:40000 -> 192.0.2.1:80 via 192.0.2.1:80: client SYN +0, server-leg SYN +0.500ms, " +
				"server SYN+ACK +10.000ms, client SYN+ACK +10.100ms (held: the client's SYN+ACK left after the server's)",
			"handshake 10.0.0.3:40001 -> 192.0.2.1:80 via 192.0.2.1:80: client SYN +0, server-leg SYN +0.900ms, " +
				"server SYN+ACK +19.900ms, client SYN+ACK +20.000ms (held: the client's SYN+ACK left after the server's)",
		},
		json: []string{
			`{"client":"10.0.0.2:40000","converter":"192.0.2.1:80","destination":"192.0.2.1:80",` +
				`"client_syn":"2025-03-27T10:00:00.000000000Z","server_syn":"2025-03-27T10:00:00.000500000Z",` +
				`"server_synack":"2025-03-27T10:00:00.010000000Z","client_synack":"2025-03-27T10:00:00.010100000Z","held":true}`,
			`{"client":"10.0.0.3:40001","converter":"192.0.2.1:80","destination":"192.0.2.1:80",` +
				`"client_syn":"2025-03-27T10:00:00.000100000Z","server_syn":"2025-03-27T10:00:00.001000000Z",` +
				`"server_synack":"2025-03-27T10:00:00.020000000Z","client_synack":"2025-03-27T10:00:00.020100000Z","held":true}`,
		},
	}}
	for _, tt := range tests {
		// tcpdump -i any writes SLL2; the other framings must read the same.
		for _, link := range []uint32{capturetest.LinkSLL2, capturetest.LinkEthernet, capturetest.LinkSLL} {
			t.Run(fmt.Sprintf("%s/link%d", tt.name, link), func(t *testing.T) {
				text, js := handshakeLines(t, capturetest.Capture{Name: tt.name, Link: link, Conns: tt.conns, Packets: tt.pkts})
				if strings.Join(text, "\n") != strings.Join(tt.text, "\n") {
					t.Errorf("text\n%s\nwant\n%s", strings.Join(text, "\n"), strings.Join(tt.text, "\n"))
				}
				if len(js) != len(tt.text) || tt.json != nil && strings.Join(js, "\n") != strings.Join(tt.json, "\n") {
					t.Errorf("JSON\n%s\nwant\n%s", strings.Join(js, "\n"), strings.Join(tt.json, "\n"))
				}
				for i := range min(len(js), len(text)) {
					if held := strings.Contains(js[i], `"held":true`); held != strings.Contains(text[i], "(held:") {
						t.Errorf("record %d: JSON held %v, text %s", i, held, text[i])
					}
				}
			})
		}
	}
}
