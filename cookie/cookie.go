// Package cookie makes and checks Convert cookies (RFC 8803 §6.2.7): a keyed
// MAC over the Client's address, so that a cookie handed to one address is
// worthless from another. Keys rotate: the previous key is still accepted,
// so cookies issued just before a rotation keep working.
package cookie

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// Len is the length of the cookies we issue: a multiple of 4, so that TLV
// padding never hides cookie bytes.
const Len = 16

// MinKeyLen is the shortest secret accepted.
const MinKeyLen = 16

// Keys holds the current secret and, during a rotation, the previous one.
type Keys struct {
	current  []byte
	previous []byte
}

// New returns Keys from a current and an optional previous secret.
func New(current, previous []byte) (*Keys, error) {
	if len(current) < MinKeyLen {
		return nil, fmt.Errorf("cookie secret of %d bytes, want at least %d", len(current), MinKeyLen)
	}
	if previous != nil && len(previous) < MinKeyLen {
		return nil, fmt.Errorf("previous cookie secret of %d bytes, want at least %d", len(previous), MinKeyLen)
	}
	return &Keys{current: bytes.Clone(current), previous: bytes.Clone(previous)}, nil
}

// Load reads a secret file: one hex-encoded secret per line, the current
// one first, then optionally the previous one. Blank lines and lines
// starting with # are skipped.
func Load(path string) (*Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open cookie secret: %w", err)
	}
	defer f.Close()
	var secrets [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("cookie secret %s line %d: not hex: %w", path, len(secrets)+1, err)
		}
		secrets = append(secrets, b)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read cookie secret %s: %w", path, err)
	}
	switch len(secrets) {
	case 0:
		return nil, errors.New("cookie secret file " + path + " holds no secret")
	case 1:
		return New(secrets[0], nil)
	case 2:
		return New(secrets[0], secrets[1])
	}
	return nil, fmt.Errorf("cookie secret file %s holds %d secrets, want 1 or 2", path, len(secrets))
}

// Make returns the cookie for a Client address, under the current key.
func (k *Keys) Make(client netip.Addr) []byte {
	return mac(k.current, client)
}

// Valid reports whether cookie was made for client under the current or
// the previous key. Trailing zero bytes are ignored on both sides: on the
// wire they cannot be told from TLV padding.
func (k *Keys) Valid(client netip.Addr, cookie []byte) bool {
	got := bytes.TrimRight(cookie, "\x00")
	if len(got) == 0 {
		return false
	}
	for _, key := range [][]byte{k.current, k.previous} {
		if key == nil {
			continue
		}
		want := bytes.TrimRight(mac(key, client), "\x00")
		if hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

func mac(key []byte, client netip.Addr) []byte {
	h := hmac.New(sha256.New, key)
	a := client.Unmap().As16() // one form per address, whatever the socket family
	h.Write(a[:])
	return h.Sum(nil)[:Len]
}
