package lab

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// StatusReport describes what exists of a lab.
type StatusReport struct {
	Prefix string `json:"prefix"`
	// Complete is true when every namespace and veth exists, and in a
	// cluster lab every process runs and every BGP session is up.
	Complete   bool              `json:"complete"`
	Namespaces []NamespaceStatus `json:"namespaces"`

	// Where to run things, for scripts; the same in both shapes. A
	// one-converter lab has one node (PREFIX-conv, its client-side
	// addresses) and no VIP.
	Client Place        `json:"client"`
	Server Place        `json:"server"`
	Router *Place       `json:"router,omitempty"`
	VIP    []string     `json:"vip"`
	Nodes  []NodeStatus `json:"nodes"`

	// The cluster lab's routing: the router's BGP sessions, how it
	// forwards each VIP, and the processes the lab runs.
	Cluster     *ClusterSettings `json:"cluster,omitempty"`
	BGP         []BGPSession     `json:"bgp,omitempty"`
	VIPNextHops []VIPRoute       `json:"vip_nexthops,omitempty"`
	Processes   []ProcessStatus  `json:"processes,omitempty"`
	Problems    []string         `json:"problems,omitempty"`
}

// Place is a namespace and its addresses.
type Place struct {
	Namespace string   `json:"namespace"`
	Addresses []string `json:"addresses,omitempty"`
}

// NodeStatus is one converter namespace.
type NodeStatus struct {
	Namespace string `json:"namespace"`
	// Addresses are the node's own: a cluster node's unique addresses
	// (`converter run --node-address`), or the one converter's
	// client-side addresses.
	Addresses []string `json:"addresses"`
	// Uplink are a cluster node's addresses towards the router.
	Uplink []string `json:"uplink,omitempty"`
	// Device is the running converter's cvclusterN and Announced its
	// addresses: what the node's BIRD announces.
	Device    string   `json:"device,omitempty"`
	Announced []string `json:"announced,omitempty"`
}

// ClusterSettings are the cluster lab's BGP settings.
type ClusterSettings struct {
	RouterAS         int    `json:"router_as"`
	NodeAS           int    `json:"node_as"`
	HoldSeconds      int    `json:"hold_time_s"`
	KeepaliveSeconds int    `json:"keepalive_time_s"`
	BFD              bool   `json:"bfd"`
	BFDIntervalMS    int    `json:"bfd_interval_ms,omitempty"`
	BFDMultiplier    int    `json:"bfd_multiplier,omitempty"`
	Buckets          int    `json:"buckets"`
	IdleSeconds      int    `json:"idle_timer_s"`
	RunDir           string `json:"run_dir"`
}

// ProcessStatus is a process the cluster lab runs.
type ProcessStatus struct {
	Name      string `json:"name"` // "bird" or "nhsync"
	Namespace string `json:"namespace"`
	PID       int    `json:"pid,omitempty"`
	Running   bool   `json:"running"`
	Log       string `json:"log"`
	Control   string `json:"control,omitempty"` // BIRD's socket: birdc -s
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
	l, err := Open(prefix)
	if err != nil {
		return StatusReport{}, err
	}
	t := l.topology()
	rep := StatusReport{Prefix: prefix, Complete: true, VIP: []string{}, Nodes: []NodeStatus{}}
	for _, r := range t.roles {
		st, err := nsStatus(l.NS(r), r, t)
		if err != nil {
			return rep, err
		}
		rep.Complete = rep.Complete && st.Exists && len(st.MissingLinks) == 0
		rep.Namespaces = append(rep.Namespaces, st)
	}
	ad := l.Addr
	rep.Client = Place{Namespace: l.Client, Addresses: addrStrings(ad.ClientPath1V4, ad.ClientPath1V6, ad.ClientPath2V4, ad.ClientPath2V6)}
	rep.Server = Place{Namespace: l.Server, Addresses: addrStrings(ad.ServerV4, ad.ServerV6)}
	if !l.IsCluster() {
		rep.Nodes = append(rep.Nodes, NodeStatus{Namespace: l.Converter,
			Addresses: addrStrings(ad.ConvPath1V4, ad.ConvPath1V6, ad.ConvPath2V4, ad.ConvPath2V6)})
		return rep, nil
	}
	rep.Router = &Place{Namespace: l.Router, Addresses: addrStrings(ad.ConvPath1V4, ad.ConvPath1V6, ad.ConvPath2V4, ad.ConvPath2V6, ad.ConvServerV4, ad.ConvServerV6)}
	rep.VIP = addrStrings(l.VIPs...)
	rep.Cluster = &ClusterSettings{
		RouterAS: RouterAS, NodeAS: NodeAS,
		HoldSeconds: int(HoldTime / time.Second), KeepaliveSeconds: int(KeepaliveTime / time.Second),
		BFD: l.BFD, Buckets: nhBuckets, IdleSeconds: int(nhIdle / time.Second), RunDir: l.RunDir,
	}
	if l.BFD {
		rep.Cluster.BFDIntervalMS, rep.Cluster.BFDMultiplier = int(BFDInterval/time.Millisecond), BFDMultiplier
	}
	nsExists := map[string]bool{}
	for _, ns := range rep.Namespaces {
		nsExists[ns.Name] = ns.Exists
	}
	problem := func(format string, args ...any) {
		rep.Complete = false
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
	}
	for _, n := range l.Nodes {
		ns := NodeStatus{Namespace: n.NS, Addresses: addrStrings(n.Addrs...), Uplink: addrStrings(n.Uplink...)}
		if nsExists[n.NS] {
			if ns.Device, ns.Announced, err = clusterDevice(n.NS); err != nil {
				return rep, err
			}
		}
		rep.Nodes = append(rep.Nodes, ns)
	}
	rep.Processes = l.processes()
	for _, p := range rep.Processes {
		if !p.Running {
			problem("%s in %s is not running (log %s)", p.Name, p.Namespace, p.Log)
		}
	}
	if nsExists[l.Router] {
		if rep.BGP, err = l.BGPSessions(); err != nil {
			problem("router BIRD: %v", err)
		}
		for _, b := range rep.BGP {
			if b.State != "Established" {
				problem("BGP session %s with %s: %s", b.Session, b.Node, b.State)
			}
		}
		if rep.VIPNextHops, err = l.VIPRoutes(); err != nil {
			problem("VIP routes: %v", err)
		}
	}
	return rep, nil
}

func addrStrings(as ...netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func nsStatus(name string, r Role, t topology) (NamespaceStatus, error) {
	st := NamespaceStatus{Role: r, Name: name, MissingLinks: t.linkNames(r)}
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
	if st.Sysctls, err = readSysctls(name, t.sysctls[r]); err != nil {
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
