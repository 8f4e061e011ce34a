package cookie

import (
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

var (
	keyA = []byte("0123456789abcdef0123456789abcdef")
	keyB = []byte("fedcba9876543210fedcba9876543210")
)

func TestBoundToAddress(t *testing.T) {
	k, err := New(keyA, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	c := k.Make(a)
	if len(c) != Len {
		t.Fatalf("cookie of %d bytes", len(c))
	}
	if !k.Valid(a, c) {
		t.Fatal("cookie refused for its own address")
	}
	if k.Valid(b, c) {
		t.Fatal("cookie accepted from another address")
	}
	if !k.Valid(netip.MustParseAddr("::ffff:10.0.0.1"), c) {
		t.Fatal("IPv4-mapped form of the same address refused")
	}
	if k.Valid(a, nil) || k.Valid(a, make([]byte, Len)) {
		t.Fatal("empty or zero cookie accepted")
	}
	if !k.Valid(a, append(c, 0, 0, 0, 0)) {
		t.Fatal("cookie with TLV padding refused")
	}
}

func TestRotation(t *testing.T) {
	addr := netip.MustParseAddr("2001:db8::7")
	old, _ := New(keyA, nil)
	c := old.Make(addr)
	rotated, _ := New(keyB, keyA)
	if !rotated.Valid(addr, c) {
		t.Fatal("cookie of the previous key refused after rotation")
	}
	after, _ := New(keyB, nil)
	if after.Valid(addr, c) {
		t.Fatal("cookie of a retired key accepted")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "secret")
	os.WriteFile(p, []byte("# rotation\n"+hex.EncodeToString(keyB)+"\n"+hex.EncodeToString(keyA)+"\n"), 0o600)
	k, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.1.1.1")
	old, _ := New(keyA, nil)
	if !k.Valid(addr, old.Make(addr)) {
		t.Fatal("previous key from file not accepted")
	}
	for _, bad := range []string{"", "zz\n", "0011\n", "a\nb\nc\n"} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := Load(p); err == nil {
			t.Errorf("Load(%q) accepted", bad)
		}
	}
}
