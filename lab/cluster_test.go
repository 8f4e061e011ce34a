package lab

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func TestClusterPlan(t *testing.T) {
	l, err := newClusterLab("p", 3, false)
	if err != nil {
		t.Fatal(err)
	}
	if l.Client != "p-cli" || l.Router != "p-rt" || l.Server != "p-srv" || l.Converter != "" || !l.IsCluster() {
		t.Errorf("namespaces: %+v", l)
	}
	if got := []string{l.Nodes[0].NS, l.Nodes[2].NS}; !slices.Equal(got, []string{"p-n1", "p-n3"}) {
		t.Errorf("node namespaces %v", got)
	}
	n2 := l.Nodes[1]
	want := Node{Index: 2, NS: "p-n2",
		Addrs:  []netip.Addr{netip.MustParseAddr("10.202.101.2"), netip.MustParseAddr("fd02:101::2")},
		Uplink: []netip.Addr{netip.MustParseAddr("10.202.12.2"), netip.MustParseAddr("fd02:12::2")},
		Router: []netip.Addr{netip.MustParseAddr("10.202.12.1"), netip.MustParseAddr("fd02:12::1")}}
	if n2.Index != want.Index || n2.NS != want.NS || !slices.Equal(n2.Addrs, want.Addrs) || !slices.Equal(n2.Uplink, want.Uplink) || !slices.Equal(n2.Router, want.Router) {
		t.Errorf("node 2 = %+v, want %+v", n2, want)
	}
	if !slices.Equal(l.VIPs, []netip.Addr{netip.MustParseAddr("10.202.100.1"), netip.MustParseAddr("fd02:100::1")}) {
		t.Errorf("VIPs %v", l.VIPs)
	}
	// Apart from the default lab's addresses.
	def := netip.MustParsePrefix("10.201.0.0/16")
	def6 := netip.MustParsePrefix("fd01::/16")
	topo := l.topology()
	for _, v := range topo.veths {
		for _, e := range []end{v.a, v.b} {
			for _, p := range e.addrs {
				if def.Overlaps(p) || def6.Overlaps(p) {
					t.Errorf("%s %s: %s is in the default lab's range", e.role, e.name, p)
				}
			}
		}
	}
	if got := topo.roles; !slices.Equal(got, []Role{RoleClient, RoleRouter, NodeRole(1), NodeRole(2), NodeRole(3), RoleServer}) {
		t.Errorf("roles %v", got)
	}
	if got := topo.linkNames(RoleRouter); !slices.Equal(got, []string{"r-c1", "r-c2", "r-s", "r-n1", "r-n2", "r-n3"}) {
		t.Errorf("router links %v", got)
	}
	if got := topo.lo[NodeRole(3)]; len(got) != 4 || got[0] != netip.MustParsePrefix("10.202.100.1/32") || got[3] != netip.MustParsePrefix("fd02:101::3/128") {
		t.Errorf("node 3's lo %v", got)
	}
	if got := topo.mptcpLimits(RoleClient); got != (MPTCPLimits{Subflows: 2, AddAddrAccepted: 0}) {
		t.Errorf("client limits %+v, want the kernel's defaults", got)
	}
	if got := topo.mptcpLimits(NodeRole(1)); got != (MPTCPLimits{Subflows: mptcpLimit, AddAddrAccepted: mptcpLimit}) {
		t.Errorf("node limits %+v", got)
	}
	if eps := topo.endpoints[RoleClient]; len(eps) != 2 || eps[0].Address != "10.202.2.2" || !eps[0].Subflow || eps[0].Dev != "c2" {
		t.Errorf("client endpoints %+v", eps)
	}
	sys := map[string]string{}
	for _, c := range topo.sysctls[RoleRouter] {
		sys[c.key] = c.value
	}
	if sys["net.ipv4.fib_multipath_hash_policy"] != "1" || sys["net.ipv6.fib_multipath_hash_policy"] != "1" || sys["net.ipv4.ip_forward"] != "1" {
		t.Errorf("router sysctls %v", sys)
	}
	for _, n := range []int{1, MaxNodes + 1, -1} {
		if _, err := newClusterLab("p", n, false); err == nil {
			t.Errorf("newClusterLab(%d nodes) accepted", n)
		}
	}
	if nsName("p", NodeRole(12)) != "p-n12" || nodeIndex(Role("nodex")) != 0 || nodeIndex(RoleServer) != 0 {
		t.Errorf("node role names")
	}
}

