package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// rulePriority is explicit so the kernel can detect duplicate rules; with an
// auto-assigned priority every re-add would create another copy.
const rulePriority = 1000

// setup carries the state of one Up call.
type setup struct {
	ctx     context.Context
	lab     *Lab
	topo    topology
	ns      map[Role]netns.NsHandle
	nl      map[Role]*netlink.Handle
	created []string       // namespaces this call created
	undo    []func() error // other changes to revert on failure
}

func (s *setup) run() error {
	s.ns = make(map[Role]netns.NsHandle)
	s.nl = make(map[Role]*netlink.Handle)
	t := s.topo
	for _, r := range t.roles {
		if err := s.namespace(r); err != nil {
			return err
		}
	}
	for _, v := range t.veths {
		if err := s.veth(v); err != nil {
			return err
		}
	}
	for _, r := range t.roles {
		if addrs := t.lo[r]; len(addrs) > 0 {
			if err := s.addrs(end{role: r, name: "lo", addrs: addrs}); err != nil {
				return err
			}
		}
		if err := s.routing(r); err != nil {
			return err
		}
		if err := s.mptcp(r); err != nil {
			return err
		}
	}
	return s.waitReady()
}

// namespace creates (if needed) and prepares the namespace of role r.
func (s *setup) namespace(r Role) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	name := s.lab.NS(r)
	created, err := createNetns(name)
	if err != nil {
		return err
	}
	if created {
		s.created = append(s.created, name)
	}
	h, err := netns.GetFromPath(netnsPath(name))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	s.ns[r] = h
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	s.nl[r] = nl
	if err := writeSysctls(name, s.topo.sysctls[r]); err != nil {
		return err
	}
	return s.linkUp(r, "lo")
}

// veth creates the pair v (if needed), addresses both ends and sets them up.
func (s *setup) veth(v vethSpec) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if err := s.ensureVeth(v); err != nil {
		return err
	}
	for _, e := range []end{v.a, v.b} {
		if err := s.addrs(e); err != nil {
			return err
		}
		if err := s.linkUp(e.role, e.name); err != nil {
			return err
		}
	}
	return nil
}

func (s *setup) ensureVeth(v vethSpec) error {
	nsA, nsB := s.lab.NS(v.a.role), s.lab.NS(v.b.role)
	haveA, err := s.hasLink(v.a.role, v.a.name)
	if err != nil {
		return err
	}
	haveB, err := s.hasLink(v.b.role, v.b.name)
	if err != nil {
		return err
	}
	switch {
	case haveA && haveB:
		return nil
	case haveA || haveB:
		return fmt.Errorf("veth %s/%s <-> %s/%s: only one end exists; run Down first", nsA, v.a.name, nsB, v.b.name)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: v.a.name},
		PeerName:      v.b.name,
		PeerNamespace: netlink.NsFd(s.ns[v.b.role]),
	}
	if err := s.nl[v.a.role].LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s in %s (peer %s in %s): %w", v.a.name, nsA, v.b.name, nsB, err)
	}
	s.undo = append(s.undo, func() error { return s.delLink(v.a.role, v.a.name) })
	return nil
}

// delLink removes a link; deleting one veth end removes its peer too.
func (s *setup) delLink(r Role, name string) error {
	link, err := s.nl[r].LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", name, s.lab.NS(r), err)
	}
	return wrapf(s.nl[r].LinkDel(link), "delete %s in %s", name, s.lab.NS(r))
}

func (s *setup) hasLink(r Role, name string) (bool, error) {
	_, err := s.nl[r].LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s in %s: %w", name, s.lab.NS(r), err)
	}
	return true, nil
}

func (s *setup) linkUp(r Role, name string) error {
	link, err := s.nl[r].LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", name, s.lab.NS(r), err)
	}
	return wrapf(s.nl[r].LinkSetUp(link), "set %s up in %s", name, s.lab.NS(r))
}

