package lab

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// StatusReport describes what exists of a lab.
type StatusReport struct {
	Prefix string `json:"prefix"`
	// Complete is true when every namespace and veth exists.
	Complete   bool              `json:"complete"`
	Namespaces []NamespaceStatus `json:"namespaces"`
}

// NamespaceStatus describes one lab namespace.
type NamespaceStatus struct {
	Role         Role              `json:"role"`
	Name         string            `json:"name"`
	Exists       bool              `json:"exists"`
	Links        []LinkStatus      `json:"links,omitempty"`
	MissingLinks []string          `json:"missing_links,omitempty"`
	Sysctls      map[string]string `json:"sysctls,omitempty"`
	MPTCP        *MPTCPStatus      `json:"mptcp,omitempty"`
}

// LinkStatus describes one interface and its global-scope addresses.
type LinkStatus struct {
	Name  string   `json:"name"`
	State string   `json:"state"`
	Addrs []string `json:"addrs,omitempty"`
}

// MPTCPStatus is the in-kernel path-manager configuration of a namespace.
type MPTCPStatus struct {
	Limits    MPTCPLimits     `json:"limits"`
	Endpoints []MPTCPEndpoint `json:"endpoints"`
}

// Status reports which parts of the lab with the given prefix exist.
func Status(prefix string) (StatusReport, error) {
	l, err := newLab(prefix)
	if err != nil {
		return StatusReport{}, err
	}
	rep := StatusReport{Prefix: prefix, Complete: true}
	for _, r := range roles {
		st, err := nsStatus(l.NS(r), r)
		if err != nil {
			return rep, err
		}
		rep.Complete = rep.Complete && st.Exists && len(st.MissingLinks) == 0
		rep.Namespaces = append(rep.Namespaces, st)
	}
	return rep, nil
}

func nsStatus(name string, r Role) (NamespaceStatus, error) {
	st := NamespaceStatus{Role: r, Name: name, MissingLinks: linkNames(r)}
	ok, err := netnsExists(name)
	if err != nil || !ok {
		return st, err
	}
	st.Exists = true
	if st.Links, err = linkStatuses(name); err != nil {
		return st, err
	}
	st.MissingLinks = slices.DeleteFunc(st.MissingLinks, func(n string) bool {
		return slices.ContainsFunc(st.Links, func(l LinkStatus) bool { return l.Name == n })
	})
	if st.Sysctls, err = readSysctls(name, sysctlSpecs(r)); err != nil {
		return st, err
	}
	st.MPTCP, err = mptcpStatus(name)
	return st, err
}

func linkStatuses(ns string) ([]LinkStatus, error) {
	nsh, err := netns.GetFromPath(netnsPath(ns))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", ns, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", ns, err)
	}
	var out []LinkStatus
	for _, link := range links {
		ls, err := linkStatus(h, link)
		if err != nil {
			return nil, fmt.Errorf("status of %s in %s: %w", link.Attrs().Name, ns, err)
		}
		out = append(out, ls)
	}
	return out, nil
}

func linkStatus(h *netlink.Handle, link netlink.Link) (LinkStatus, error) {
	ls := LinkStatus{Name: link.Attrs().Name, State: link.Attrs().OperState.String()}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return ls, err
	}
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			ls.Addrs = append(ls.Addrs, a.IPNet.String())
		}
	}
	return ls, nil
}

func mptcpStatus(ns string) (*MPTCPStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lim, err := getMPTCPLimits(ctx, ns)
	if err != nil {
		return nil, err
	}
	eps, err := listMPTCPEndpoints(ctx, ns)
	if err != nil {
		return nil, err
	}
	return &MPTCPStatus{Limits: lim, Endpoints: eps}, nil
}