// TestBIRDConfigs renders the router's and a node's configuration and
// has BIRD check them (bird -p).
func TestBIRDConfigs(t *testing.T) {
	for _, bfd := range []bool{false, true} {
		l, err := newClusterLab("cfgtest", 3, bfd)
		if err != nil {
			t.Fatal(err)
		}
		l.RunDir = t.TempDir()
		rt, node := l.routerBIRDConfig(), l.nodeBIRDConfig(l.Nodes[2])
		for _, want := range []string{"merge paths on limit 16", "persist on; graceful restart on;", "hold time 3; keepalive time 1;",
			"protocol bgp n3v4 from node", "neighbor 10.202.13.2 as 65100", "neighbor fd02:13::2 as 65100", "local as 65000;",
			"10.202.100.1/32", "10.202.101.0/24{32,32}", "fd02:101::/64{128,128}", "graceful restart wait 10;"} {
			if !strings.Contains(rt, want) {
				t.Errorf("router configuration lacks %q:\n%s", want, rt)
			}
		}
		for _, want := range []string{`interface "cvcluster*"`, "bgp_origin = ORIGIN_IGP", "local as 65100;", "router id 10.202.101.3;",
			"neighbor 10.202.13.1 as 65000", "neighbor fd02:13::1 as 65000", "graceful restart aware;"} {
			if !strings.Contains(node, want) {
				t.Errorf("node configuration lacks %q:\n%s", want, node)
			}
		}
		if got := strings.Contains(rt, "protocol bfd") && strings.Contains(node, "protocol bfd") && strings.Contains(rt, "bfd on;"); got != bfd {
			t.Errorf("bfd %v: configurations have BFD %v", bfd, got)
		}
		if _, err := exec.LookPath("bird"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("bird not installed and CI is set (make deps installs bird2)")
			}
			t.Skip("bird not installed: configurations not checked by BIRD")
		}
		for name, conf := range map[string]string{"router": rt, "node": node} {
			p := filepath.Join(l.RunDir, name+".conf")
			if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("bird", "-p", "-c", p).CombinedOutput(); err != nil {
				t.Errorf("bfd %v: bird -p on the %s configuration: %v: %s\n%s", bfd, name, err, out, conf)
			}
		}
	}
}

func TestParseShowProtocols(t *testing.T) {
	lines := []string{
		"2002-Name       Proto      Table      State  Since         Info",
		"1002-device1    Device     ---        up     05:14:53.999  ",
		" kernel4    Kernel     master4    up     05:14:53.999  ",
		" n1v4       BGP        ---        up     05:14:54.270  Established   ",
		" n2v6       BGP        ---        start  05:14:54.240  Active        Socket: Connection refused",
		" n3v4       BGP        ---        down   05:14:54.240  ",
		"0000 ",
	}
	ps := parseShowProtocols(lines)
	if len(ps) != 5 {
		t.Fatalf("parsed %d protocols: %+v", len(ps), ps)
	}
	if ps[2].Name != "n1v4" || ps[2].Proto != "BGP" || ps[2].bgpState() != "Established" || ps[2].Since != "05:14:54.270" {
		t.Errorf("n1v4: %+v", ps[2])
	}
	if ps[3].bgpState() != "Active" || ps[3].Info != "Active Socket: Connection refused" || ps[4].bgpState() != "Down" {
		t.Errorf("n2v6, n3v4: %+v %+v", ps[3], ps[4])
	}
	for line, want := range map[string]int{"0000 ": 0, "1002-x": 1002, "9001 syntax error": 9001, " x": -1, "": -1} {
		if got, _ := birdCode(line); got != want {
			t.Errorf("birdCode(%q) = %d, want %d", line, got, want)
		}
	}
}