// addrs assigns e's addresses; AddrReplace makes re-runs harmless.
func (s *setup) addrs(e end) error {
	ns := s.lab.NS(e.role)
	link, err := s.nl[e.role].LinkByName(e.name)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", e.name, ns, err)
	}
	for _, p := range e.addrs {
		a := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // usable at once, no tentative state
		}
		if err := s.nl[e.role].AddrReplace(link, a); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", p, e.name, ns, err)
		}
	}
	return nil
}

// routing installs the default routes and source rules of role r.
func (s *setup) routing(r Role) error {
	for _, rt := range s.topo.routes[r] {
		if err := s.route(r, rt); err != nil {
			return err
		}
	}
	for _, ru := range s.topo.rules[r] {
		if err := s.rule(r, ru); err != nil {
			return err
		}
	}
	return nil
}

func (s *setup) route(r Role, rt routeSpec) error {
	ns := s.lab.NS(r)
	link, err := s.nl[r].LinkByName(rt.dev)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", rt.dev, ns, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: rt.gw.AsSlice(), Table: rt.table}
	return wrapf(s.nl[r].RouteReplace(route), "add default route via %s dev %s table %d in %s", rt.gw, rt.dev, rt.table, ns)
}

func (s *setup) rule(r Role, ru ruleSpec) error {
	rule := netlink.NewRule()
	rule.Src = ipNet(netip.PrefixFrom(ru.src, ru.src.BitLen()))
	rule.Family = family(ru.src)
	rule.Table = ru.table
	rule.Priority = rulePriority
	err := s.nl[r].RuleAdd(rule)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return wrapf(err, "add rule from %s table %d in %s", ru.src, ru.table, s.lab.NS(r))
}

// mptcp sets the path-manager limits and endpoints of role r.
func (s *setup) mptcp(r Role) error {
	ns := s.lab.NS(r)
	if err := setMPTCPLimits(s.ctx, ns, s.topo.mptcpLimits(r)); err != nil {
		return err
	}
	want := s.topo.endpoints[r]
	if len(want) == 0 {
		return nil
	}
	have, err := listMPTCPEndpoints(s.ctx, ns)
	if err != nil {
		return err
	}
	for _, ep := range want {
		exists := slices.ContainsFunc(have, func(h MPTCPEndpoint) bool { return h.Address == ep.Address })
		if exists {
			continue
		}
		if err := addMPTCPEndpoint(s.ctx, ns, ep); err != nil {
			return err
		}
	}
	return nil
}

// rollback reverts this call's changes, newest first.
func (s *setup) rollback() error {
	var errs []error
	for _, u := range slices.Backward(s.undo) {
		errs = append(errs, u())
	}
	for _, name := range slices.Backward(s.created) {
		errs = append(errs, deleteNetns(name))
	}
	return errors.Join(errs...)
}

func (s *setup) close() {
	for _, h := range s.nl {
		h.Close()
	}
	for _, h := range s.ns {
		h.Close()
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// sysctlPath maps "net.ipv4.ip_forward" to its /proc/sys file.
func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// writeSysctls applies settings inside ns. /proc/sys/net resolves against the
// netns of the opening thread, so RunIn suffices.
func writeSysctls(ns string, settings []sysctl) error {
	return RunIn(ns, func() error {
		for _, c := range settings {
			if err := os.WriteFile(sysctlPath(c.key), []byte(c.value), 0); err != nil {
				return fmt.Errorf("set %s=%q in %s: %w", c.key, c.value, ns, err)
			}
		}
		return nil
	})
}

// readSysctls returns the current values of settings inside ns.
func readSysctls(ns string, settings []sysctl) (map[string]string, error) {
	out := make(map[string]string, len(settings))
	err := RunIn(ns, func() error {
		for _, c := range settings {
			b, err := os.ReadFile(sysctlPath(c.key))
			if err != nil {
				return fmt.Errorf("read %s in %s: %w", c.key, ns, err)
			}
			out[c.key] = strings.Join(strings.Fields(string(b)), " ") // "1024\t65535" -> "1024 65535"
		}
		return nil
	})
	return out, err
}
