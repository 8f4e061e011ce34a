package tproxy

import (
	"context"
	"strings"
	"testing"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
)

// TestInstallRemove installs the routing in a lab's converter namespace,
// checks it with ip, removes it and checks that nothing is left.
func TestInstallRemove(t *testing.T) {
	labtest.Require(t)
	l, err := lab.Up(context.Background(), lab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ns := l.NS(lab.RoleConverter)
	show := func(args ...string) string {
		out, err := l.Command(context.Background(), ns, "ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		return string(out)
	}
	var r *Routing
	if err := lab.RunIn(ns, func() error { var err error; r, err = Install(0x2263, 163); return err }); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := show(fam, "rule"); !strings.Contains(rules, "fwmark 0x2263 lookup 163") {
			t.Errorf("%s rules:\n%s", fam, rules)
		}
		if routes := show(fam, "route", "show", "table", "163"); !strings.Contains(routes, "local default dev lo") {
			t.Errorf("%s table 163:\n%s", fam, routes)
		}
	}
	if err := lab.RunIn(ns, r.Remove); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"-4", "-6"} {
		if rules := show(fam, "rule"); strings.Contains(rules, "0x2263") {
			t.Errorf("%s rule left behind:\n%s", fam, rules)
		}
		if routes := show(fam, "route", "show", "table", "163"); strings.TrimSpace(routes) != "" {
			t.Errorf("%s routes left behind:\n%s", fam, routes)
		}
	}
}
