package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/session"
)

// cliRun runs the CLI in-process with empty stdin.
func cliRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(t.Context(), append([]string{"converter"}, args...), stdio{in: strings.NewReader(""), out: &out, err: &errb})
	return code, out.String(), errb.String()
}

// checkVersionField checks that out is one JSON object whose "version" is
// the converter's.
func checkVersionField(t *testing.T, out string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	if dec.More() {
		t.Fatalf("output %q: more than one JSON document", out)
	}
	if m["version"] != version {
		t.Errorf("output %q: version %v, want %q", out, m["version"], version)
	}
	return m
}

// An unknown command is a usage error (2), not urfave/cli's 3, which is
// the converter's Error TLV status.
func TestUnknownCommandExit(t *testing.T) {
	for _, args := range [][]string{
		{"frobnicate"},
		{"frobnicate", "--json"},
		{"help", "frobnicate"},
		{"bpf", "frobnicate"},
		{"bpf", "help", "frobnicate"},
		{"lab", "frobnicate"},
	} {
		code, out, errs := cliRun(t, args...)
		if code != exitUsage || out != "" || !strings.Contains(errs, "frobnicate") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and a message naming the command", args, code, out, errs, exitUsage)
		}
	}
	// No command shows the help, as before.
	if code, out, _ := cliRun(t); code != exitOK || !strings.Contains(out, "COMMANDS") {
		t.Errorf("no command: exit %d, stdout %q", code, out)
	}
	if code, out, _ := cliRun(t, "bpf"); code != exitOK || !strings.Contains(out, "status") {
		t.Errorf("bpf: exit %d, stdout %q", code, out)
	}
}

// The binary itself exits 2 for an unknown command.
func TestUnknownCommandExitBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildConverter(t)
	out, err := exec.Command(bin, "frobnicate").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), `unknown command "frobnicate"`) {
		t.Errorf("converter frobnicate: %v, %q; want exit %d", err, out, exitUsage)
	}
}

func TestUnknownFlagExit(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"},
		{"run", "--bogus"},
		{"connect", "--bogus"},
		{"connect", "10.0.0.1:80", "--bogus"},
		{"decode", "--bogus"},
		{"sessions", "--bogus"},
		{"bpf", "status", "--bogus"},
		{"nat", "--bogus"},
		{"bench", "--bogus", "127.0.0.1:1"},
		{"bench", "127.0.0.1:1", "--bogus"},
		{"lab", "status", "--bogus"},
	} {
		code, out, errs := cliRun(t, args...)
		if code != exitUsage || out != "" || !strings.Contains(errs, "unknown flag --bogus") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and \"unknown flag --bogus\"", args, code, out, errs, exitUsage)
		}
	}
}

// Commands that take no arguments refuse them, so that a flag after a
// stray argument is never dropped silently.
func TestNoArgumentCommands(t *testing.T) {
	for _, args := range [][]string{
		{"run", "extra", "--listen", "127.0.0.1:0"},
		{"sessions", "extra"},
		{"bpf", "status", "extra"},
		{"nat", "extra", "--json"},
		{"decode", "extra", "--hex", "00"},
		{"lab", "status", "extra"},
	} {
		code, out, errs := cliRun(t, args...)
		if code != exitUsage || out != "" || !strings.Contains(errs, "extra") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and a message naming the argument", args, code, out, errs, exitUsage)
		}
	}
}

