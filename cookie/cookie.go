// Package cookie makes and checks Convert cookies (RFC 8803 §6.2.7): a keyed
// MAC over the Client's address, so that a cookie handed to one address is
// worthless from another.
//
// # Format
//
// A cookie is Len (16) bytes, a multiple of 4 so that TLV padding never
// hides cookie bytes (spec §5.5):
//
//	offset  size  field
//	0       4     epoch, big endian: floor(Unix time / lifetime)
//	4       12    HMAC-SHA256(secret, label | lifetime | epoch | client)[:12]
//
// where client is the 16-byte form of the (unmapped) Client address, so an
// IPv4 Client gets the same cookie whatever the socket family.
//
// # Expiry
//
// A cookie is accepted in the epoch it was made in and in the next one, and
// refused after that or when its epoch lies in the future: it stays valid
// for at least one lifetime (made just before a boundary) and at most two
// (made just after one). The lifetime is part of the MAC, so changing it
// refuses every older cookie instead of reading its epoch in a new unit.
//
// # Keys
//
// Keys hold the current secret and, during a rotation, the previous one:
// cookies are made with the current secret and accepted under either.
// Reload swaps the secrets atomically while Valid runs on other goroutines,
// so a daemon rotates keys on SIGHUP without a restart.
package cookie

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Len is the length of the cookies we issue: a multiple of 4, so that TLV
// padding never hides cookie bytes.
const Len = epochLen + macLen

const (
	epochLen = 4
	macLen   = 12 // 96 bits, as HMAC-SHA-256-96 truncations elsewhere
)

// MinKeyLen is the shortest secret accepted.
const MinKeyLen = 16

// DefaultLifetime is the cookie lifetime unless WithLifetime says
// otherwise; the --cookie-lifetime flag takes its default from it.
const DefaultLifetime = 24 * time.Hour

// MinLifetime is the shortest lifetime accepted: shorter ones would expire
// cookies before a Client could reuse them, and 32-bit epochs of at least
// a minute do not wrap for thousands of years.
const MinLifetime = time.Minute

// macLabel separates our MAC input from any other use of the secret.
const macLabel = "convert-cookie-v1"

// Errors of Load and Reload. Test with errors.Is.
var (
	// ErrLooseMode: the secret file is open to its group or others.
	ErrLooseMode = errors.New("cookie secret file readable or writable by group or others")
	// ErrBadLifetime: the lifetime is shorter than MinLifetime.
	ErrBadLifetime = errors.New("cookie lifetime too short")
)

// Option configures New and Load.
type Option func(*options)

type options struct {
	lifetime time.Duration
	now      func() time.Time
}

// WithLifetime sets the cookie lifetime (default DefaultLifetime, at least
// MinLifetime).
func WithLifetime(d time.Duration) Option { return func(o *options) { o.lifetime = d } }

// WithClock sets the clock (default time.Now); tests inject one.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Keys make and check cookies. Its methods are safe for concurrent use;
// Reload and Swap may run while Make and Valid do.
type Keys struct {
	lifetime time.Duration
	now      func() time.Time
	secrets  atomic.Pointer[secrets]
}

// secrets is one immutable generation of keys: Swap replaces the pointer,
// never the contents, so a Valid call sees either the old pair or the new.
type secrets struct {
	current  []byte
	previous []byte // nil outside a rotation
}

func newSecrets(current, previous []byte) (*secrets, error) {
	if len(current) < MinKeyLen {
		return nil, fmt.Errorf("cookie secret of %d bytes, want at least %d", len(current), MinKeyLen)
	}
	if previous != nil && len(previous) < MinKeyLen {
		return nil, fmt.Errorf("previous cookie secret of %d bytes, want at least %d", len(previous), MinKeyLen)
	}
	return &secrets{current: bytes.Clone(current), previous: bytes.Clone(previous)}, nil
}

