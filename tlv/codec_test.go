package tlv

import (
	"bytes"
	"errors"
	"github.com/convert-tc/converter/tlv/tlvtest"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func vectorByID(t testing.TB, id string) []byte {
	t.Helper()
	return tlvtest.ByID(t, id).Input
}

func TestDecodedFields(t *testing.T) {
	tests := []struct {
		id      string
		n       int
		dest    string
		options []byte
		info    bool
		cookie  []byte
	}{
		{id: "A1", n: 24, dest: "192.0.2.1:80"},
		{id: "A2", n: 24, dest: "192.0.2.1:80"},
		{id: "A3", n: 28, dest: "[2001:db8::1]:443", options: []byte{0x1e, 2, 0, 0}},
		{id: "A4", n: 28, dest: "[2001:db8:1::20]:8080", options: []byte{4, 2, 8, 2}},
		{id: "A5", n: 32, dest: "198.51.100.7:443", options: []byte{0x1e, 2, 4, 2, 8, 2, 0, 0}},
		{id: "A6", n: 8, info: true},
		{id: "A7", n: 28, dest: "203.0.113.5:443", info: true},
		{id: "A8", n: 44, dest: "192.0.2.1:80", cookie: []byte{0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90}},
		{id: "A9", n: 44, dest: "192.0.2.1:80", cookie: []byte{0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90}},
		{id: "A10", n: 36, dest: "192.0.2.1:80", cookie: []byte("cookie")},
		{id: "E1", n: 24, dest: "[::1:5ee:bad:c0de]:12345"},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			var m Message
			n, err := ValidateRequest(vectorByID(t, tt.id), &m, ReferenceOptions)
			if err != nil || n != tt.n {
				t.Fatalf("ValidateRequest = %d, %v; want %d", n, err, tt.n)
			}
			c, ok := m.Connect()
			if got := ok && c.AddrPort().String() == tt.dest; tt.dest != "" && !got {
				t.Errorf("destination = %v (present %v), want %s", c.AddrPort(), ok, tt.dest)
			}
			if tt.dest == "" && ok {
				t.Errorf("unexpected Connect %v", c.AddrPort())
			}
			if !bytes.Equal(c.Options, tt.options) {
				t.Errorf("options = %x, want %x", c.Options, tt.options)
			}
			if m.Info() != tt.info {
				t.Errorf("info = %v", m.Info())
			}
			if ck, _ := m.Cookie(); !bytes.Equal(ck, tt.cookie) {
				t.Errorf("cookie = %x, want %x", ck, tt.cookie)
			}
		})
	}
}

func TestIPv4DecodesUnmapped(t *testing.T) {
	var m Message
	if _, err := ParseRequest(vectorByID(t, "A1"), &m); err != nil {
		t.Fatal(err)
	}
	c, _ := m.Connect()
	if !c.Addr.Is4() {
		t.Fatalf("IPv4-mapped destination decoded as %v, want a plain IPv4 address", c.Addr)
	}
}

func TestConnectOptionsWalk(t *testing.T) {
	var m Message
	if _, err := ParseRequest(vectorByID(t, "A11"), &m); err != nil {
		t.Fatal(err)
	}
	c, _ := m.Connect()
	var kinds []uint8
	for o := range c.ConnectOptions() {
		kinds = append(kinds, o.Kind)
	}
	if !slices.Equal(kinds, []uint8{2, 3, 5}) {
		t.Fatalf("kinds = %v, want MSS, WS, SACK", kinds)
	}
}

func TestReplyAccessors(t *testing.T) {
	var m Message
	if _, err := ParseReply(vectorByID(t, "B8"), &m); err != nil {
		t.Fatal(err)
	}
	kinds, _ := m.SupportedTCPExtensions()
	if !bytes.Equal(kinds, ReferenceSupportedKinds()) {
		t.Errorf("kinds = %x", kinds)
	}
	opts, _ := m.ExtendedTCPHeader()
	var got []uint8
	for o := range HeaderOptions(opts) {
		got = append(got, o.Kind)
	}
	if !slices.Equal(got, []uint8{2, 4, 8, 1, 3}) {
		t.Errorf("SYN+ACK option kinds = %v", got)
	}
	// A window scale of 0 ends in a zero byte that is not padding.
	m.Reset()
	m.Add(ExtendedTCPHeaderTLV([]byte{1, 3, 3, 0}))
	b, _ := m.Encode()
	if _, err := ParseReply(b, &m); err != nil {
		t.Fatal(err)
	}
	opts, _ = m.ExtendedTCPHeader()
	var ws []TCPOption
	for o := range HeaderOptions(opts) {
		ws = append(ws, o)
	}
	if len(ws) != 2 || ws[1].Kind != OptWindowScale || !bytes.Equal(ws[1].Data, []byte{0}) {
		t.Errorf("window scale 0 lost: %+v", ws)
	}
	if _, err := ParseReply(vectorByID(t, "C3"), &m); err != nil {
		t.Fatal(err)
	}
	e, _ := m.Error()
	if e.Code != CodeMissingCookie || len(e.MissingCookie()) != 16 {
		t.Errorf("error = %v cookie %x", e.Code, e.MissingCookie())
	}
	if _, err := ParseReply(vectorByID(t, "C64b"), &m); err != nil {
		t.Fatal(err)
	}
	if e, _ := m.Error(); e.Backoff() != 60 {
		t.Errorf("backoff = %d", e.Backoff())
	}
}