// TestNHSync runs the watcher in a namespace of its own against a
// multipath route made to look like BIRD's, and follows it through
// path changes, a restart and the route's removal.
func TestNHSync(t *testing.T) {
	requireRoot(t)
	if err := prepareNetnsDir(); err != nil {
		t.Fatal(err)
	}
	ns := UniquePrefix() + "-nhs"
	if _, err := createNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetns(ns) })
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "a0", "type", "veth", "peer", "name", "a1"},
		{"link", "add", "b0", "type", "veth", "peer", "name", "b1"},
		{"addr", "add", "192.0.2.1/24", "dev", "a0"}, {"addr", "add", "198.51.100.1/24", "dev", "b0"},
		{"link", "set", "a0", "up"}, {"link", "set", "a1", "up"}, {"link", "set", "b0", "up"}, {"link", "set", "b1", "up"},
	} {
		ip(args...)
	}
	vip := netip.MustParsePrefix("203.0.113.7/32")
	ip("route", "add", vip.String(), "proto", "12", "metric", "32", "nexthop", "via", "192.0.2.2", "dev", "a0", "nexthop", "via", "198.51.100.2", "dev", "b0")

	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		ready, done := make(chan struct{}), make(chan error, 1)
		cfg := DefaultNHSyncConfig([]netip.Prefix{vip})
		cfg.Ready = func() { close(ready) }
		go func() {
			done <- RunIn(ns, func() error { return RunNHSync(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) })
		}()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("watcher: %v", err)
		}
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("watcher: %v", err)
			}
		}
	}
	state := func() (members []string, buckets int, routed bool) {
		err := RunIn(ns, func() error {
			objs, err := dumpNexthops()
			if err != nil {
				return err
			}
			g, ok := objs[nhGroupIDBase]
			if ok {
				for _, m := range g.group {
					members = append(members, objs[m].hop.gw.String())
				}
				counts, err := dumpBuckets(nhGroupIDBase)
				if err != nil {
					return err
				}
				for _, n := range counts {
					buckets += n
				}
			}
			rs, err := routesTo(vip, mainTable)
			routed = slices.ContainsFunc(rs, func(r netlink.Route) bool { return r.Protocol == nhProto && r.Priority == nhMetric })
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(members)
		return members, buckets, routed
	}
	waitFor := func(what string, want []string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			m, b, routed := state()
			if slices.Equal(m, want) && routed == (len(want) > 0) && (len(want) == 0 || b == nhBuckets) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: members %v, %d buckets, routed %v; want %v", what, m, b, routed, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	stop := run()
	waitFor("start", []string{"192.0.2.2", "198.51.100.2"})
	ip("route", "replace", vip.String(), "proto", "12", "metric", "32", "nexthop", "via", "198.51.100.2", "dev", "b0")
	waitFor("one path left", []string{"198.51.100.2"})
	stop()
	// A restart adopts the group: no change, and it follows again.
	ip("route", "replace", vip.String(), "proto", "12", "metric", "32", "nexthop", "via", "192.0.2.2", "dev", "a0", "nexthop", "via", "198.51.100.2", "dev", "b0")
	waitFor("stopped watcher", []string{"198.51.100.2"})
	stop = run()
	defer stop()
	waitFor("restarted", []string{"192.0.2.2", "198.51.100.2"})
	ip("route", "del", vip.String(), "proto", "12", "metric", "32")
	waitFor("no path", nil)
	err := RunIn(ns, func() error {
		objs, err := dumpNexthops()
		if len(objs) != 0 {
			return errors.New("nexthops left after the route went")
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}
