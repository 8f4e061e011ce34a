package dissect_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/convert-tc/converter/dissect"
	"github.com/convert-tc/converter/tlv/tlvtest"
)

// decodeVector decodes a vector of tlv/testdata/vectors.txt in its
// direction.
func decodeVector(t testing.TB, v tlvtest.Vector) *dissect.Message {
	t.Helper()
	return dissect.Decode(v.Input, directionOf(v))
}

func directionOf(v tlvtest.Vector) dissect.Direction {
	if v.Dir == "reply" {
		return dissect.Reply
	}
	return dissect.Request
}

func mustJSON(t testing.TB, m *dissect.Message) string {
	t.Helper()
	b, err := m.JSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestJSON(t *testing.T) {
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
			m := decodeVector(t, tlvtest.ByID(t, id))
			if got := mustJSON(t, m); got != want {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
			// MarshalJSON nests the same object in other values.
			nested, err := json.Marshal(struct {
				M *dissect.Message `json:"m"`
			}{m})
			if err != nil || string(nested) != `{"m":`+want+`}` {
				t.Fatalf("nested: %s, %v", nested, err)
			}
		})
	}
}

// A zero at the end of the last option of an Extended TCP Header (Window
// Scale 0) is option data, not padding.
func TestJSONExtendedHeaderTrailingZero(t *testing.T) {
	b, _ := hex.DecodeString("0104226314030000020405b401030300")
	m := dissect.Decode(b, dissect.Reply)
	want := `{"version":1,"total_length":4,"tlvs":[{"type":20,"name":"Extended TCP Header","length":3,"options":` +
		`[{"kind":2,"data":"05b4"},{"kind":1,"data":""},{"kind":3,"data":"00"}]}],"trailing_bytes":0}`
	if got := mustJSON(t, m); m.Err() != nil || got != want {
		t.Fatalf("error %v, got %s want %s", m.Err(), got, want)
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		id      string
		refused bool
		lines   []string // the whole output
	}{
		{"A7", false, []string{
			"Convert v1, total length 7 words (28 bytes)",
			"  Info (1)",
			"  Connect (10), 5 words: 203.0.113.5:443",
		}},
		{"A2", false, []string{
			"Convert v1, total length 6 words (24 bytes)",
			"  Connect (10), 5 words: 192.0.2.1:80",
			"  trailing bytes: 37",
		}},
		{"A3", false, []string{
			"Convert v1, total length 7 words (28 bytes)",
			"  Connect (10), 6 words: [2001:db8::1]:443 options: MPTCP(30)",
		}},
		{"B8", false, []string{
			"Convert v1, total length 9 words (36 bytes)",
			"  Supported TCP Extensions (21): SACK-Permitted(4) Timestamps(8) MPTCP(30)",
			"  Extended TCP Header (20), 6 words: MSS(2)=05b4 SACK-Permitted(4) Timestamps(8)=1122334455667788 NOP(1) Window Scale(3)=07",
		}},
		{"C32", false, []string{
			"Convert v1, total length 2 words (8 bytes)",
			"  Error (30): Not Authorized (32) value 00",
		}},
		{"D3", true, []string{
			"Convert v1, total length 2 words (8 bytes)",
			"  refused: Malformed Message (1): Connect TLV with length 0",
		}},
		{"D9", true, []string{
			"Convert v1, total length 0 words (0 bytes)",
			"  refused: reset (no Error TLV): total length 0",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			m := decodeVector(t, tlvtest.ByID(t, tt.id))
			want := strings.Join(tt.lines, "\n") + "\n"
			if got := m.Text(); (m.Err() != nil) != tt.refused || got != want {
				t.Fatalf("error %v, output\n%s\nwant refused %v, output\n%s", m.Err(), got, tt.refused, want)
			}
		})
	}
}

// Incomplete tells a message cut short, which more bytes can decide, from
// one refused for what it holds.
func TestIncomplete(t *testing.T) {
	a1 := tlvtest.ByID(t, "A1").Input
	d3 := tlvtest.ByID(t, "D3").Input
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"no bytes", nil, true},
		{"short header", a1[:3], true},
		{"short message", a1[:20], true},
		{"whole message", a1, false},
		{"malformed", d3, false},
	}
	for _, tt := range tests {
		if got := dissect.Decode(tt.b, dissect.Request).Incomplete(); got != tt.want {
			t.Errorf("%s: Incomplete %v, want %v", tt.name, got, tt.want)
		}
	}
}

// refusalOut is the part of the JSON message the fuzz target checks.
type refusalOut struct {
	Error *struct {
		Code int `json:"code"`
	} `json:"error"`
}

func FuzzDecode(f *testing.F) {
	for _, v := range tlvtest.Load(f) {
		f.Add(bytes.Clone(v.Input), v.Dir == "reply")
	}
	f.Fuzz(func(t *testing.T, b []byte, reply bool) {
		dir := dissect.Request
		if reply {
			dir = dissect.Reply
		}
		m := dissect.Decode(b, dir)
		js, err := m.JSON()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(js, []byte("\n")) || !json.Valid(js) {
			t.Fatalf("not one JSON line: %q", js)
		}
		var out refusalOut
		if err := json.Unmarshal(js, &out); err != nil || (out.Error != nil) != (m.Err() != nil) {
			t.Fatalf("error %v with %s (%v)", m.Err(), js, err)
		}
		if text := m.Text(); !strings.HasPrefix(text, "Convert") || !strings.HasSuffix(text, "\n") {
			t.Fatalf("text output %q", text)
		}
		if n := m.TrailingBytes(); n < 0 || n > len(b) {
			t.Fatalf("%d trailing bytes of %d", n, len(b))
		}
	})
}
