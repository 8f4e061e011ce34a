package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// BGPSession is one of the cluster router's BGP sessions.
type BGPSession struct {
	Node    string `json:"node"`    // the node's namespace
	Session string `json:"session"` // BIRD's protocol name: n1v4, n1v6, ...
	Family  string `json:"family"`  // ipv4 or ipv6
	// State is the BGP state: Established, or Idle, Connect, Active,
	// OpenSent, OpenConfirm; Down when the protocol is down.
	State string `json:"state"`
	Since string `json:"since"`
	Info  string `json:"info,omitempty"`
}

// BGPSessions asks the router's BIRD for its sessions (`birdc -s
// RunDir/rt/bird.ctl show protocols`).
func (l *Lab) BGPSessions() ([]BGPSession, error) {
	if !l.IsCluster() {
		return nil, nil
	}
	lines, err := birdCommand(l.RouterBIRD(), "show protocols", 3*time.Second)
	if err != nil {
		return nil, err
	}
	var out []BGPSession
	for _, p := range parseShowProtocols(lines) {
		if p.Proto != "BGP" {
			continue
		}
		s := BGPSession{Session: p.Name, State: p.bgpState(), Since: p.Since, Info: p.Info}
		if rest, ok := strings.CutPrefix(p.Name, "n"); ok && len(rest) > 2 {
			k, err := strconv.Atoi(rest[:len(rest)-2])
			if err == nil && k >= 1 && k <= len(l.Nodes) {
				s.Node = l.Nodes[k-1].NS
			}
			s.Family = map[string]string{"v4": "ipv4", "v6": "ipv6"}[rest[len(rest)-2:]]
		}
		out = append(out, s)
	}
	return out, nil
}

// VIPNextHop is one path of a VIP on the router.
type VIPNextHop struct {
	Node string `json:"node,omitempty"` // the node's namespace
	Via  string `json:"via"`
	Dev  string `json:"dev"`
	// ID is the member nexthop object; Buckets the resilient group's
	// buckets it holds.
	ID      uint32 `json:"id,omitempty"`
	Buckets int    `json:"buckets,omitempty"`
}

// VIPRoute is how the router forwards one VIP: through the watcher's
// resilient group (Group, Members) when it is installed, else BIRD's own
// multipath route (BIRD, the paths BIRD merged, in both cases).
type VIPRoute struct {
	VIP       string       `json:"vip"`
	Group     uint32       `json:"group,omitempty"`
	Resilient bool         `json:"resilient"`
	Installed bool         `json:"installed"` // the route to the group exists
	Members   []VIPNextHop `json:"members"`
	BIRD      []VIPNextHop `json:"bird_paths"`
}

// MemberNodes returns the namespaces of the group's members.
func (r VIPRoute) MemberNodes() []string {
	var out []string
	for _, m := range r.Members {
		out = append(out, m.Node)
	}
	return out
}

