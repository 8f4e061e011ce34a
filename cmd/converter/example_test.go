package main

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite dist/converter.toml")

// TestExampleConfig: dist/converter.toml is what exampleConfig renders
// (go test ./cmd/converter -run ExampleConfig -update rewrites it), and
// it is a valid --config file.
func TestExampleConfig(t *testing.T) {
	var run = newApp(stdio{}).Command("run")
	want := exampleConfig(run)
	const path = "../../dist/converter.toml"
	if *update {
		os.MkdirAll("../../dist", 0o755)
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s is out of date: go test ./cmd/converter -run TestExampleConfig -update", path)
	}
	// Uncommented, every key parses; what remains is that keys of
	// every mode are set at once, and the kernel of the test machine.
	uncommented := writeFile(t, "all.toml", uncomment(want), 0o644)
	_, _, errs := runCheck(t, "--config", uncommented)
	for _, p := range problemsBesidesKernel(errs) {
		if !strings.Contains(p, "has no effect") {
			t.Errorf("the example, uncommented: %s", p)
		}
	}
}

// uncomment turns "# key = value" lines into "key = value".
func uncomment(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if key, _, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = "); ok && strings.HasPrefix(line, "# ") && !strings.ContainsAny(key, " ;()") {
			line = strings.TrimPrefix(line, "# ")
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}
