package bpf

import (
	"context"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/convert-tc/converter/lab"
)

func linkFromID(id uint32) (link.Link, error) { return link.NewFromID(link.ID(id)) }

// tcxLinksOf counts the tcx links in the system that run program prog.
func tcxLinksOf(t *testing.T, prog uint32) int {
	t.Helper()
	it := new(link.Iterator)
	defer it.Close()
	n := 0
	for it.Next() {
		info, err := it.Take().Info()
		if err != nil || info.TCX() == nil {
			continue
		}
		if uint32(info.Program) == prog {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("iterate links: %v", err)
	}
	return n
}

// bpftoolNet returns `bpftool net show dev ifname` in the converter
// namespace, or "" when bpftool is not installed.
func bpftoolNet(t *testing.T, l *lab.Lab, ifname string) string {
	t.Helper()
	if _, err := exec.LookPath("bpftool"); err != nil {
		return ""
	}
	out, err := l.Command(context.Background(), l.Converter, "bpftool", "net", "show", "dev", ifname).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool net show dev %s: %v\n%s", ifname, err, out)
	}
	t.Logf("bpftool net show dev %s:\n%s", ifname, out)
	return string(out)
}
