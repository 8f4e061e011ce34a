package bpf

import (
	"context"
	"net"
	"os/exec"
	"strings"
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

// TestAttachDetach covers the refusals of Attach and Detach, and that a
// detached interface can be attached again.
func TestAttachDetach(t *testing.T) {
	l := upLab(t)
	c, err := LoadSynAckCapture()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = lab.RunIn(l.Converter, func() error {
		sv, err := net.InterfaceByName(lab.IfConvServer)
		if err != nil {
			return err
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		steps := []struct {
			what    string
			err     error
			wantErr string
		}{
			{"attach lo", c.Attach(lo.Index), ""},
			{"detach lo", c.Detach(lo.Index), ""},
			{"attach a missing ifindex", c.Attach(9999), "ifindex 9999"},
			{"attach sv", c.Attach(sv.Index), ""},
			{"attach sv again", c.Attach(sv.Index), "already attached"},
			{"detach sv", c.Detach(sv.Index), ""},
			{"detach sv again", c.Detach(sv.Index), "not attached"},
			{"attach sv after detach", c.Attach(sv.Index), ""},
		}
		for _, s := range steps {
			switch {
			case s.wantErr == "" && s.err != nil:
				t.Errorf("%s: %v", s.what, s.err)
			case s.wantErr != "" && (s.err == nil || !strings.Contains(s.err.Error(), s.wantErr)):
				t.Errorf("%s: error %v, want one containing %q", s.what, s.err, s.wantErr)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status()
	if err != nil || len(st.Links) != 1 || st.Links[0].Interface != lab.IfConvServer {
		t.Errorf("status %+v, %v: want one link on %s", st, err, lab.IfConvServer)
	}
}
