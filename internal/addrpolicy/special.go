// Package addrpolicy decides which destinations a converter may reach
// without being told: not the special-purpose ranges of the IANA registries
// (RFC 6890 and its updates), wherever they hide (IPv4-mapped, NAT64,
// 6to4), and not what the converter's own routing table delivers locally
// or to many hosts at once.
package addrpolicy

import (
	"net/netip"
)

// Range is one special-purpose block and why it is refused.
type Range struct {
	Prefix netip.Prefix
	Name   string
	Ref    string // the RFC that reserves it
}

func r(p, name, ref string) Range { return Range{netip.MustParsePrefix(p), name, ref} }

// SpecialRanges are the blocks of the IANA IPv4 and IPv6 Special-Purpose
// Address Registries that are not globally reachable, plus the reserved
// and deprecated blocks no server lives in. The globally reachable
// special blocks (AS112, AMT, ORCHIDv2, and TURN and PCP anycast inside
// 192.0.0.0/24) are ordinary destinations.
var SpecialRanges = []Range{
	r("0.0.0.0/8", "this network", "RFC 791"),
	r("10.0.0.0/8", "private", "RFC 1918"),
	r("100.64.0.0/10", "shared address space (CGN)", "RFC 6598"),
	r("127.0.0.0/8", "loopback", "RFC 1122"),
	r("169.254.0.0/16", "link-local (cloud metadata lives here)", "RFC 3927"),
	r("172.16.0.0/12", "private", "RFC 1918"),
	r("192.0.0.0/29", "IPv4 service continuity (DS-Lite)", "RFC 7335"),
	r("192.0.0.8/32", "IPv4 dummy address", "RFC 7600"),
	r("192.0.0.170/31", "NAT64/DNS64 discovery", "RFC 8880"),
	r("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
	r("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
	r("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
	r("192.168.0.0/16", "private", "RFC 1918"),
	r("198.18.0.0/15", "benchmarking", "RFC 2544"),
	r("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
	r("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
	r("224.0.0.0/4", "multicast", "RFC 5771"),
	r("240.0.0.0/4", "reserved", "RFC 1112"),
	r("255.255.255.255/32", "limited broadcast", "RFC 919"),

	r("::/128", "unspecified", "RFC 4291"),
	r("::1/128", "loopback", "RFC 4291"),
	r("::/96", "deprecated IPv4-compatible", "RFC 4291"),
	r("100::/64", "discard-only", "RFC 6666"),
	r("100:0:0:1::/64", "dummy IPv6 prefix", "RFC 9780"),
	r("2001::/32", "Teredo", "RFC 4380"),
	r("2001:2::/48", "benchmarking", "RFC 5180"),
	r("2001:10::/28", "deprecated ORCHID", "RFC 4843"),
	r("2001:db8::/32", "documentation", "RFC 3849"),
	r("3fff::/20", "documentation", "RFC 9637"),
	r("5f00::/16", "segment routing SIDs", "RFC 9602"),
	r("fc00::/7", "unique local (ULA)", "RFC 4193"),
	r("fe80::/10", "link-local", "RFC 4291"),
	r("fec0::/10", "deprecated site-local", "RFC 3879"),
	r("ff00::/8", "multicast", "RFC 4291"),
}

// Prefixes that carry an IPv4 address inside an IPv6 one; the IPv4 address
// is checked as if it were the destination.
var (
	nat64WellKnown = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052
	nat64LocalUse  = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215
	sixToFour      = netip.MustParsePrefix("2002::/16")      // RFC 3056
)

// Special returns the special-purpose range a is in, looking through
// IPv4-mapped, NAT64 and 6to4 forms to the IPv4 address they carry.
func Special(a netip.Addr) (Range, bool) {
	a = a.Unmap()
	for _, v4 := range embedded(a) {
		if rg, ok := lookup(v4); ok {
			rg.Name += " (embedded in " + a.String() + ")"
			return rg, true
		}
	}
	return lookup(a)
}

// globalExceptions are globally reachable addresses inside a listed
// block: PCP and TURN anycast (RFC 7723, RFC 8155).
var globalExceptions = []netip.Prefix{
	netip.MustParsePrefix("192.0.0.9/32"),
	netip.MustParsePrefix("192.0.0.10/32"),
}

func lookup(a netip.Addr) (Range, bool) {
	for _, p := range globalExceptions {
		if p.Contains(a) {
			return Range{}, false
		}
	}
	for _, rg := range SpecialRanges {
		if rg.Prefix.Contains(a) {
			return rg, true
		}
	}
	return Range{}, false
}

// embedded returns the IPv4 addresses an IPv6 address may carry: NAT64
// (RFC 6052: the last 32 bits with a /96 prefix; for the /48 local-use
// prefix also bits 48-63 and 72-87, skipping the u octet) and 6to4
// (bits 16-47).
func embedded(a netip.Addr) []netip.Addr {
	if !a.Is6() {
		return nil
	}
	b := a.As16()
	last := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case nat64WellKnown.Contains(a):
		return []netip.Addr{last}
	case nat64LocalUse.Contains(a):
		return []netip.Addr{last, netip.AddrFrom4([4]byte{b[6], b[7], b[9], b[10]})}
	case sixToFour.Contains(a):
		return []netip.Addr{netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})}
	}
	return nil
}

// UnmapPrefix turns an IPv4-mapped prefix (::ffff:10.0.0.0/104) into the
// IPv4 prefix it means (10.0.0.0/8), so that it matches unmapped
// addresses; other prefixes come back masked.
func UnmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}
