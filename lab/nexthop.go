package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Kernel nexthop objects (linux/nexthop.h). vishvananda/netlink v1.3.1 has
// no API for them, so they are raw RTM_*NEXTHOP* messages built with its nl
// package. Every function here works in the calling thread's namespace.
const (
	nhaID          = 1
	nhaGroup       = 2
	nhaGroupType   = 3
	nhaOIF         = 5
	nhaGateway     = 6
	nhaResGroup    = 12
	nhaResBucket   = 13
	resBuckets     = 1 // NHA_RES_GROUP_BUCKETS
	resIdleTimer   = 2
	resUnbalTimer  = 3
	bucketIndex    = 1 // NHA_RES_BUCKET_INDEX
	bucketNHID     = 3 // NHA_RES_BUCKET_NH_ID
	groupTypeRes   = 1 // NEXTHOP_GRP_TYPE_RES
	rtaNHID        = 30
	userHZ         = 100 // clock_t units of the timers
	nhMsgLen       = 8
	nhGroupIDBase  = 20900 // + the route's index
	nhMemberIDBase = 21000
	nhMemberIDMax  = 21999
)

// nhProto stamps the watcher's nexthops and routes ("proto 209" in ip).
const nhProto = 209

// hop is one path of a route: a gateway out of an interface.
type hop struct {
	oif int
	gw  netip.Addr
}

func (h hop) less(o hop) int {
	if h.oif != o.oif {
		return h.oif - o.oif
	}
	return h.gw.Compare(o.gw)
}

// nhObj is a kernel nexthop object as a dump shows it.
type nhObj struct {
	id        uint32
	proto     uint8
	hop       hop
	group     []uint32 // members, for a group
	resilient bool
}

type nhMsg struct {
	family, scope, protocol uint8
	flags                   uint32
}

func (m *nhMsg) Len() int { return nhMsgLen }
func (m *nhMsg) Serialize() []byte {
	b := []byte{m.family, m.scope, m.protocol, 0, 0, 0, 0, 0}
	binary.NativeEndian.PutUint32(b[4:], m.flags)
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func u16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }

// dumpNexthops returns every nexthop object by id.
func dumpNexthops() (map[uint32]*nhObj, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP)
	req.AddData(&nhMsg{family: unix.AF_UNSPEC})
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, fmt.Errorf("dump nexthops: %w", err)
	}
	out := map[uint32]*nhObj{}
	for _, m := range msgs {
		if len(m) < nhMsgLen {
			continue
		}
		o := &nhObj{proto: m[2]}
		attrs, err := nl.ParseRouteAttr(m[nhMsgLen:])
		if err != nil {
			return nil, fmt.Errorf("parse nexthop: %w", err)
		}
		for _, a := range attrs {
			switch a.Attr.Type {
			case nhaID:
				o.id = binary.NativeEndian.Uint32(a.Value)
			case nhaOIF:
				o.hop.oif = int(binary.NativeEndian.Uint32(a.Value))
			case nhaGateway:
				o.hop.gw, _ = netip.AddrFromSlice(a.Value)
			case nhaGroup:
				o.group = []uint32{}
				for i := 0; i+8 <= len(a.Value); i += 8 {
					o.group = append(o.group, binary.NativeEndian.Uint32(a.Value[i:]))
				}
			case nhaGroupType:
				o.resilient = binary.NativeEndian.Uint16(a.Value) == groupTypeRes
			}
		}
		out[o.id] = o
	}
	return out, nil
}

// dumpBuckets counts the buckets of resilient group gid by member id.
func dumpBuckets(gid uint32) (map[uint32]int, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEXTHOPBUCKET, unix.NLM_F_DUMP)
	req.AddData(&nhMsg{family: unix.AF_UNSPEC})
	req.AddData(nl.NewRtAttr(nhaID, u32(gid)))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOPBUCKET)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, fmt.Errorf("dump buckets of nexthop %d: %w", gid, err)
	}
	out := map[uint32]int{}
	for _, m := range msgs {
		if len(m) < nhMsgLen {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nhMsgLen:])
		if err != nil {
			return nil, fmt.Errorf("parse bucket: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != nhaResBucket {
				continue
			}
			inner, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return nil, fmt.Errorf("parse bucket: %w", err)
			}
			for _, b := range inner {
				if b.Attr.Type == bucketNHID {
					out[binary.NativeEndian.Uint32(b.Value)]++
				}
			}
		}
	}
	return out, nil
}

