package main

import (
	"strings"
	"testing"
)

// The lab's flags are checked before anything touches the system.
func TestLabUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--nodes", "0"}, "--nodes 0: want 1 to 16"},
		{[]string{"lab", "up", "--nodes", "17"}, "--nodes 17: want 1 to 16"},
		{[]string{"lab", "up", "--bfd"}, "--bfd needs --nodes 2 or more"},
		{[]string{"lab", "nhsync"}, "--route is required"},
		{[]string{"lab", "nhsync", "--route", "10.0.0.1"}, `--route "10.0.0.1"`},
		{[]string{"lab", "nhsync", "--route", "10.0.0.1/32", "x"}, "takes no arguments"},
	} {
		code, _, stderr := cliRun(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
}

// nhsync is the lab's own helper: not in the help.
func TestLabNHSyncHidden(t *testing.T) {
	code, stdout, stderr := cliRun(t, "lab", "--help")
	if code != 0 || strings.Contains(stdout+stderr, "nhsync") || !strings.Contains(stdout, "--nodes N") {
		t.Errorf("lab --help: exit %d\n%s%s", code, stdout, stderr)
	}
}
