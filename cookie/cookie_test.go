package cookie

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	keyA = []byte("0123456789abcdef0123456789abcdef")
	keyB = []byte("fedcba9876543210fedcba9876543210")
)

// clock is an injectable clock, safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func (c *clock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func mustNew(t *testing.T, cur, prev []byte, opts ...Option) *Keys {
	t.Helper()
	k, err := New(cur, prev, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// base is the start of an epoch for a lifetime of an hour or a day.
var base = time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)

func TestBoundToAddress(t *testing.T) {
	k := mustNew(t, keyA, nil)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	c := k.Make(a)
	if len(c) != Len || Len%4 != 0 {
		t.Fatalf("cookie of %d bytes", len(c))
	}
	if !k.Valid(a, c) {
		t.Fatal("cookie refused for its own address")
	}
	if k.Valid(b, c) {
		t.Fatal("cookie accepted from another address")
	}
	if k.Valid(netip.MustParseAddr("::ffff:10.0.0.2"), c) {
		t.Fatal("cookie accepted from another address, IPv4-mapped")
	}
	if !k.Valid(netip.MustParseAddr("::ffff:10.0.0.1"), c) {
		t.Fatal("IPv4-mapped form of the same address refused")
	}
	if k.Valid(a, nil) || k.Valid(a, make([]byte, Len)) {
		t.Fatal("empty or zero cookie accepted")
	}
	if !k.Valid(a, append(bytes.Clone(c), 0, 0, 0, 0)) {
		t.Fatal("cookie with TLV padding refused")
	}
	if k.Valid(a, append(bytes.Clone(c), 1)) || k.Valid(a, c[:Len-1]) && c[Len-1] != 0 {
		t.Fatal("cookie of the wrong length accepted")
	}
	for i := range c { // every bit counts
		for bit := range 8 {
			d := bytes.Clone(c)
			d[i] ^= 1 << bit
			if k.Valid(a, d) {
				t.Fatalf("cookie with byte %d bit %d flipped accepted", i, bit)
			}
		}
	}
}

// A cookie whose MAC ends in zeros loses them to the TLV padding (the
// parser trims them); it must still be accepted.
func TestTrailingZerosOfTheMAC(t *testing.T) {
	k := mustNew(t, keyA, nil, WithClock(newClock(base).Now))
	for i := range 100000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		c := k.Make(a)
		if c[Len-1] != 0 {
			continue
		}
		if !k.Valid(a, bytes.TrimRight(c, "\x00")) {
			t.Fatalf("cookie %x refused once its trailing zeros were trimmed", c)
		}
		return
	}
	t.Skip("no cookie ending in a zero byte among the addresses tried")
}

func TestRotation(t *testing.T) {
	addr := netip.MustParseAddr("2001:db8::7")
	clk := newClock(base)
	old := mustNew(t, keyA, nil, WithClock(clk.Now))
	c := old.Make(addr)
	rotated := mustNew(t, keyB, keyA, WithClock(clk.Now))
	if !rotated.Valid(addr, c) {
		t.Fatal("cookie of the previous key refused after rotation")
	}
	if !bytes.Equal(rotated.Make(addr), mustNew(t, keyB, nil, WithClock(clk.Now)).Make(addr)) {
		t.Fatal("cookies not made with the current key")
	}
	after := mustNew(t, keyB, nil, WithClock(clk.Now))
	if after.Valid(addr, c) {
		t.Fatal("cookie of a retired key accepted")
	}
}

func TestExpiry(t *testing.T) {
	addr := netip.MustParseAddr("192.0.2.33")
	for _, lifetime := range []time.Duration{time.Hour, DefaultLifetime} {
		t.Run(lifetime.String(), func(t *testing.T) {
			clk := newClock(base)
			k := mustNew(t, keyA, nil, WithLifetime(lifetime), WithClock(clk.Now))
			if k.Lifetime() != lifetime {
				t.Fatalf("lifetime %v", k.Lifetime())
			}
			// Made at the very start of an epoch: valid for two lifetimes.
			c := k.Make(addr)
			clk.Advance(2*lifetime - time.Nanosecond)
			if !k.Valid(addr, c) {
				t.Fatal("refused before two lifetimes")
			}
			clk.Advance(time.Nanosecond)
			if k.Valid(addr, c) {
				t.Fatal("accepted after two lifetimes")
			}
			clk.Advance(100 * lifetime)
			if k.Valid(addr, c) {
				t.Fatal("accepted long after")
			}
		})
	}
}

