package tlv

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// vector is one line of testdata/vectors.txt.
type vector struct {
	id, dir, expect string
	input, reply    []byte
}

func loadVectors(tb testing.TB) []vector {
	tb.Helper()
	f, err := os.Open("testdata/vectors.txt")
	if err != nil {
		tb.Fatalf("open vectors: %v", err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 5 {
			tb.Fatalf("vector line %q: want 5 fields", line)
		}
		vs = append(vs, vector{id: fs[0], dir: fs[1], expect: fs[2], input: unhex(tb, fs[3]), reply: unhex(tb, fs[4])})
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("read vectors: %v", err)
	}
	return vs
}

func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	if s == "-" {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatalf("hex %q: %v", s, err)
	}
	return b
}

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
	vs := loadVectors(t)
	if len(vs) < 80 {
		t.Fatalf("only %d vectors loaded", len(vs))
	}
	for _, v := range vs {
		t.Run(v.id, func(t *testing.T) {
			var m Message
			var n int
			var err error
			if v.dir == "request" {
				n, err = ValidateRequest(v.input, &m, ReferenceOptions)
			} else {
				n, err = ParseReply(v.input, &m)
			}
			checkOutcome(t, v, n, err)
			if err == nil {
				// A valid message re-encodes to exactly its bytes.
				got, encErr := m.Encode()
				if encErr != nil || !bytes.Equal(got, v.input[:n]) {
					t.Errorf("re-encode = %x, %v; want %x", got, encErr, v.input[:n])
				}
			}
		})
	}
}

func checkOutcome(t *testing.T, v vector, n int, err error) {
	t.Helper()
	var pe *ParseError
	switch {
	case v.expect == "ok" || v.expect == "cookie":
		if err != nil {
			t.Fatalf("want valid, got %v", err)
		}
		if n%WordLen != 0 || n > len(v.input) {
			t.Fatalf("message length %d", n)
		}
	case v.expect == "reset" || v.expect == "abort":
		if !errors.As(err, &pe) || pe.Action.String() != v.expect {
			t.Fatalf("want %s, got %v", v.expect, err)
		}
		if r := pe.AppendReply(nil); len(r) != 0 {
			t.Fatalf("%s must send no reply, got %x", v.expect, r)
		}
	case strings.HasPrefix(v.expect, "error="):
		code, _ := strconv.Atoi(strings.TrimPrefix(v.expect, "error="))
		if !errors.As(err, &pe) || pe.Action != ActionReply || int(pe.Code) != code {
			t.Fatalf("want Error code %d, got %v", code, err)
		}
		if v.reply != nil {
			if got := pe.AppendReply(nil); !bytes.Equal(got, v.reply) {
				t.Fatalf("reply\n got %x\nwant %x", got, v.reply)
			}
		}
		// Every reply we produce is itself a valid reply.
		var r Message
		if _, rerr := ParseReply(pe.AppendReply(nil), &r); rerr != nil {
			t.Fatalf("our reply does not parse: %v", rerr)
		}
	default:
		t.Fatalf("unknown expectation %q", v.expect)
	}
}

func TestCookieVectorReplies(t *testing.T) {
	cookie := unhex(t, "a1b2c3d4e5f60718293a4b5c6d7e8f90")
	for _, v := range loadVectors(t) {
		if v.expect != "cookie" {
			continue
		}
		var want []byte
		if v.id == "D20" {
			want = AppendErrorMessage(nil, CodeMissingCookie, append([]byte{0}, cookie...), nil)
		} else {
			want = AppendErrorMessage(nil, CodeNotAuthorized, nil, nil)
		}
		if !bytes.Equal(want, v.reply) {
			t.Errorf("%s: encoded %x, want %x", v.id, want, v.reply)
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
	want := append(unhex(t, "01ff22631efe0100"), in[:1012]...)
	if !bytes.Equal(r, want) {
		t.Fatalf("reply of %d bytes starts %x, want %d bytes starting %x", len(r), r[:16], len(want), want[:16])
	}
}
