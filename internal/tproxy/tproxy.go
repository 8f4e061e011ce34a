// Package tproxy installs the policy routing that transparent steering
// needs: packets marked by the steering program are delivered locally
// (a `local` default route in a table of its own, chosen by an fwmark
// rule), for IPv4 and IPv6. Everything installed is removed by Remove.
package tproxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routing is the rules and routes one converter installed.
type Routing struct {
	Mark  uint32
	Table int

	rules  []*netlink.Rule
	routes []*netlink.Route
	// earlyDemux is net.ipv4.tcp_early_demux as found, restored by
	// Remove; empty when it was not changed.
	earlyDemux string
}

// earlyDemuxPath is per network namespace and covers IPv6 too.
const earlyDemuxPath = "/proc/sys/net/ipv4/tcp_early_demux"

// rulePriority sits before the main table's rule (32766) so marked
// packets never reach the forwarding path, where an assigned socket
// would be dropped.
const rulePriority = 100

// Install adds, in the network namespace of the calling thread, one fwmark
// rule and one local default route per family. Existing identical entries
// are taken over (a crashed predecessor may have left them).
func Install(mark uint32, table int) (*Routing, error) {
	r := &Routing{Mark: mark, Table: table}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if err := r.installFamily(fam, lo.Attrs().Index); err != nil {
			r.Remove()
			return nil, err
		}
	}
	// Packets of a 4-tuple whose local socket is in TIME_WAIT are not
	// marked (a client may reuse the tuple for a plain connection to the
	// real server); early demux would attach that TIME_WAIT socket before
	// routing and drop the forwarded packets until TIME_WAIT ends.
	if old, err := os.ReadFile(earlyDemuxPath); err == nil && strings.TrimSpace(string(old)) != "0" {
		if err := os.WriteFile(earlyDemuxPath, []byte("0"), 0); err != nil {
			r.Remove()
			return nil, fmt.Errorf("set net.ipv4.tcp_early_demux=0: %w", err)
		}
		r.earlyDemux = strings.TrimSpace(string(old))
	}
	return r, nil
}

func (r *Routing) installFamily(fam, loIndex int) error {
	rule := netlink.NewRule()
	rule.Family = fam
	rule.Mark = r.Mark
	mask := uint32(0xffffffff)
	rule.Mask = &mask
	rule.Table = r.Table
	rule.Priority = rulePriority
	if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add fwmark %#x rule to table %d (%s): %w", r.Mark, r.Table, famName(fam), err)
	}
	r.rules = append(r.rules, rule)
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if fam == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	route := &netlink.Route{
		LinkIndex: loIndex, Dst: dst, Table: r.Table,
		Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: fam,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("add local default route in table %d (%s): %w", r.Table, famName(fam), err)
	}
	r.routes = append(r.routes, route)
	return nil
}

// EarlyDemux is the net.ipv4.tcp_early_demux value Remove restores ("":
// none, Install found it off). A successor process takes it over on an
// upgrade (SetEarlyDemux), as it takes over the rules.
func (r *Routing) EarlyDemux() string { return r.earlyDemux }

// SetEarlyDemux sets what Remove restores, when Install found the value a
// predecessor had set.
func (r *Routing) SetEarlyDemux(v string) {
	if r.earlyDemux == "" {
		r.earlyDemux = v
	}
}

// Remove deletes what Install added; it reports the first failure but
// tries everything.
func (r *Routing) Remove() error {
	var first error
	for _, rule := range r.rules {
		if err := netlink.RuleDel(rule); err != nil && !errors.Is(err, syscall.ENOENT) && first == nil {
			first = fmt.Errorf("delete fwmark rule: %w", err)
		}
	}
	for _, route := range r.routes {
		if err := netlink.RouteDel(route); err != nil && !errors.Is(err, syscall.ESRCH) && first == nil {
			first = fmt.Errorf("delete local route: %w", err)
		}
	}
	r.rules, r.routes = nil, nil
	if r.earlyDemux != "" {
		if err := os.WriteFile(earlyDemuxPath, []byte(r.earlyDemux), 0); err != nil && first == nil {
			first = fmt.Errorf("restore net.ipv4.tcp_early_demux=%s: %w", r.earlyDemux, err)
		}
		r.earlyDemux = ""
	}
	return first
}

func famName(fam int) string {
	if fam == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

// LocalPrefixes are `local` routes that make the kernel deliver packets for
// the shared address pool to this host's sockets, so server replies to a
// pool address reach the converter's server legs.
type LocalPrefixes struct {
	routes []*netlink.Route
}

// InstallLocalPrefixes adds one local route per prefix in the local table,
// in the network namespace of the calling thread.
func InstallLocalPrefixes(prefixes []netip.Prefix) (*LocalPrefixes, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	lp := &LocalPrefixes{}
	for _, p := range prefixes {
		fam := netlink.FAMILY_V4
		if p.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		route := &netlink.Route{
			LinkIndex: lo.Attrs().Index, Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
			Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: fam,
		}
		if err := netlink.RouteReplace(route); err != nil {
			lp.Remove()
			return nil, fmt.Errorf("add local route for pool %v: %w", p, err)
		}
		lp.routes = append(lp.routes, route)
	}
	return lp, nil
}

// Remove deletes the routes; it reports the first failure.
func (lp *LocalPrefixes) Remove() error {
	var first error
	for _, r := range lp.routes {
		if err := netlink.RouteDel(r); err != nil && !errors.Is(err, syscall.ESRCH) && first == nil {
			first = fmt.Errorf("delete local route %v: %w", r.Dst, err)
		}
	}
	lp.routes = nil
	return first
}