// A cookie made just before an epoch boundary lives at least one more
// lifetime.
func TestAcrossOneBoundary(t *testing.T) {
	addr := netip.MustParseAddr("2001:db8::1")
	const lifetime = time.Hour
	clk := newClock(base.Add(lifetime - time.Nanosecond))
	k := mustNew(t, keyA, nil, WithLifetime(lifetime), WithClock(clk.Now))
	c := k.Make(addr)
	clk.Advance(time.Nanosecond) // across the boundary
	if !k.Valid(addr, c) {
		t.Fatal("refused just after the boundary")
	}
	if bytes.Equal(c, k.Make(addr)) {
		t.Fatal("same cookie in two epochs")
	}
	clk.Advance(lifetime - time.Nanosecond) // one lifetime after it was made
	if !k.Valid(addr, c) {
		t.Fatal("refused less than one lifetime after it was made")
	}
	clk.Advance(time.Nanosecond)
	if k.Valid(addr, c) {
		t.Fatal("accepted in the second epoch after its own")
	}
}

func TestFutureEpochRefused(t *testing.T) {
	addr := netip.MustParseAddr("10.0.0.9")
	clk := newClock(base)
	k := mustNew(t, keyA, nil, WithLifetime(time.Hour), WithClock(clk.Now))
	clk.Advance(time.Hour)
	future := k.Make(addr) // a genuine MAC, one epoch ahead
	clk.Advance(-time.Hour)
	if k.Valid(addr, future) {
		t.Fatal("cookie of the next epoch accepted")
	}
	// Rewriting the epoch breaks the MAC.
	c := k.Make(addr)
	binary.BigEndian.PutUint32(c, binary.BigEndian.Uint32(c)-1)
	if k.Valid(addr, c) {
		t.Fatal("cookie with a rewritten epoch accepted")
	}
}

// Changing the lifetime refuses older cookies instead of reading their
// epoch in the new unit.
func TestLifetimeBound(t *testing.T) {
	addr := netip.MustParseAddr("10.0.0.9")
	clk := newClock(base)
	day := mustNew(t, keyA, nil, WithClock(clk.Now))
	hour := mustNew(t, keyA, nil, WithLifetime(time.Hour), WithClock(clk.Now))
	c := day.Make(addr)
	binary.BigEndian.PutUint32(c, hour.epoch(clk.Now()))
	if hour.Valid(addr, c) {
		t.Fatal("cookie of another lifetime accepted")
	}
	if _, err := New(keyA, nil, WithLifetime(time.Second)); !errors.Is(err, ErrBadLifetime) {
		t.Fatalf("lifetime of 1s: %v", err)
	}
}