// VIPRoutes reads how the router forwards each VIP, with bucket counts.
func (l *Lab) VIPRoutes() ([]VIPRoute, error) {
	var out []VIPRoute
	err := RunIn(l.Router, func() error {
		for _, v := range l.VIPs {
			r, err := l.vipRoute(v, true)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// vipRoute reads the route of vip in the calling thread's namespace, the
// router's.
func (l *Lab) vipRoute(vip netip.Addr, buckets bool) (VIPRoute, error) {
	idx := slices.Index(l.VIPs, vip)
	if idx < 0 {
		return VIPRoute{}, fmt.Errorf("%s is not a VIP of lab %s", vip, l.Prefix)
	}
	out := VIPRoute{VIP: vip.String(), Members: []VIPNextHop{}, BIRD: []VIPNextHop{}}
	pfx := netip.PrefixFrom(vip, vip.BitLen())
	rs, err := routesTo(pfx, mainTable)
	if err != nil {
		return out, err
	}
	names := map[int]string{}
	describe := func(h hop) VIPNextHop {
		name, ok := names[h.oif]
		if !ok {
			if link, err := netlink.LinkByIndex(h.oif); err == nil {
				name = link.Attrs().Name
			}
			names[h.oif] = name
		}
		nh := VIPNextHop{Via: h.gw.String(), Dev: name}
		if k, err := strconv.Atoi(strings.TrimPrefix(name, "r-n")); err == nil && k >= 1 && k <= len(l.Nodes) {
			nh.Node = l.Nodes[k-1].NS
		}
		return nh
	}
	for _, r := range rs {
		switch int(r.Protocol) {
		case nhProto:
			out.Installed = true
		case birdProto:
			for _, h := range routeHops(r) {
				out.BIRD = append(out.BIRD, describe(h))
			}
		}
	}
	gid := uint32(nhGroupIDBase + idx)
	objs, err := dumpNexthops()
	if err != nil {
		return out, err
	}
	g, ok := objs[gid]
	if !ok {
		return out, nil
	}
	out.Group, out.Resilient = gid, g.resilient
	var counts map[uint32]int
	if buckets && g.resilient {
		if counts, err = dumpBuckets(gid); err != nil {
			return out, err
		}
	}
	for _, id := range g.group {
		m, ok := objs[id]
		if !ok {
			continue
		}
		nh := describe(m.hop)
		nh.ID, nh.Buckets = id, counts[id]
		out.Members = append(out.Members, nh)
	}
	byDev := func(a, b VIPNextHop) int { return cmpIfName(a.Dev, b.Dev) }
	slices.SortFunc(out.Members, byDev)
	slices.SortFunc(out.BIRD, byDev)
	return out, nil
}

// cmpIfName orders r-n2 before r-n10.
func cmpIfName(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

// WaitVIP waits until cond holds for the router's route of vip, and
// returns that route and when the change that made cond hold arrived. It
// follows the router's nexthop and route notifications, so the time is
// that of the event, not of a poll.
func (l *Lab) WaitVIP(ctx context.Context, vip netip.Addr, cond func(VIPRoute) bool) (VIPRoute, time.Time, error) {
	var r VIPRoute
	var at time.Time
	err := RunIn(l.Router, func() error {
		s, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_NEXTHOP, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
		if err != nil {
			return fmt.Errorf("subscribe to the router's routes: %w", err)
		}
		defer s.Close()
		if err := s.SetReceiveTimeout(&unix.Timeval{Usec: 50_000}); err != nil {
			return err
		}
		at = time.Now()
		for {
			if r, err = l.vipRoute(vip, false); err != nil {
				return err
			}
			if cond(r) {
				return nil
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("wait for VIP %s (now %v): %w", vip, r.MemberNodes(), err)
			}
			_, _, err := s.Receive()
			at = time.Now()
			if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				if errors.Is(err, unix.ENOBUFS) {
					continue // missed events: the next read of the state has them
				}
				return fmt.Errorf("router notifications: %w", err)
			}
		}
	})
	return r, at, err
}

// clusterDevice returns a node's converter device (cvclusterN) and its
// global addresses, if a converter runs there.
func clusterDevice(ns string) (string, []string, error) {
	links, err := linkStatuses(ns)
	if err != nil {
		return "", nil, err
	}
	for _, l := range links {
		if strings.HasPrefix(l.Name, "cvcluster") {
			var addrs []string
			for _, a := range l.Addrs {
				p, err := netip.ParsePrefix(a)
				if err == nil {
					addrs = append(addrs, p.Addr().String())
				}
			}
			return l.Name, addrs, nil
		}
	}
	return "", nil, nil
}

// processes reports the cluster lab's BIRD instances and watcher.
func (l *Lab) processes() []ProcessStatus {
	var out []ProcessStatus
	bird := func(ns string, f birdFiles) {
		pid := livePID(f.pid, f.conf)
		out = append(out, ProcessStatus{Name: "bird", Namespace: ns, PID: pid, Running: pid > 0, Log: f.log, Control: f.ctl})
	}
	bird(l.Router, birdPaths(l.routerDir()))
	pidFile, logFile := l.watcherFiles()
	pid := livePID(pidFile, pidFile)
	out = append(out, ProcessStatus{Name: "nhsync", Namespace: l.Router, PID: pid, Running: pid > 0, Log: logFile})
	for _, n := range l.Nodes {
		bird(n.NS, birdPaths(l.nodeDir(n.Index)))
	}
	return out
}