// TestRoundTrip: parse(encode(x)) == x for valid values of every TLV.
func TestRoundTrip(t *testing.T) {
	connect4 := Connect{Port: 443, Addr: netip.MustParseAddr("198.51.100.7")}
	connect6 := Connect{Port: 8080, Addr: netip.MustParseAddr("2001:db8::1"), Options: []byte{0x1e, 2, 4, 2}}
	requests := [][]TLV{
		{ConnectTLV(connect4)},
		{ConnectTLV(connect6)},
		{InfoTLV()},
		{InfoTLV(), ConnectTLV(connect4), CookieTLV([]byte("0123456789abcdef"))},
		{CookieTLV([]byte{1, 2, 3, 4}), ConnectTLV(connect6)},
	}
	for i, tlvs := range requests {
		roundTrip(t, i, tlvs, ParseRequest)
	}
	replies := [][]TLV{
		{},
		{ExtendedTCPHeaderTLV([]byte{2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 3, 7})},
		{SupportedTCPExtensionsTLV(ReferenceSupportedKinds()), ExtendedTCPHeaderTLV(nil)},
		{ErrorTLVOf(CodeResourceExceeded, []byte{30}, nil)},
		{ErrorTLVOf(CodeMalformedMessage, nil, []byte{1, 2, 3})},
	}
	for i, tlvs := range replies {
		roundTrip(t, i, tlvs, ParseReply)
	}
}

func roundTrip(t *testing.T, i int, tlvs []TLV, parse func([]byte, *Message) (int, error)) {
	t.Helper()
	var x Message
	for _, tl := range tlvs {
		if !x.Add(tl) {
			t.Fatalf("case %d: Add(%v) refused", i, tl.Type)
		}
	}
	b, err := x.Encode()
	if err != nil {
		t.Fatalf("case %d: encode: %v", i, err)
	}
	var y Message
	n, err := parse(b, &y)
	if err != nil || n != len(b) {
		t.Fatalf("case %d: parse(%x) = %d, %v", i, b, n, err)
	}
	if !reflect.DeepEqual(normalize(x.TLVs()), normalize(y.TLVs())) || y.TotalLength != uint8(len(b)/4) {
		t.Fatalf("case %d: round trip\n got %+v\nwant %+v", i, y.TLVs(), x.TLVs())
	}
}

// normalize makes nil and empty Values compare equal.
func normalize(ts []TLV) []TLV {
	out := make([]TLV, len(ts))
	for i, t := range ts {
		out[i] = TLV{Type: t.Type, Length: t.Length, Value: append([]byte{}, t.Value...)}
	}
	return out
}

func TestPartialTLVsKeptOnRefusal(t *testing.T) {
	var m Message
	if _, err := ParseRequest(vectorByID(t, "D4"), &m); err == nil {
		t.Fatal("D4 must be refused")
	}
	if len(m.TLVs()) != 1 || m.TLVs()[0].Type != TypeConnect {
		t.Fatalf("TLVs after refusal = %+v, want the Connect decoded before the fault", m.TLVs())
	}
}

func TestAddRefusesDuplicates(t *testing.T) {
	var m Message
	if !m.Add(InfoTLV()) || m.Add(InfoTLV()) {
		t.Fatal("Add must accept one Info TLV and refuse a second")
	}
}

func TestEncodeTooLong(t *testing.T) {
	var m Message
	m.Add(CookieTLV(make([]byte, 1020)))
	if _, err := m.Encode(); err == nil {
		t.Fatal("a message over 1020 bytes must not encode")
	}
}

func TestTruncatedAndEmpty(t *testing.T) {
	var m Message
	_, err := ParseRequest(nil, &m)
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Action != ActionAbort || !pe.Truncated {
		t.Fatalf("empty input: %v", err)
	}
	a2 := vectorByID(t, "A2")
	for cut := 1; cut < 24; cut++ {
		_, err := ParseRequest(a2[:cut], &m)
		if !errors.As(err, &pe) || !pe.Truncated || pe.Code != CodeMalformedMessage {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
}

func TestErrorCodeNames(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range AllErrorCodes {
		name := c.String()
		if seen[name] || name == "" {
			t.Fatalf("code %d name %q", c, name)
		}
		seen[name] = true
	}
	if len(seen) != 10 {
		t.Fatalf("%d codes", len(seen))
	}
}
