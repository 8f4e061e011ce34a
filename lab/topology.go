package lab

import (
	"net/netip"
	"strconv"
	"strings"
)

// Role identifies one of the lab namespaces.
type Role string

const (
	RoleClient    Role = "client"
	RoleConverter Role = "converter"
	RoleServer    Role = "server"
	// RoleRouter is the cluster lab's router (Config.Nodes >= 2).
	RoleRouter Role = "router"
)

// NodeRole is the role of node k (1-based) of a cluster lab.
func NodeRole(k int) Role { return Role("node" + strconv.Itoa(k)) }

// nodeIndex returns k for NodeRole(k), or 0.
func nodeIndex(r Role) int {
	s, ok := strings.CutPrefix(string(r), "node")
	if !ok {
		return 0
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 1 {
		return 0
	}
	return k
}

// roles lists the namespaces of the default lab in creation order.
var roles = []Role{RoleClient, RoleConverter, RoleServer}

// nsSuffix maps a role to the suffix appended to the lab prefix.
func nsSuffix(r Role) string {
	switch r {
	case RoleClient:
		return "-cli"
	case RoleConverter:
		return "-conv"
	case RoleRouter:
		return "-rt"
	}
	if k := nodeIndex(r); k > 0 {
		return "-n" + strconv.Itoa(k)
	}
	return "-srv"
}

// nsName returns the netns name of role r in the lab with the given prefix.
func nsName(prefix string, r Role) string { return prefix + nsSuffix(r) }

// Interface names, unique per namespace (names only need to be unique there).
const (
	IfClientPath1 = "c1"
	IfClientPath2 = "c2"
	IfConvPath1   = "cv1"
	IfConvPath2   = "cv2"
	IfConvServer  = "sv"
	IfServer      = "s1"
)

// path2Table is the client routing table used for traffic sourced from path 2.
const path2Table = 102

// Addresses holds every lab address; all are fixed so tests can hard-code them.
type Addresses struct {
	ClientPath1V4, ClientPath2V4, ConvPath1V4, ConvPath2V4, ConvServerV4, ServerV4 netip.Addr
	ClientPath1V6, ClientPath2V6, ConvPath1V6, ConvPath2V6, ConvServerV6, ServerV6 netip.Addr
}

// DefaultAddresses returns the addresses used by every lab.
func DefaultAddresses() Addresses {
	return Addresses{
		ClientPath1V4: netip.MustParseAddr("10.201.1.2"),
		ClientPath2V4: netip.MustParseAddr("10.201.2.2"),
		ConvPath1V4:   netip.MustParseAddr("10.201.1.1"),
		ConvPath2V4:   netip.MustParseAddr("10.201.2.1"),
		ConvServerV4:  netip.MustParseAddr("10.201.3.1"),
		ServerV4:      netip.MustParseAddr("10.201.3.2"),
		ClientPath1V6: netip.MustParseAddr("fd01:1::2"),
		ClientPath2V6: netip.MustParseAddr("fd01:2::2"),
		ConvPath1V6:   netip.MustParseAddr("fd01:1::1"),
		ConvPath2V6:   netip.MustParseAddr("fd01:2::1"),
		ConvServerV6:  netip.MustParseAddr("fd01:3::1"),
		ServerV6:      netip.MustParseAddr("fd01:3::2"),
	}
}

// end is one side of a veth pair.
type end struct {
	role  Role
	name  string
	addrs []netip.Prefix
}

// vethSpec is a veth pair connecting two namespaces.
type vethSpec struct{ a, b end }

func v4(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 24) }
func v6(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 64) }

func vethSpecs(ad Addresses) []vethSpec {
	return []vethSpec{
		{
			a: end{RoleClient, IfClientPath1, []netip.Prefix{v4(ad.ClientPath1V4), v6(ad.ClientPath1V6)}},
			b: end{RoleConverter, IfConvPath1, []netip.Prefix{v4(ad.ConvPath1V4), v6(ad.ConvPath1V6)}},
		},
		{
			a: end{RoleClient, IfClientPath2, []netip.Prefix{v4(ad.ClientPath2V4), v6(ad.ClientPath2V6)}},
			b: end{RoleConverter, IfConvPath2, []netip.Prefix{v4(ad.ConvPath2V4), v6(ad.ConvPath2V6)}},
		},
		{
			a: end{RoleConverter, IfConvServer, []netip.Prefix{v4(ad.ConvServerV4), v6(ad.ConvServerV6)}},
			b: end{RoleServer, IfServer, []netip.Prefix{v4(ad.ServerV4), v6(ad.ServerV6)}},
		},
	}
}

// linkNames returns the interfaces each role of the default lab should have
// once it is up.
func linkNames(r Role) []string { return defaultTopology(DefaultAddresses()).linkNames(r) }