func TestFlagsFirst(t *testing.T) {
	cmds := newApp(stdio{}).Commands
	for _, tc := range []struct{ in, want []string }{
		{[]string{"converter"}, []string{"converter"}},
		{[]string{"converter", "frobnicate", "--x"}, []string{"converter", "frobnicate", "--x"}},
		{[]string{"converter", "connect", "10.0.0.1:80", "--via", "1.2.3.4:5124"},
			[]string{"converter", "connect", "--via", "1.2.3.4:5124", "--", "10.0.0.1:80"}},
		{[]string{"converter", "connect", "--via=1.2.3.4:5124", "10.0.0.1:80", "-v", "--mptcp=false"},
			[]string{"converter", "connect", "--via=1.2.3.4:5124", "-v", "--mptcp=false", "--", "10.0.0.1:80"}},
		// A bool flag takes no value; a value flag takes the next word,
		// whatever it looks like.
		{[]string{"converter", "connect", "10.0.0.1:80", "--info", "--cookie", "-ab"},
			[]string{"converter", "connect", "--info", "--cookie", "-ab", "--", "10.0.0.1:80"}},
		// After "--", everything is an argument.
		{[]string{"converter", "bench", "10.0.0.1:80", "--", "--json"},
			[]string{"converter", "bench", "--", "10.0.0.1:80", "--json"}},
		{[]string{"converter", "bench", "--json", "10.0.0.1:80"},
			[]string{"converter", "bench", "--json", "--", "10.0.0.1:80"}},
		{[]string{"converter", "sessions", "--json"}, []string{"converter", "sessions", "--json"}},
		{[]string{"converter", "bpf", "status", "x", "--json"}, []string{"converter", "bpf", "status", "--json", "--", "x"}},
		{[]string{"converter", "decode", "--pcap", "-", "--json"}, []string{"converter", "decode", "--pcap", "-", "--json"}},
		{[]string{"converter", "lab", "up", "--prefix", "p"}, []string{"converter", "lab", "up", "--prefix", "p"}},
		{[]string{"converter", "--version"}, []string{"converter", "--version"}},
	} {
		if got := flagsFirst(cmds, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("flagsFirst(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Flags after a command's argument are read as if they came first.
func TestFlagsAfterArguments(t *testing.T) {
	// Both flags are read: they exclude each other.
	code, _, errs := cliRun(t, "connect", "10.0.0.1:80", "--transparent", "--via", "1.2.3.4:5124")
	if code != exitUsage || !strings.Contains(errs, "--via and --transparent exclude each other") {
		t.Errorf("connect with flags after HOST:PORT: exit %d, stderr %q", code, errs)
	}
	code, _, errs = cliRun(t, "connect", "10.0.0.1:80", "--via", "nope")
	if code != exitUsage || !strings.Contains(errs, `--via "nope"`) {
		t.Errorf("connect HOST:PORT --via nope: exit %d, stderr %q", code, errs)
	}
	// Nothing listens on port 1: the run fails (1), it is not refused for
	// taking more than HOST:PORT.
	code, _, errs = cliRun(t, "bench", "127.0.0.1:1", "--bytes", "1K", "--timeout", "2s")
	if code != 1 || !strings.Contains(errs, "refused") {
		t.Errorf("bench HOST:PORT --bytes 1K: exit %d, stderr %q; want 1 and connection refused", code, errs)
	}
	addr := benchStartServer(t, "127.0.0.1:0", nil)
	code, out, errs := cliRun(t, "bench", addr, "--mptcp=false", "--bytes", "1M", "--json")
	if code != 0 {
		t.Fatalf("bench HOST:PORT --json: exit %d: %s", code, errs)
	}
	if m := checkVersionField(t, out); m["bytes"] != float64(1<<20) {
		t.Errorf("bench HOST:PORT --bytes 1M --json: %v", m)
	}
}

func TestBuildInfoVersion(t *testing.T) {
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"module version", debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}}}, "v1.2.3"},
		{"pseudo-version", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261129211500-0123456789ab+dirty"}},
			"v0.0.0-20261129211500-0123456789ab+dirty"},
		{"revision", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "false"}}},
			"0123456789ab"},
		{"modified", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}},
			"0123456789ab-dirty"},
		{"nothing", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"empty", debug.BuildInfo{}, "dev"},
	} {
		if got := buildInfoVersion(&tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	code, out, _ := cliRun(t, "--version")
	if code != exitOK || out != "converter version "+version+"\n" {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

// buildConverter builds the command with go build and extra flags.
func buildConverter(t *testing.T, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "converter")
	args := append(append([]string{"build"}, flags...), "-o", bin, ".")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %q: %v\n%s", args, err, out)
	}
	return bin
}

func binaryVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "converter version ")
	if !ok || v == "" {
		t.Fatalf("--version printed %q", out)
	}
	return v
}

// A plain go build tells its version from the build information; the
// Makefile's -ldflags still win.
func TestVersionOfBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if v := binaryVersion(t, buildConverter(t, "-ldflags", "-X main.version=v9.8.7")); v != "v9.8.7" {
		t.Errorf("-ldflags build: version %q, want v9.8.7", v)
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git: a plain build has no VCS information")
	}
	if err := exec.Command("git", "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not in a git work tree")
	}
	bin := buildConverter(t, "-buildvcs=true")
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	v := binaryVersion(t, bin)
	t.Logf("plain build: converter version %s", v)
	if v == devVersion || !strings.Contains(string(out), v[:min(len(v), 12)]) {
		t.Errorf("plain build: version %q; build information:\n%s", v, out)
	}
}

// fakeDaemon serves a control socket like `converter run`'s, with stats
// sources that return the given values, and returns its path.
func fakeDaemon(t *testing.T, stats map[string]any) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	srv := control.New(session.NewTable(10), nil)
	for name, v := range stats {
		srv.Register(name, func() any { return v })
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx, path)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(path); err == nil {
			return path
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("control socket %s did not appear", path)
	return ""
}

