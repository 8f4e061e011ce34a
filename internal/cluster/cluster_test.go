package cluster

import (
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
)

func TestValidate(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	n4, n6 := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"ok", Config{VIPs: []netip.Addr{v4, v6}, Nodes: []netip.Addr{n4, n6}}, ""},
		{"no vip", Config{Nodes: []netip.Addr{n4}}, "no --cluster-vip"},
		{"vip without a node address of its family", Config{VIPs: []netip.Addr{v6}, Nodes: []netip.Addr{n4}}, "needs a --node-address of its family"},
		{"two node addresses of a family", Config{VIPs: []netip.Addr{v4}, Nodes: []netip.Addr{n4, v4.Next()}}, "one --node-address per family"},
		{"vip is the node", Config{VIPs: []netip.Addr{v4}, Nodes: []netip.Addr{v4}}, "both a VIP and the node's address"},
		{"unspecified", Config{VIPs: []netip.Addr{netip.IPv4Unspecified()}, Nodes: []netip.Addr{n4}}, "not a unicast address"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestReadTFOKey(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "k")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := ReadTFOKey(write("00112233445566778899aabbccddeeff\n# rotating out:\n0011-2233-4455-6677-8899-aabb-ccdd-eef0\n"))
	if want := "00112233-44556677-8899aabb-ccddeeff,00112233-44556677-8899aabb-ccddeef0"; err != nil || got != want {
		t.Errorf("ReadTFOKey = %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"", "0011", "zz112233445566778899aabbccddeeff", strings.Repeat("00112233445566778899aabbccddeeff\n", 3)} {
		if _, err := ReadTFOKey(write(bad)); err == nil {
			t.Errorf("ReadTFOKey(%q) accepted", bad)
		}
	}
}

// TestNode sets a node up in a namespace of its own and checks what the
// kernel then has, through the drain and the end.
func TestNode(t *testing.T) {
	labtest.Require(t)
	ns := "cvcl" + strings.TrimPrefix(lab.UniquePrefix(), "cv")
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	key := filepath.Join(t.TempDir(), "tfo.key")
	os.WriteFile(key, []byte("000102030405060708090a0b0c0d0e0f\n"), 0o600)
	vip, node := netip.MustParseAddr("10.209.200.1"), netip.MustParseAddr("10.209.201.1")
	vip6, node6 := netip.MustParseAddr("fd09:200::1"), netip.MustParseAddr("fd09:201::1")
	sysctl := func(name string) string {
		b, _ := os.ReadFile("/proc/sys/" + name)
		return strings.TrimSpace(string(b))
	}
	addrs := func(dev string) []string {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return nil
		}
		as, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
		var out []string
		for _, a := range as {
			if a.IP.IsGlobalUnicast() {
				out = append(out, a.IPNet.String())
			}
		}
		return out
	}
	err := lab.RunIn(ns, func() error {
		before := sysctl(sysctlCFlag)
		n, err := Setup(Config{VIPs: []netip.Addr{vip, vip6}, Nodes: []netip.Addr{node, node6}, TFOKey: key}, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		dev := n.Device()
		if dev != DevicePrefix+"0" {
			t.Errorf("device %s", dev)
		}
		if got := sysctl(sysctlCFlag); got != "0" {
			t.Errorf("allow_join_initial_addr_port = %s, want 0", got)
		}
		if got := sysctl(sysctlTFOKey); !strings.HasPrefix(got, "00010203-04050607-08090a0b-0c0d0e0f") {
			t.Errorf("tcp_fastopen_key = %s", got)
		}
		if got := strings.Join(addrs(dev), " "); got != "10.209.201.1/32 fd09:201::1/128" {
			t.Errorf("before Announce: %s has %q, want the node addresses", dev, got)
		}
		// A rotation: the new key first, the old one as the backup.
		os.WriteFile(key, []byte("101112131415161718191a1b1c1d1e1f\n000102030405060708090a0b0c0d0e0f\n"), 0o600)
		if err := n.ReloadTFOKey(); err != nil {
			t.Errorf("ReloadTFOKey: %v", err)
		}
		if got := sysctl(sysctlTFOKey); got != "10111213-14151617-18191a1b-1c1d1e1f,00010203-04050607-08090a0b-0c0d0e0f" {
			t.Errorf("tcp_fastopen_key after the rotation = %s", got)
		}
		eps, _ := exec.Command("ip", "mptcp", "endpoint", "show").Output()
		if !strings.Contains(string(eps), "10.209.201.1 id 230 signal dev "+dev) || !strings.Contains(string(eps), "fd09:201::1 id 231 signal") {
			t.Errorf("endpoints:\n%s", eps)
		}
		// A successor (an upgrade) gets a device of its own.
		n2, err := Setup(Config{VIPs: []netip.Addr{vip}, Nodes: []netip.Addr{node}}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Errorf("second node in the namespace: %v", err)
		} else {
			if n2.Device() != DevicePrefix+"1" {
				t.Errorf("second device %s", n2.Device())
			}
			n2.HandedOver() // leaves the namespace's settings alone
			n2.Close()
		}
		if err := n.Announce(); err != nil {
			return err
		}
		if got := strings.Join(addrs(dev), " "); got != "10.209.201.1/32 10.209.200.1/32 fd09:200::1/128 fd09:201::1/128" {
			t.Errorf("after Announce: %q", got)
		}
		if err := n.Withdraw(); err != nil {
			return err
		}
		if got := strings.Join(addrs(dev), " "); got != "10.209.201.1/32 fd09:201::1/128" {
			t.Errorf("after Withdraw: %q", got)
		}
		if err := n.Close(); err != nil {
			return err
		}
		if _, err := netlink.LinkByName(dev); err == nil {
			t.Errorf("%s still there after Close", dev)
		}
		if eps, _ := exec.Command("ip", "mptcp", "endpoint", "show").Output(); len(strings.TrimSpace(string(eps))) > 0 {
			t.Errorf("endpoints after Close:\n%s", eps)
		}
		if got := sysctl(sysctlCFlag); got != before {
			t.Errorf("allow_join_initial_addr_port = %s after Close, want %s", got, before)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