// routeSpec is a default route via gw out of dev in table (0 = main).
type routeSpec struct {
	dev   string
	gw    netip.Addr
	table int
}

// ruleSpec sends traffic sourced from src to table.
type ruleSpec struct {
	src   netip.Addr
	table int
}

func routeSpecs(r Role, ad Addresses) []routeSpec {
	switch r {
	case RoleClient:
		return []routeSpec{
			{IfClientPath1, ad.ConvPath1V4, 0},
			{IfClientPath1, ad.ConvPath1V6, 0},
			{IfClientPath2, ad.ConvPath2V4, path2Table},
			{IfClientPath2, ad.ConvPath2V6, path2Table},
		}
	case RoleServer:
		return []routeSpec{
			{IfServer, ad.ConvServerV4, 0},
			{IfServer, ad.ConvServerV6, 0},
		}
	default:
		return nil // the converter is directly connected to everything
	}
}

func ruleSpecs(r Role, ad Addresses) []ruleSpec {
	if r != RoleClient {
		return nil
	}
	return []ruleSpec{{ad.ClientPath2V4, path2Table}, {ad.ClientPath2V6, path2Table}}
}

// sysctl is one /proc/sys/net setting, key in dotted form.
type sysctl struct{ key, value string }

// sysctlSpecs returns the per-netns settings for role r. They are applied
// before any link exists so "default" values reach the new veths.
func sysctlSpecs(r Role) []sysctl {
	common := commonSysctls()
	switch r {
	case RoleClient:
		return append(common,
			sysctl{"net.ipv4.tcp_fastopen", "5"}, // client + no cookie needed
			sysctl{"net.ipv4.ip_local_port_range", "1024 65535"},
		)
	case RoleConverter:
		return append(common,
			sysctl{"net.ipv4.tcp_fastopen", "3"},
			sysctl{"net.ipv4.ip_forward", "1"},
			sysctl{"net.ipv6.conf.all.forwarding", "1"},
		)
	default:
		return append(common, sysctl{"net.ipv4.tcp_fastopen", "3"})
	}
}

// commonSysctls are the settings of every lab namespace.
func commonSysctls() []sysctl {
	return []sysctl{
		{"net.mptcp.enabled", "1"},
		// Addresses must be usable at once; DAD would delay them ~1-2 s.
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		// IPv4 conf is inherited from the host, which may use strict rp_filter.
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		// Cached metrics from earlier runs would skew benchmarks.
		{"net.ipv4.tcp_no_metrics_save", "1"},
	}
}

// mptcpEndpoints returns the MPTCP subflow endpoints of role r.
func mptcpEndpoints(r Role, ad Addresses) []MPTCPEndpoint {
	if r != RoleClient {
		return nil
	}
	return []MPTCPEndpoint{
		{Address: ad.ClientPath2V4.String(), Dev: IfClientPath2, Subflow: true},
		{Address: ad.ClientPath2V6.String(), Dev: IfClientPath2, Subflow: true},
	}
}

// mptcpLimit is applied in every namespace so both ends accept extra subflows.
const mptcpLimit = 4

// topology is the shape of a lab: what Up builds and Status checks.
type topology struct {
	roles     []Role // namespaces, in creation order
	veths     []vethSpec
	lo        map[Role][]netip.Prefix // extra addresses on lo
	routes    map[Role][]routeSpec
	rules     map[Role][]ruleSpec
	sysctls   map[Role][]sysctl
	endpoints map[Role][]MPTCPEndpoint
	limits    map[Role]MPTCPLimits // absent: mptcpLimit for both
}

// mptcpLimits are the path-manager limits of role r.
func (t topology) mptcpLimits(r Role) MPTCPLimits {
	if l, ok := t.limits[r]; ok {
		return l
	}
	return MPTCPLimits{Subflows: mptcpLimit, AddAddrAccepted: mptcpLimit}
}

// defaultTopology is the three-namespace lab.
func defaultTopology(ad Addresses) topology {
	t := topology{
		roles:     roles,
		veths:     vethSpecs(ad),
		routes:    map[Role][]routeSpec{},
		rules:     map[Role][]ruleSpec{},
		sysctls:   map[Role][]sysctl{},
		endpoints: map[Role][]MPTCPEndpoint{},
	}
	for _, r := range roles {
		t.routes[r] = routeSpecs(r, ad)
		t.rules[r] = ruleSpecs(r, ad)
		t.sysctls[r] = sysctlSpecs(r)
		t.endpoints[r] = mptcpEndpoints(r, ad)
	}
	return t
}

// linkNames returns the interfaces role r should have once the lab is up.
func (t topology) linkNames(r Role) []string {
	var names []string
	for _, v := range t.veths {
		for _, e := range []end{v.a, v.b} {
			if e.role == r {
				names = append(names, e.name)
			}
		}
	}
	return names
}
