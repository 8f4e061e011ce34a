package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// The cluster lab (Config.Nodes >= 2): a client with two paths to a
// router, N converter nodes behind the router, and a server.
//
//	client c1 ---- r-c1                r-n1 ---- uplink node 1 (PREFIX-n1)
//	(PREFIX-cli)      router (PREFIX-rt)  ...
//	client c2 ---- r-c2                r-nN ---- uplink node N (PREFIX-nN)
//	                  r-s ---- s1 server (PREFIX-srv)
//
// Its addresses are in 10.202.0.0/16 and fd02::/16, apart from the
// default lab's 10.201.0.0/16 and fd01::/16:
//
//	client c1 10.202.1.2/24  fd02:1::2/64    router r-c1 10.202.1.1  fd02:1::1
//	client c2 10.202.2.2/24  fd02:2::2/64    router r-c2 10.202.2.1  fd02:2::1
//	server s1 10.202.3.2/24  fd02:3::2/64    router r-s  10.202.3.1  fd02:3::1
//	node K uplink 10.202.(10+K).2/24, fd02:(10+K)::2/64; router r-nK .1 / ::1
//	VIP 10.202.100.1, fd02:100::1 (on every node's lo; the converter's device while ready)
//	node K's unique address 10.202.101.K, fd02:101::K (lo; the converter's device)
//
// Every namespace runs one BIRD 2: the router (AS 65000) has an eBGP session
// per node and family (n1v4, n1v6, ...), each node (AS 65100) announces the
// addresses of its converter's device cvclusterN (protocol direct), and the
// router merges the nodes' equal paths into one multipath route, which a
// watcher (`converter lab nhsync`) mirrors into a resilient nexthop group.

// MaxNodes is the largest cluster lab: BIRD merges at most 16 paths here.
const MaxNodes = 16

// BGP settings of the cluster lab.
const (
	RouterAS = 65000
	NodeAS   = 65100
	// HoldTime is the BGP hold time of every session: a node that stops
	// answering (hung, cut off) is withdrawn by the router within it.
	HoldTime      = 3 * time.Second
	KeepaliveTime = 1 * time.Second
	// With Config.BFD, a silent node is detected after BFDInterval x
	// BFDMultiplier instead.
	BFDInterval   = 100 * time.Millisecond
	BFDMultiplier = 3
)

// Interface names of the cluster lab.
const (
	IfRouterClient1 = "r-c1"
	IfRouterClient2 = "r-c2"
	IfRouterServer  = "r-s"
	IfNodeUplink    = "uplink"
)

// IfRouterNode is the router's interface to node k.
func IfRouterNode(k int) string { return "r-n" + strconv.Itoa(k) }

// Node is one converter node of a cluster lab.
type Node struct {
	Index int    // 1 to N
	NS    string // its namespace, PREFIX-nK
	// Addrs are its unique addresses, IPv4 then IPv6: what `converter run
	// --node-address` takes, and what its MPTCP clients join.
	Addrs []netip.Addr
	// Uplink are its addresses on the link to the router (IPv4, IPv6):
	// the source of its connections to the server.
	Uplink []netip.Addr
	// Router are the router's addresses on that link: its BGP peer and
	// default gateway.
	Router []netip.Addr
}

// clusterVIPs are the cluster lab's anycast addresses.
func clusterVIPs() []netip.Addr {
	return []netip.Addr{netip.MustParseAddr("10.202.100.1"), netip.MustParseAddr("fd02:100::1")}
}

func clusterAddr4(c, d int) netip.Addr { return netip.AddrFrom4([4]byte{10, 202, byte(c), byte(d)}) }

// clusterAddr6 is fd02:G::H with G and H written in decimal digits
// (fd02:11::2 for subnet 11), which reads like the IPv4 plan.
func clusterAddr6(g, h int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd02:%d::%d", g, h))
}

// ClusterAddresses returns the client's, the server's and the router's
// addresses in a cluster lab; the Conv fields are the router's (the
// client's and the server's gateway).
func ClusterAddresses() Addresses {
	return Addresses{
		ClientPath1V4: clusterAddr4(1, 2), ClientPath2V4: clusterAddr4(2, 2),
		ConvPath1V4: clusterAddr4(1, 1), ConvPath2V4: clusterAddr4(2, 1),
		ConvServerV4: clusterAddr4(3, 1), ServerV4: clusterAddr4(3, 2),
		ClientPath1V6: clusterAddr6(1, 2), ClientPath2V6: clusterAddr6(2, 2),
		ConvPath1V6: clusterAddr6(1, 1), ConvPath2V6: clusterAddr6(2, 1),
		ConvServerV6: clusterAddr6(3, 1), ServerV6: clusterAddr6(3, 2),
	}
}

