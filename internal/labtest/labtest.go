// Package labtest holds what every namespace test does first: check that
// the lab can run here, skipping on a developer machine without root but
// failing under CI, where a missing capability is a broken runner.
package labtest

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/convert-tc/converter/lab"
)

// Require skips t (or fails it when CI is set) unless this process can
// build a lab and the named tools are installed.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if err := lab.EnsureRoot(); err != nil {
		missing = append(missing, err.Error())
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" not installed (make deps)")
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("namespace test cannot run and CI is set: %s", strings.Join(missing, "; "))
	}
	t.Skipf("namespace test needs (set CI=1 to make this fatal): %s", strings.Join(missing, "; "))
}
