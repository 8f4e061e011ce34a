package tlv

import (
	"bytes"
	"errors"
	"github.com/convert-tc/converter/tlv/tlvtest"
	"strconv"
	"strings"
	"testing"
)

// d26 builds vector D26: a maximum-size malformed message whose echo must
// be cut to 1012 bytes.
func d26() []byte {
	b := BeginMessage(nil)
	b = AppendConnect(b, Connect{Port: 80, Addr: mustAddr("192.0.2.1")})
	b = AppendConnect(b, Connect{Port: 80, Addr: mustAddr("192.0.2.2")})
	b = append(b, byte(TypeCookie), 244, 0, 0)
	b = append(b, make([]byte, 972)...)
	b[1] = 255
	return b
}

func TestVectors(t *testing.T) {
	vs := tlvtest.Load(t)
	if len(vs) < 80 {
		t.Fatalf("only %d vectors loaded", len(vs))
	}
	for _, v := range vs {
		t.Run(v.ID, func(t *testing.T) {
			var m Message
			var n int
			var err error
			if v.Dir == "request" {
				n, err = ValidateRequest(v.Input, &m, ReferenceOptions)
			} else {
				n, err = ParseReply(v.Input, &m)
			}
			checkOutcome(t, v, n, err)
			if err == nil {
				// A valid message re-encodes to exactly its bytes.
				got, encErr := m.Encode()
				if encErr != nil || !bytes.Equal(got, v.Input[:n]) {
					t.Errorf("re-encode = %x, %v; want %x", got, encErr, v.Input[:n])
				}
			}
		})
	}
}

func checkOutcome(t *testing.T, v tlvtest.Vector, n int, err error) {
	t.Helper()
	var pe *ParseError
	switch {
	case v.Expect == "ok" || v.Expect == "cookie":
		if err != nil {
			t.Fatalf("want valid, got %v", err)
		}
		if n%WordLen != 0 || n > len(v.Input) {
			t.Fatalf("message length %d", n)
		}
	case v.Expect == "reset" || v.Expect == "abort":
		if !errors.As(err, &pe) || pe.Action.String() != v.Expect {
			t.Fatalf("want %s, got %v", v.Expect, err)
		}
		if r := pe.AppendReply(nil); len(r) != 0 {
			t.Fatalf("%s must send no reply, got %x", v.Expect, r)
		}
	case strings.HasPrefix(v.Expect, "error="):
		code, _ := strconv.Atoi(strings.TrimPrefix(v.Expect, "error="))
		if !errors.As(err, &pe) || pe.Action != ActionReply || int(pe.Code) != code {
			t.Fatalf("want Error code %d, got %v", code, err)
		}
		if v.Reply != nil {
			if got := pe.AppendReply(nil); !bytes.Equal(got, v.Reply) {
				t.Fatalf("reply\n got %x\nwant %x", got, v.Reply)
			}
		}
		// Every reply we produce is itself a valid reply.
		var r Message
		if _, rerr := ParseReply(pe.AppendReply(nil), &r); rerr != nil {
			t.Fatalf("our reply does not parse: %v", rerr)
		}
	default:
		t.Fatalf("unknown expectation %q", v.Expect)
	}
}

func TestCookieVectorReplies(t *testing.T) {
	cookie := mustHex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
	for _, v := range tlvtest.Load(t) {
		if v.Expect != "cookie" {
			continue
		}
		var want []byte
		if v.ID == "D20" {
			want = AppendErrorMessage(nil, CodeMissingCookie, append([]byte{0}, cookie...), nil)
		} else {
			want = AppendErrorMessage(nil, CodeNotAuthorized, nil, nil)
		}
		if !bytes.Equal(want, v.Reply) {
			t.Errorf("%s: encoded %x, want %x", v.ID, want, v.Reply)
		}
	}
}

func TestD26EchoCut(t *testing.T) {
	in := d26()
	if len(in) != MaxMessageLen {
		t.Fatalf("D26 is %d bytes", len(in))
	}
	var m Message
	_, err := ParseRequest(in, &m)
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Code != CodeMalformedMessage {
		t.Fatalf("want Malformed Message, got %v", err)
	}
	r := pe.AppendReply(nil)
	want := append(mustHex("01ff22631efe0100"), in[:1012]...)
	if !bytes.Equal(r, want) {
		t.Fatalf("reply of %d bytes starts %x, want %d bytes starting %x", len(r), r[:16], len(want), want[:16])
	}
}
