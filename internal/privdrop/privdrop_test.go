package privdrop

import (
	"encoding/json"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"testing"

	"github.com/convert-tc/converter/internal/labtest"
)

// runChild builds the child without cgo (as the daemon is built) and runs
// it as root with PRIVDROP_USER=userName.
func runChild(t *testing.T, userName string) map[string]any {
	t.Helper()
	labtest.Require(t)
	bin := filepath.Join(t.TempDir(), "child")
	build := exec.Command("go", "build", "-o", bin, "./testdata/child")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build child: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PRIVDROP_USER="+userName)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("child said %q: %v", out, err)
	}
	if e, ok := v["error"]; ok {
		t.Fatalf("Drop: %v", e)
	}
	return v
}

func checkThreads(t *testing.T, v map[string]any) {
	t.Helper()
	want := uint64(1<<CapNetAdmin | 1<<CapNetBindService)
	threads, _ := v["threads"].(map[string]any)
	if len(threads) < 5 {
		t.Errorf("only %d threads seen: %v", len(threads), threads)
	}
	for tid, m := range threads {
		if got := uint64(m.(float64)); got != want {
			t.Errorf("thread %s keeps %v, want %v", tid, Names(got), Names(want))
		}
	}
}

func TestDropEveryThread(t *testing.T) {
	v := runChild(t, "")
	checkThreads(t, v)
	if v["uid"].(float64) != 0 {
		t.Errorf("uid %v, want 0 without --user", v["uid"])
	}
}

func TestDropToUser(t *testing.T) {
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	v := runChild(t, "nobody")
	checkThreads(t, v)
	if got := v["euid"].(float64); int(got) == 0 || u.Uid == "0" {
		t.Errorf("euid %v after dropping to nobody (%s)", got, u.Uid)
	}
}

func TestNames(t *testing.T) {
	if got := Names(1<<CapNetAdmin | 1<<CapBPF | 1<<2); len(got) != 3 || got[0] != "cap_2" || got[1] != "CAP_NET_ADMIN" || got[2] != "CAP_BPF" {
		t.Errorf("Names: %v", got)
	}
}