// Every --json output that needs no root and no lab carries the version;
// the fields consumers read are where they were.
func TestJSONVersion(t *testing.T) {
	ctl := fakeDaemon(t, map[string]any{
		"bpf": map[string]any{"counters": map[string]uint64{"steered": 3}},
		"nat": map[string]string{"mode": "own"},
	})
	code, out, errs := cliRun(t, "sessions", "--control", ctl, "--json")
	if code != 0 {
		t.Fatalf("sessions --json: exit %d: %s", code, errs)
	}
	if m := checkVersionField(t, out); m["sessions"] == nil {
		t.Errorf("sessions --json: %v", m)
	}
	code, out, errs = cliRun(t, "bpf", "status", "--json", "--control", ctl)
	if code != 0 {
		t.Fatalf("bpf status --json: exit %d: %s", code, errs)
	}
	if m := checkVersionField(t, out); m["counters"].(map[string]any)["steered"] != float64(3) {
		t.Errorf("bpf status --json: %v", m)
	}
	code, out, errs = cliRun(t, "nat", "--control", ctl, "--json")
	if code != 0 {
		t.Fatalf("nat --json: exit %d: %s", code, errs)
	}
	if m := checkVersionField(t, out); m["mode"] != "own" {
		t.Errorf("nat --json: %v", m)
	}
	// The human forms are as they were.
	if code, out, _ := cliRun(t, "nat", "--control", ctl); code != 0 || strings.Contains(out, "version") {
		t.Errorf("nat: exit %d, %q", code, out)
	}

	// A daemon without eBPF programs or pool reports nothing for them.
	bare := fakeDaemon(t, nil)
	for _, args := range [][]string{{"bpf", "status", "--json"}, {"nat", "--json"}} {
		code, out, errs := cliRun(t, append(args, "--control", bare)...)
		if code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, errs)
		}
		if m := checkVersionField(t, out); len(m) != 1 {
			t.Errorf("%q: %v, want the version alone", args, m)
		}
	}

	// decode --hex: "version" is the message's, the converter's is
	// "converter_version".
	code, out, _ = cliRun(t, "decode", "--json", "--hex", "010622630a05005000000000000000000000ffffc0000201")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); code != 0 || err != nil || m["version"] != float64(1) || m["converter_version"] != version {
		t.Errorf("decode --hex --json: exit %d, %q", code, out)
	}
}

func TestWithVersion(t *testing.T) {
	v := jsonString(t, version)
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{"version":` + v + `}`},
		{" { } \n", `{"version":` + v + `}`},
		{`{"a":1,"b":[1,2]}`, `{"version":` + v + `,"a":1,"b":[1,2]}`},
		{"{\n  \"a\": 1\n}\n", `{"version":` + v + `,"a":1}`},
		{`{"version":"other","a":1}`, `{"version":"other","a":1}`},
	} {
		got, err := versionedRaw([]byte(tc.in), "")
		if err != nil || string(got) != tc.want+"\n" {
			t.Errorf("versionedRaw(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{``, `null`, `[1]`, `"s"`, `{`} {
		if got, err := versionedRaw([]byte(in), ""); err == nil {
			t.Errorf("versionedRaw(%q) = %q, want an error", in, got)
		}
	}
	got, err := versionedJSON(map[string]int{"a": 1}, "  ")
	if want := "{\n  \"version\": " + v + ",\n  \"a\": 1\n}\n"; err != nil || string(got) != want {
		t.Errorf("indented: %q, %v; want %q", got, err, want)
	}
}

// `converter run` logs its version first, before any set-up that can fail.
func TestRunLogsVersion(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("converter run needs root")
	}
	ctx, cancel := context.WithCancel(t.Context())
	var errb benchSyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"converter", "run", "--listen", "127.0.0.1:0", "--control", "",
			"--tfo-window-clamp", "off", "--keep-privileges"}, stdio{in: strings.NewReader(""), out: &bytes.Buffer{}, err: &errb})
	}()
	// It runs until it listens, or stops at a check of the host (such as
	// net.ipv4.tcp_fastopen): the version is logged either way.
	deadline := time.After(10 * time.Second)
wait:
	for !strings.Contains(errb.String(), `"msg":"listening"`) {
		select {
		case code := <-done:
			t.Logf("converter run exited %d before listening: %s", code, errb.String())
			done <- code
			break wait
		case <-deadline:
			t.Errorf("converter run did not listen: %s", errb.String())
			break wait
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	<-done
	first, _, _ := strings.Cut(errb.String(), "\n")
	var rec map[string]any
	if err := json.Unmarshal([]byte(first), &rec); err != nil || rec["msg"] != "converter" || rec["version"] != version {
		t.Errorf("first log record %q (%v); want msg converter with version %q", first, err, version)
	}
}
