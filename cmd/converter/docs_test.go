package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runDocs runs the CLI with the docs command and returns the exit code,
// stdout and stderr.
func runDocs(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	io := stdio{in: strings.NewReader(""), out: &out, err: &errs}
	app := newApp(io)
	if findCommand(app.Commands, "docs") == nil {
		docs := docsCommand()
		setUsageExit(docs, app.OnUsageError)
		app.Commands = append(app.Commands, docs)
	}
	err := app.RunContext(context.Background(), flagsFirst(app.Commands, append([]string{"converter", "docs"}, args...)))
	var ec cli.ExitCoder
	switch {
	case err == nil:
		return exitOK, out.String(), errs.String()
	case errors.As(err, &ec):
		return ec.ExitCode(), out.String(), errs.String() + err.Error()
	default:
		return exitUsage, out.String(), errs.String() + err.Error()
	}
}

func TestDocsNeedsOneKind(t *testing.T) {
	for _, args := range [][]string{nil, {"--man", "--bash"}, {"--man", "extra"}} {
		if code, _, _ := runDocs(t, args...); code != exitUsage {
			t.Errorf("docs %q: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func TestDocsMan(t *testing.T) {
	code, out, errs := runDocs(t, "--man")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.HasPrefix(out, ".nh\n.TH converter 1") && !strings.Contains(out, ".TH converter 1") {
		t.Errorf("no converter(1) title:\n%.200s", out)
	}
	for _, c := range visibleCommands(newApp(stdio{}).Commands) {
		if !strings.Contains(out, c.Name) || !strings.Contains(out, `\fBconverter-`+c.Name+`\fP(1)`) {
			t.Errorf("man page lacks command %s", c.Name)
		}
	}
	for _, want := range []string{"--listen", "--version"} {
		if !strings.Contains(out, `\fB`+want) {
			t.Errorf("man page lacks %s", want)
		}
	}
	if strings.Contains(out, "packaging") {
		t.Error("man page shows the hidden docs command")
	}
}

func TestDocsManDir(t *testing.T) {
	dir := t.TempDir()
	if code, _, errs := runDocs(t, "--man-dir", dir); code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := []string{"converter.1"}
	for _, c := range visibleCommands(newApp(stdio{}).Commands) {
		want = append(want, "converter-"+c.Name+".1")
	}
	for _, name := range want {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if title := ".TH " + strings.TrimSuffix(name, ".1") + " 1"; !strings.Contains(string(b), title) {
			t.Errorf("%s: no %q", name, title)
		}
	}
	run, err := os.ReadFile(filepath.Join(dir, "converter-run.1"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(run), `\fB--listen`) || !strings.Contains(string(run), ".SH OPTIONS") ||
		!strings.Contains(string(run), ".SH SYNOPSIS\nconverter run\n") {
		t.Errorf("converter-run.1 lacks its options:\n%s", run)
	}
	if man, err := exec.LookPath("man"); err == nil {
		out, err := exec.Command(man, "-l", "-Tutf8", filepath.Join(dir, "converter-run.1")).CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("listen")) {
			t.Errorf("man -l converter-run.1: %v\n%s", err, out)
		}
	}
}

func TestDocsMarkdown(t *testing.T) {
	code, out, errs := runDocs(t, "--markdown")
	if code != exitOK || !strings.Contains(out, "# NAME") || !strings.Contains(out, "## run") {
		t.Fatalf("exit %d: %s\n%.300s", code, errs, out)
	}
}

// complete runs the bash completion script for the words typed so far
// (the last one is being completed) and returns the candidates.
func complete(t *testing.T, script string, words ...string) []string {
	t.Helper()
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, "'"+w+"'")
	}
	prog := script + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
		string(rune('0'+len(words)-1)) + "\n_converter\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
	out, err := exec.Command("bash", "-c", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestDocsBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	code, script, errs := runDocs(t, "--bash")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out, err := exec.Command("bash", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		words []string
		want  string
		not   string
	}{
		{[]string{"converter", "ru"}, "run", "docs"},
		{[]string{"converter", ""}, "sessions", "docs"},
		{[]string{"converter", "run", "--lis"}, "--listen", ""},
		{[]string{"converter", "--version", "b"}, "bpf", ""},
		{[]string{"converter", "bpf", ""}, "status", "run"},
		{[]string{"converter", "run", "--listen", "x", "--max-s"}, "--max-sessions", "--listen"},
	} {
		got := complete(t, script, tc.words...)
		if !contains(got, tc.want) || (tc.not != "" && contains(got, tc.not)) {
			t.Errorf("complete %q = %q, want %q and not %q", tc.words, got, tc.want, tc.not)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestDocsZsh(t *testing.T) {
	code, script, errs := runDocs(t, "--zsh")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.HasPrefix(script, "#compdef converter\n") || !strings.Contains(script, "_converter_run()") {
		t.Errorf("not a zsh completion:\n%.300s", script)
	}
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("no zsh to check the syntax")
	}
	if out, err := exec.Command("zsh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
}
