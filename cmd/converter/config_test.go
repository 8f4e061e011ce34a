package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCheck(t *testing.T, args ...string) (code int, out, errs string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(t.Context(), append([]string{"converter", "run", "--check"}, args...), stdio{in: strings.NewReader(""), out: &o, err: &e})
	return code, o.String(), e.String()
}

func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// problemsBesidesKernel drops the kernel lines: the unit tests run in
// whatever namespace the machine has (the namespace test checks a
// prepared one).
func problemsBesidesKernel(errs string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(errs), "\n") {
		if l != "" && !strings.Contains(l, "kernel:") && !strings.Contains(l, "problem(s)") {
			out = append(out, l)
		}
	}
	return out
}

func TestCheckGoodConfig(t *testing.T) {
	secret := writeFile(t, "secret", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 0o600)
	cfg := writeFile(t, "converter.toml", `
listen = ["127.0.0.1:5124", "[::1]:5124"]
allow-destinations = ["10.201.0.0/16"]
deny = ["::ffff:10.9.0.0/112"]
max-sessions = 5000
idle-timeout = "1h"
log-level = "debug"
cookie-secret = "`+secret+`"
cookie-lifetime = "12h"
`, 0o644)
	code, out, errs := runCheck(t, "--config", cfg)
	if p := problemsBesidesKernel(errs); len(p) > 0 {
		t.Fatalf("problems in a good file: %v", p)
	}
	if code == 0 && !strings.Contains(out, "configuration OK") {
		t.Errorf("exit 0 without saying so: %q", out)
	}
}

func TestCheckBadConfig(t *testing.T) {
	secret := writeFile(t, "secret", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 0o644)
	cfg := writeFile(t, "converter.toml", `
listen = ["nonsense"]
deny = ["10.0.0.0/33"]
cookie-secret = "`+secret+`"
no-such-flag = 1
pool = ["192.0.2.0/28"]
tfo-window-clamp = "sometimes"
client-iface = ["no-such-if0"]
`, 0o644)
	code, _, errs := runCheck(t, "--config", cfg)
	if code != 2 {
		t.Errorf("exit %d for an unknown key, want 2 (usage)", code)
	}
	if !strings.Contains(errs, `unknown key "no-such-flag"`) {
		t.Errorf("no word of the unknown key: %s", errs)
	}
	// Without the unknown key, every other problem is listed at once.
	cfg = writeFile(t, "converter2.toml", strings.ReplaceAll(mustRead(t, cfg), "no-such-flag = 1\n", ""), 0o644)
	code, _, errs = runCheck(t, "--config", cfg)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	for _, want := range []string{`--listen "nonsense"`, `--deny "10.0.0.0/33"`, "--cookie-secret", "chmod 600",
		"--pool has no effect with --nat own", "--tfo-window-clamp", "--client-iface no-such-if0"} {
		if !strings.Contains(errs, want) {
			t.Errorf("no problem mentioning %q in:\n%s", want, errs)
		}
	}
}

func TestCommandLineWinsOverConfig(t *testing.T) {
	cfg := writeFile(t, "converter.toml", "listen = [\"nonsense\"]\nnat = \"share\"\n", 0o644)
	// The command line's --listen and --nat replace the file's.
	_, _, errs := runCheck(t, "--config", cfg, "--listen", "127.0.0.1:5124", "--nat", "own")
	if p := problemsBesidesKernel(errs); len(p) > 0 {
		t.Errorf("the file's values were used over the command line's: %v", p)
	}
}

func TestModeProblemsRefuseStart(t *testing.T) {
	var o, e bytes.Buffer
	code := run(t.Context(), []string{"converter", "run", "--port-block", "16"}, stdio{in: strings.NewReader(""), out: &o, err: &e})
	if code != 2 || !strings.Contains(e.String(), "--port-block has no effect") {
		t.Errorf("run with a flag of another mode: exit %d, %q", code, e.String())
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