// addMember creates the plain nexthop id: via h.
func addMember(id uint32, h hop) error {
	fam := uint8(unix.AF_INET)
	if h.gw.Is6() {
		fam = unix.AF_INET6
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWNEXTHOP, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(&nhMsg{family: fam, protocol: nhProto})
	req.AddData(nl.NewRtAttr(nhaID, u32(id)))
	req.AddData(nl.NewRtAttr(nhaOIF, u32(uint32(h.oif))))
	req.AddData(nl.NewRtAttr(nhaGateway, h.gw.AsSlice()))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// resParams are a resilient group's parameters.
type resParams struct {
	buckets    uint16
	idle       uint32 // seconds
	unbalanced uint32 // seconds
}

// setGroup creates resilient group id, or replaces its member list.
func setGroup(id uint32, members []uint32, p resParams, replace bool) error {
	flags := unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK
	if replace {
		flags = unix.NLM_F_REPLACE | unix.NLM_F_ACK
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWNEXTHOP, flags)
	req.AddData(&nhMsg{family: unix.AF_UNSPEC, protocol: nhProto})
	req.AddData(nl.NewRtAttr(nhaID, u32(id)))
	g := make([]byte, 0, 8*len(members))
	for _, m := range members {
		g = binary.NativeEndian.AppendUint32(g, m)
		g = append(g, 0, 0, 0, 0) // weight-1 = 0, reserved
	}
	req.AddData(nl.NewRtAttr(nhaGroup, g))
	req.AddData(nl.NewRtAttr(nhaGroupType, u16(groupTypeRes)))
	res := nl.NewRtAttr(nhaResGroup|unix.NLA_F_NESTED, nil)
	if !replace { // the bucket count cannot change on replace
		res.AddRtAttr(resBuckets, u16(p.buckets))
	}
	res.AddRtAttr(resIdleTimer, u32(p.idle*userHZ))
	res.AddRtAttr(resUnbalTimer, u32(p.unbalanced*userHZ))
	req.AddData(res)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func delNexthop(id uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK)
	req.AddData(&nhMsg{family: unix.AF_UNSPEC})
	req.AddData(nl.NewRtAttr(nhaID, u32(id)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// routeMsg starts an RTM_NEWROUTE or RTM_DELROUTE for pfx with our protocol.
func routeMsg(pfx netip.Prefix, table, metric, cmd, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(cmd, flags|unix.NLM_F_ACK)
	m := nl.NewRtMsg()
	m.Family = unix.AF_INET
	if pfx.Addr().Is6() {
		m.Family = unix.AF_INET6
	}
	m.Dst_len = uint8(pfx.Bits())
	m.Protocol = nhProto
	m.Table = unix.RT_TABLE_UNSPEC
	req.AddData(m)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, pfx.Addr().AsSlice()))
	req.AddData(nl.NewRtAttr(unix.RTA_TABLE, u32(uint32(table))))
	req.AddData(nl.NewRtAttr(unix.RTA_PRIORITY, u32(uint32(metric))))
	return req
}

// setGroupRoute points pfx at nexthop group gid.
func setGroupRoute(pfx netip.Prefix, table, metric int, gid uint32) error {
	req := routeMsg(pfx, table, metric, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	req.AddData(nl.NewRtAttr(rtaNHID, u32(gid)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func delGroupRoute(pfx netip.Prefix, table, metric int) error {
	_, err := routeMsg(pfx, table, metric, unix.RTM_DELROUTE, 0).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// routesTo lists table's routes to exactly pfx.
func routesTo(pfx netip.Prefix, table int) ([]netlink.Route, error) {
	fam := netlink.FAMILY_V4
	if pfx.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: table, Dst: ipNet(pfx)},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
	if err != nil {
		return nil, fmt.Errorf("list routes to %s: %w", pfx, err)
	}
	return rs, nil
}

// routeHops returns the live paths of a plain or multipath route.
func routeHops(r netlink.Route) []hop {
	var hops []hop
	add := func(oif int, gw net.IP, flags int) {
		a, ok := netip.AddrFromSlice(gw)
		if ok && flags&unix.RTNH_F_DEAD == 0 {
			hops = append(hops, hop{oif, a.Unmap()})
		}
	}
	if len(r.MultiPath) > 0 {
		for _, nh := range r.MultiPath {
			add(nh.LinkIndex, nh.Gw, nh.Flags)
		}
	} else if r.Gw != nil {
		add(r.LinkIndex, r.Gw, r.Flags)
	}
	slices.SortFunc(hops, hop.less)
	return hops
}

// isErrno reports whether err is the errno e.
func isErrno(err error, e syscall.Errno) bool { return errors.Is(err, e) }