// clusterNode describes node k of the lab with prefix.
func clusterNode(prefix string, k int) Node {
	return Node{
		Index:  k,
		NS:     nsName(prefix, NodeRole(k)),
		Addrs:  []netip.Addr{clusterAddr4(101, k), clusterAddr6(101, k)},
		Uplink: []netip.Addr{clusterAddr4(10+k, 2), clusterAddr6(10+k, 2)},
		Router: []netip.Addr{clusterAddr4(10+k, 1), clusterAddr6(10+k, 1)},
	}
}

// routerID is the router's BGP identifier (not an interface address).
var routerID = clusterAddr4(0, 1)

// clusterTopology is the shape of a cluster lab with l.Nodes.
func clusterTopology(l *Lab) topology {
	ad := l.Addr
	t := topology{
		roles:     []Role{RoleClient, RoleRouter},
		lo:        map[Role][]netip.Prefix{},
		routes:    map[Role][]routeSpec{},
		rules:     map[Role][]ruleSpec{},
		sysctls:   map[Role][]sysctl{},
		endpoints: map[Role][]MPTCPEndpoint{},
	}
	t.veths = []vethSpec{
		{
			a: end{RoleClient, IfClientPath1, []netip.Prefix{v4(ad.ClientPath1V4), v6(ad.ClientPath1V6)}},
			b: end{RoleRouter, IfRouterClient1, []netip.Prefix{v4(ad.ConvPath1V4), v6(ad.ConvPath1V6)}},
		},
		{
			a: end{RoleClient, IfClientPath2, []netip.Prefix{v4(ad.ClientPath2V4), v6(ad.ClientPath2V6)}},
			b: end{RoleRouter, IfRouterClient2, []netip.Prefix{v4(ad.ConvPath2V4), v6(ad.ConvPath2V6)}},
		},
		{
			a: end{RoleRouter, IfRouterServer, []netip.Prefix{v4(ad.ConvServerV4), v6(ad.ConvServerV6)}},
			b: end{RoleServer, IfServer, []netip.Prefix{v4(ad.ServerV4), v6(ad.ServerV6)}},
		},
	}
	t.routes[RoleClient] = routeSpecs(RoleClient, ad) // via the router's c1 and c2
	t.rules[RoleClient] = ruleSpecs(RoleClient, ad)
	t.endpoints[RoleClient] = mptcpEndpoints(RoleClient, ad)
	// The kernel's default limits: accepting no ADD_ADDR is what makes the
	// in-kernel path manager (Linux 6.18) answer a peer that set the C
	// flag by joining its one announced address from the subflow
	// endpoints, path 2. With add_addr_accepted > 0 it would join from
	// whatever address routing picks, path 1.
	t.limits = map[Role]MPTCPLimits{RoleClient: {Subflows: 2, AddAddrAccepted: 0}}
	t.routes[RoleServer] = routeSpecs(RoleServer, ad)
	common := commonSysctls()
	t.sysctls[RoleClient] = append(slices.Clone(common),
		// The client bit only: a socket that wants data in its SYN
		// without a cookie asks for it (TCP_FASTOPEN_NO_COOKIE, as the
		// converter's client library does), and other TFO clients send
		// and cache the nodes' cookies, which a shared --tfo-key makes
		// valid on every node.
		sysctl{"net.ipv4.tcp_fastopen", "1"},
		sysctl{"net.ipv4.ip_local_port_range", "1024 65535"},
	)
	t.sysctls[RoleRouter] = append(slices.Clone(common),
		sysctl{"net.ipv4.ip_forward", "1"},
		sysctl{"net.ipv6.conf.all.forwarding", "1"},
		// ECMP on the 5-tuple: one client's connections spread by port.
		sysctl{"net.ipv4.fib_multipath_hash_policy", "1"},
		sysctl{"net.ipv6.fib_multipath_hash_policy", "1"},
	)
	for _, n := range l.Nodes {
		r := NodeRole(n.Index)
		t.roles = append(t.roles, r)
		t.veths = append(t.veths, vethSpec{
			a: end{RoleRouter, IfRouterNode(n.Index), []netip.Prefix{v4(n.Router[0]), v6(n.Router[1])}},
			b: end{r, IfNodeUplink, []netip.Prefix{v4(n.Uplink[0]), v6(n.Uplink[1])}},
		})
		var lo []netip.Prefix
		for _, a := range append(slices.Clone(l.VIPs), n.Addrs...) {
			lo = append(lo, netip.PrefixFrom(a, a.BitLen()))
		}
		t.lo[r] = lo
		t.routes[r] = []routeSpec{{IfNodeUplink, n.Router[0], 0}, {IfNodeUplink, n.Router[1], 0}}
		t.sysctls[r] = append(slices.Clone(common), sysctl{"net.ipv4.tcp_fastopen", "3"})
	}
	t.roles = append(t.roles, RoleServer)
	t.sysctls[RoleServer] = sysctlSpecs(RoleServer)
	return t
}

func slicesClone[T any](s []T) []T { return append([]T(nil), s...) }
