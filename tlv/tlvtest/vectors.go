// Package tlvtest reads the protocol's test vectors (tlv/testdata/vectors.txt)
// for the tests of every package that speaks the Convert protocol.
package tlvtest

import (
	"bufio"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Vector is one line of the file: id direction expect input reply.
type Vector struct {
	ID, Dir, Expect string
	Input, Reply    []byte // nil where the file says "-"
	InputHex        string // the input as written ("" for none)
}

// Path is the vector file, found from this source file so that tests in
// any package can read it.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "vectors.txt")
}

// Load reads every vector, failing tb on a malformed file.
func Load(tb testing.TB) []Vector {
	tb.Helper()
	f, err := os.Open(Path())
	if err != nil {
		tb.Fatalf("open vectors: %v", err)
	}
	defer f.Close()
	var vs []Vector
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
		v := Vector{ID: fs[0], Dir: fs[1], Expect: fs[2], Input: unhex(tb, fs[3]), Reply: unhex(tb, fs[4])}
		if fs[3] != "-" {
			v.InputHex = fs[3]
		}
		vs = append(vs, v)
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("read vectors: %v", err)
	}
	if len(vs) < 80 {
		tb.Fatalf("only %d vectors loaded", len(vs))
	}
	return vs
}

// ByID returns one vector.
func ByID(tb testing.TB, id string) Vector {
	tb.Helper()
	for _, v := range Load(tb) {
		if v.ID == id {
			return v
		}
	}
	tb.Fatalf("no vector %s", id)
	return Vector{}
}

func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	if s == "-" {
		return nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		tb.Fatalf("vector hex %q: %v", s, err)
	}
	return b
}
