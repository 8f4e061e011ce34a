package tlv

import (
	"bytes"
	"errors"
	"github.com/convert-tc/converter/tlv/tlvtest"
	"testing"
)

func seedFuzz(f *testing.F, dir string) {
	for _, v := range tlvtest.Load(f) {
		if v.Dir == dir {
			f.Add(v.Input)
		}
	}
	f.Add(d26())
}

// FuzzParseRequest: no panic, never a read past Total Length, replies that
// fit in 1020 bytes and parse, and byte-exact re-encoding of valid input.
func FuzzParseRequest(f *testing.F) {
	seedFuzz(f, "request")
	f.Fuzz(func(t *testing.T, b []byte) {
		checkParser(t, b, func(in []byte, m *Message) (int, error) {
			return ValidateRequest(in, m, ReferenceOptions)
		})
	})
}

// FuzzParseReply is FuzzParseRequest with the reply rules.
func FuzzParseReply(f *testing.F) {
	seedFuzz(f, "reply")
	f.Fuzz(func(t *testing.T, b []byte) {
		checkParser(t, b, ParseReply)
	})
}

func checkParser(t *testing.T, b []byte, parse func([]byte, *Message) (int, error)) {
	var m Message
	n, err := parse(b, &m)
	// Whatever the verdict, nothing past Total Length may influence it:
	// appending garbage must not change the outcome.
	withTail := append(append([]byte{}, b...), 0xde, 0xad, 0xbe, 0xef)
	var m2 Message
	n2, err2 := parse(withTail, &m2)
	var pe *ParseError
	if err != nil {
		if !errors.As(err, &pe) {
			t.Fatalf("error of type %T: %v", err, err)
		}
		if r := pe.AppendReply(nil); len(r) > MaxMessageLen {
			t.Fatalf("reply of %d bytes", len(r))
		} else if len(r) > 0 {
			var rm Message
			if _, rerr := ParseReply(r, &rm); rerr != nil {
				t.Fatalf("reply %x does not parse: %v", r, rerr)
			}
		}
		if !pe.Truncated && (err2 == nil || err2.Error() != err.Error()) {
			t.Fatalf("trailing bytes changed the verdict: %v then %v", err, err2)
		}
		return
	}
	if n > len(b) || n%WordLen != 0 || n != int(m.TotalLength)*WordLen {
		t.Fatalf("length %d for %d input bytes, total length %d", n, len(b), m.TotalLength)
	}
	if err2 != nil || n2 != n {
		t.Fatalf("trailing bytes changed the verdict: ok then %d, %v", n2, err2)
	}
	for _, tl := range m.TLVs() {
		if len(tl.Value) != int(tl.Length)*WordLen-2 {
			t.Fatalf("TLV %v value of %d bytes for length %d", tl.Type, len(tl.Value), tl.Length)
		}
	}
	enc, err := m.Encode()
	if err != nil || !bytes.Equal(enc, b[:n]) {
		t.Fatalf("re-encode = %x, %v; want %x", enc, err, b[:n])
	}
	var again Message
	if n3, err := parse(enc, &again); err != nil || n3 != n {
		t.Fatalf("parse(encode(x)) = %d, %v", n3, err)
	}
}