// New returns Keys from a current and an optional previous secret.
func New(current, previous []byte, opts ...Option) (*Keys, error) {
	o := options{lifetime: DefaultLifetime, now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	if o.lifetime < MinLifetime {
		return nil, fmt.Errorf("%w: %v, want at least %v", ErrBadLifetime, o.lifetime, MinLifetime)
	}
	if o.now == nil {
		o.now = time.Now
	}
	s, err := newSecrets(current, previous)
	if err != nil {
		return nil, err
	}
	k := &Keys{lifetime: o.lifetime, now: o.now}
	k.secrets.Store(s)
	return k, nil
}

// Load reads a secret file (see ReadFile) and returns Keys from it.
func Load(path string, opts ...Option) (*Keys, error) {
	cur, prev, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return New(cur, prev, opts...)
}

// ReadFile reads a secret file: one hex-encoded secret per line, the
// current one first, then optionally the previous one. Blank lines and
// lines starting with # are skipped. The file must be a regular file that
// neither its group nor others may read or write (mode & 0o077 == 0): the
// secret lets anyone mint cookies for any address.
func ReadFile(path string) (current, previous []byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open cookie secret: %w", err)
	}
	defer f.Close()
	// Check the file we opened, not the name: no race with a chmod or a
	// rename between the check and the read.
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("stat cookie secret %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("cookie secret %s is not a regular file (%v)", path, st.Mode().Type())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, nil, fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrLooseMode, path, perm, path)
	}
	var ss [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil {
			return nil, nil, fmt.Errorf("cookie secret %s secret %d: not hex: %w", path, len(ss)+1, err)
		}
		ss = append(ss, b)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read cookie secret %s: %w", path, err)
	}
	switch len(ss) {
	case 0:
		return nil, nil, errors.New("cookie secret file " + path + " holds no secret")
	case 1:
		return ss[0], nil, nil
	case 2:
		return ss[0], ss[1], nil
	}
	return nil, nil, fmt.Errorf("cookie secret file %s holds %d secrets, want 1 or 2", path, len(ss))
}

// Swap replaces the secrets; Valid calls running meanwhile use either the
// old pair or the new one, never a mix. On error nothing changes.
func (k *Keys) Swap(current, previous []byte) error {
	s, err := newSecrets(current, previous)
	if err != nil {
		return err
	}
	k.secrets.Store(s)
	return nil
}

// Reload reads the secret file again (with the checks of ReadFile) and
// swaps its secrets in. On error the keys in use stay. The daemon calls it
// on SIGHUP: to rotate, write the new secret first and the old one second,
// then, a lifetime or two later, the new one alone.
func (k *Keys) Reload(path string) error {
	cur, prev, err := ReadFile(path)
	if err != nil {
		return err
	}
	return k.Swap(cur, prev)
}

// Lifetime is the cookie lifetime.
func (k *Keys) Lifetime() time.Duration { return k.lifetime }

// epoch is the number of the lifetime-long period holding t.
func (k *Keys) epoch(t time.Time) uint32 {
	return uint32(t.UnixNano() / int64(k.lifetime))
}

// Make returns the cookie for a Client address, under the current key and
// in the current epoch.
func (k *Keys) Make(client netip.Addr) []byte {
	c := make([]byte, Len)
	e := k.epoch(k.now())
	binary.BigEndian.PutUint32(c, e)
	var m [sha256.Size]byte
	copy(c[epochLen:], k.sum(m[:0], hmac.New(sha256.New, k.secrets.Load().current), e, client))
	return c
}

// Valid reports whether cookie was made for client, under the current or
// the previous key, in the current or the previous epoch. Trailing zero
// bytes are ignored on both sides: on the wire they cannot be told from
// TLV padding.
func (k *Keys) Valid(client netip.Addr, cookie []byte) bool {
	got := bytes.TrimRight(cookie, "\x00")
	if len(got) == 0 || len(got) > Len {
		return false
	}
	var c [Len]byte // zeros put back what the padding may have hidden
	copy(c[:], got)
	e := binary.BigEndian.Uint32(c[:])
	now := k.epoch(k.now())
	if e != now && e != now-1 { // older, or in the future
		return false
	}
	s := k.secrets.Load()
	var want [sha256.Size]byte
	for _, key := range [][]byte{s.current, s.previous} {
		if key == nil {
			continue
		}
		m := k.sum(want[:0], hmac.New(sha256.New, key), e, client)
		if hmac.Equal(c[epochLen:], m) {
			return true
		}
	}
	return false
}

// sum appends the truncated MAC of (epoch, client) to b.
func (k *Keys) sum(b []byte, h hash.Hash, epoch uint32, client netip.Addr) []byte {
	var in [len(macLabel) + 8 + 4 + 16]byte
	n := copy(in[:], macLabel)
	binary.BigEndian.PutUint64(in[n:], uint64(k.lifetime))
	binary.BigEndian.PutUint32(in[n+8:], epoch)
	a := client.Unmap().As16() // one form per address, whatever the socket family
	copy(in[n+12:], a[:])
	h.Write(in[:])
	return h.Sum(b)[:len(b)+macLen]
}
