package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/convert-tc/converter/capture/capturetest"
	"github.com/convert-tc/converter/dissect"
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