func writeSecret(t *testing.T, path, text string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "secret")
	writeSecret(t, p, "# rotation\n"+hex.EncodeToString(keyB)+"\n"+hex.EncodeToString(keyA)+"\n", 0o600)
	clk := newClock(base)
	k, err := Load(p, WithClock(clk.Now), WithLifetime(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.1.1.1")
	old := mustNew(t, keyA, nil, WithClock(clk.Now), WithLifetime(time.Hour))
	if !k.Valid(addr, old.Make(addr)) {
		t.Fatal("previous key from file not accepted")
	}
	for _, bad := range []string{"", "zz\n", "0011\n", "a\nb\nc\n"} {
		writeSecret(t, p, bad, 0o600)
		if _, err := Load(p); err == nil {
			t.Errorf("Load(%q) accepted", bad)
		}
	}
	if _, err := Load(dir); err == nil {
		t.Error("directory accepted as a secret file")
	}
}

func TestLooseModeRefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	text := hex.EncodeToString(keyA) + "\n"
	for _, mode := range []os.FileMode{0o400, 0o600, 0o700} {
		writeSecret(t, p, text, mode)
		if _, err := Load(p); err != nil {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o602, 0o620, 0o610, 0o601, 0o666} {
		writeSecret(t, p, text, mode)
		_, err := Load(p)
		if !errors.Is(err, ErrLooseMode) {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, p) || !strings.Contains(msg, fmt.Sprintf("%04o", mode)) || !strings.Contains(msg, "chmod 600 "+p) {
			t.Errorf("mode %04o: unclear error %q", mode, msg)
		}
		k := mustNew(t, keyA, nil)
		if err := k.Reload(p); !errors.Is(err, ErrLooseMode) {
			t.Errorf("Reload with mode %04o: %v", mode, err)
		}
	}
}

func TestReload(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	writeSecret(t, p, hex.EncodeToString(keyA)+"\n", 0o600)
	clk := newClock(base)
	k, err := Load(p, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.2.2.2")
	cA := k.Make(addr)
	// Rotation, step 1: new key first, old one second.
	writeSecret(t, p, hex.EncodeToString(keyB)+"\n"+hex.EncodeToString(keyA)+"\n", 0o600)
	if err := k.Reload(p); err != nil {
		t.Fatal(err)
	}
	cB := k.Make(addr)
	if bytes.Equal(cA, cB) || !k.Valid(addr, cA) || !k.Valid(addr, cB) {
		t.Fatal("during a rotation both keys must be accepted, the new one used")
	}
	// A bad file keeps the keys in use.
	writeSecret(t, p, "zz\n", 0o600)
	if err := k.Reload(p); err == nil {
		t.Fatal("bad file reloaded")
	}
	if !k.Valid(addr, cA) || !k.Valid(addr, cB) {
		t.Fatal("a failed reload changed the keys")
	}
	// Step 2: the old key retired.
	writeSecret(t, p, hex.EncodeToString(keyB)+"\n", 0o600)
	if err := k.Reload(p); err != nil {
		t.Fatal(err)
	}
	if k.Valid(addr, cA) || !k.Valid(addr, cB) {
		t.Fatal("retired key still accepted")
	}
	if err := k.Swap([]byte("short"), nil); err == nil || !k.Valid(addr, cB) {
		t.Fatalf("short secret swapped in: %v", err)
	}
}

// Verification goes on while the keys are swapped (run with -race): every
// call sees the old pair or the new one, and a cookie of the key present in
// both is always accepted.
func TestReloadWhileVerifying(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	writeSecret(t, p, hex.EncodeToString(keyA)+"\n", 0o600)
	clk := newClock(base)
	k, err := Load(p, WithClock(clk.Now))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.3.3.3")
	cA := k.Make(addr)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			other := netip.AddrFrom4([4]byte{10, 4, 0, byte(g)})
			for !stop.Load() {
				if !k.Valid(addr, cA) {
					errs <- "cookie of the key in every generation refused"
					return
				}
				// Make and Valid may straddle a swap; both keys are in
				// every generation here, so a fresh cookie stays valid.
				if c := k.Make(other); !k.Valid(other, c) {
					errs <- "fresh cookie refused"
					return
				}
			}
		}()
	}
	for i := range 200 {
		text := hex.EncodeToString(keyB) + "\n" + hex.EncodeToString(keyA) + "\n"
		if i%2 == 1 {
			text = hex.EncodeToString(keyA) + "\n" + hex.EncodeToString(keyB) + "\n"
		}
		writeSecret(t, p, text, 0o600)
		if err := k.Reload(p); err != nil {
			t.Error(err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// FuzzValid: no input makes Valid panic, and only what Make gave (give or
// take trailing zeros) is accepted.
func FuzzValid(f *testing.F) {
	k, err := New(keyA, keyB, WithClock(newClock(base).Now))
	if err != nil {
		f.Fatal(err)
	}
	addr := netip.MustParseAddr("10.5.5.5")
	good := k.Make(addr)
	f.Add(good, []byte(addr.AsSlice()))
	f.Add([]byte{}, []byte{})
	f.Add(append(bytes.Clone(good), 0, 0), []byte(netip.MustParseAddr("2001:db8::5").AsSlice()))
	f.Add([]byte("cookie"), []byte{10, 5, 5, 5})
	f.Fuzz(func(t *testing.T, cookie, rawAddr []byte) {
		a, ok := netip.AddrFromSlice(rawAddr)
		if !ok {
			a = addr
		}
		if !k.Valid(a, cookie) {
			return
		}
		want := bytes.TrimRight(k.Make(a), "\x00")
		if !bytes.Equal(bytes.TrimRight(cookie, "\x00"), want) {
			t.Fatalf("Valid(%v, %x) accepted; Make gives %x", a, cookie, want)
		}
	})
}
