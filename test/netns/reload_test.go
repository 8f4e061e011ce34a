package netns

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/tlv"
)

// TestReload: 1,000 sessions are open when SIGHUP brings a new cookie key
// (the old one retired) and a new deny list: no session is lost, and the
// next sessions get the new policy. A configuration with a mistake is
// refused by `converter reload` and the running one stays in force.
func TestReload(t *testing.T) {
	const held = 1000
	e := newEnv(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	writeSecret := func(b byte) []byte {
		k := make([]byte, 32)
		for i := range k {
			k[i] = b
		}
		if err := os.WriteFile(secret, []byte(hex.EncodeToString(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return k
	}
	writeSecret(0xa1)
	cfg := filepath.Join(dir, "converter.toml")
	writeConfig := func(deny string) {
		conf := fmt.Sprintf("cookie-secret = %q\nrate-per-client = 0\nmax-sessions-per-client = 2000\ndeny = [%s]\nallow-destinations = [\"10.201.0.0/16\", \"fd01::/16\"]\n", secret, deny)
		if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(`"10.201.3.77/32"`)
	control := filepath.Join(dir, "control.sock")
	conv := e.startConverter("--config", cfg, "--control", control, "--allow-destinations", "10.201.0.0/16")
	echo(e.listen(e.serverNS(), "10.201.3.2:8077", false))
	echo(e.listen(e.serverNS(), "10.201.3.2:8078", false))
	dest := netip.MustParseAddrPort("10.201.3.2:8077")

	// cookieFor asks without a cookie and takes the one Missing Cookie
	// hands out.
	cookieFor := func() []byte {
		t.Helper()
		_, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, nil)
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != tlv.CodeMissingCookie || len(ce.Value) < 1+cookie.Len {
			t.Fatalf("want Missing Cookie with a cookie, got %v", err)
		}
		return append([]byte{}, ce.Value[1:1+cookie.Len]...)
	}
	oldCookie := cookieFor()
	var conns []*client.Conn
	start := time.Now()
	for i := range held {
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: i%2 == 0, Cookie: oldCookie}, nil)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	t.Logf("%d sessions open in %v", held, time.Since(start).Round(time.Millisecond))

	// New key, old one retired; the server itself on the deny list's
	// second port.
	writeSecret(0xb2)
	writeConfig(`"10.201.3.77/32", "10.201.3.2/32"`)
	conv.cmd.Process.Signal(syscall.SIGHUP)
	conv.waitRecords(t, "reloaded", 1)

	lost := 0
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte(fmt.Sprintf("still here %d\n", i))
		if _, err := c.Write(msg); err != nil {
			lost++
			continue
		}
		got := make([]byte, len(msg))
		if _, err := ioReadFull(c, got); err != nil || string(got) != string(msg) {
			lost++
		}
	}
	t.Logf("after the reload: %d of %d sessions lost", lost, held)
	if lost != 0 {
		t.Errorf("%d sessions lost across the reload", lost)
	}
	// The next sessions: the old cookie is refused, a new one is handed
	// out, and with it the server is now denied.
	_, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true, Cookie: oldCookie}, nil)
	if ce := (*client.Error)(nil); !errors.As(err, &ce) || ce.Code != tlv.CodeNotAuthorized {
		t.Errorf("old cookie after the key change: %v, want Not Authorized", err)
	}
	newCookie := cookieFor()
	_, err = e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8078"), MPTCP: true, Cookie: newCookie}, nil)
	if ce := (*client.Error)(nil); !errors.As(err, &ce) || ce.Code != tlv.CodeNotAuthorized {
		t.Errorf("a newly denied destination after the reload: %v, want Not Authorized", err)
	}

	// A mistake in the file: refused, the policy in force stays.
	os.WriteFile(cfg, []byte(fmt.Sprintf("cookie-secret = %q\ndeny = [\"10.0.0.0/33\"]\n", secret)), 0o644)
	out, err := exec.Command(converterBin, "reload", "--control", control).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "10.0.0.0/33") {
		t.Errorf("reload of a broken file: %v\n%s", err, out)
	}
	_, err = e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8078"), MPTCP: true, Cookie: newCookie}, nil)
	if ce := (*client.Error)(nil); !errors.As(err, &ce) || ce.Code != tlv.CodeNotAuthorized {
		t.Errorf("after a refused reload the deny list changed: %v", err)
	}
	for _, c := range conns {
		c.Close()
	}
}

func ioReadFull(c *client.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
