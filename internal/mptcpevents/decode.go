package mptcpevents

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Event attributes (enum mptcp_event_attr, include/uapi/linux/mptcp_pm.h),
// checked against Linux 6.18: see the package tests.
const (
	attrToken       = 1  // u32
	attrFamily      = 2  // u16
	attrLocID       = 3  // u8
	attrRemID       = 4  // u8
	attrSaddr4      = 5  // struct in_addr
	attrSaddr6      = 6  // struct in6_addr
	attrDaddr4      = 7  // struct in_addr
	attrDaddr6      = 8  // struct in6_addr
	attrSport       = 9  // be16
	attrDport       = 10 // be16
	attrBackup      = 11 // u8
	attrError       = 12 // u8 (sk_err)
	attrFlags       = 13 // u16
	attrTimeout     = 14 // u32
	attrIfIdx       = 15 // s32
	attrResetReason = 16 // u32
	attrResetFlags  = 17 // u32
	attrServerSide  = 18 // u8, deprecated for FlagServerSide
)

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER from a type.
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// ErrMalformed is wrapped by Decode errors.
var ErrMalformed = errors.New("malformed mptcp_pm event")

// Decode decodes one event from its generic netlink command and attribute
// payload. Unknown attributes are skipped, so newer kernels still decode;
// a known attribute of an unexpected size is an error, since it means the
// attribute numbers do not match this kernel.
func Decode(cmd uint8, attrs []byte) (Event, error) {
	d := decoder{ev: Event{Type: Type(cmd)}}
	as, err := netlink.UnmarshalAttributes(attrs)
	if err != nil {
		return d.ev, fmt.Errorf("%w: %s: %w", ErrMalformed, d.ev.Type, err)
	}
	for _, a := range as {
		typ := a.Type & nlaTypeMask
		if !d.attr(typ, a.Data) {
			return d.ev, fmt.Errorf("%w: %s: attribute %d has unexpected size %d", ErrMalformed, d.ev.Type, typ, len(a.Data))
		}
	}
	return d.event(), nil
}

// decoder collects attributes; addresses and ports arrive separately.
type decoder struct {
	ev           Event
	laddr, raddr netip.Addr
	lport, rport uint16
}

// attr decodes one attribute and reports whether its size was right.
func (d *decoder) attr(typ uint16, b []byte) bool {
	ev := &d.ev
	var ok bool
	switch typ {
	case attrToken:
		ev.Token, ok = u32(b)
	case attrFamily:
		ev.Family, ok = u16(b)
	case attrLocID:
		ev.LocID, ok = u8(b)
	case attrRemID:
		ev.RemID, ok = u8(b)
	case attrSaddr4, attrSaddr6:
		d.laddr, ok = addr(b, typ == attrSaddr4)
	case attrDaddr4, attrDaddr6:
		d.raddr, ok = addr(b, typ == attrDaddr4)
	case attrSport:
		d.lport, ok = be16(b)
	case attrDport:
		d.rport, ok = be16(b)
	case attrBackup:
		ev.Backup, ok = flag(b)
	case attrError:
		// The kernel puts sk_err as a u8; take any integer width so that a
		// wider type in a later kernel still decodes.
		ev.Error, ok = anyUint(b)
	case attrFlags:
		ev.Flags, ok = u16(b)
	case attrTimeout:
		ev.Timeout, ok = u32(b)
	case attrIfIdx:
		var v uint32
		v, ok = u32(b)
		ev.IfIndex = int32(v)
	case attrResetReason:
		ev.ResetReason, ok = u32(b)
	case attrResetFlags:
		ev.ResetFlags, ok = u32(b)
	case attrServerSide:
		ev.ServerSide, ok = flag(b)
	default:
		return true
	}
	return ok
}

func (d *decoder) event() Event {
	ev := d.ev
	ev.Local = addrPort(d.laddr, d.lport)
	ev.Remote = addrPort(d.raddr, d.rport)
	ev.ServerSide = ev.ServerSide || ev.Flags&FlagServerSide != 0
	return ev
}

// addr decodes an in_addr (v4) or in6_addr attribute.
func addr(b []byte, v4 bool) (netip.Addr, bool) {
	switch {
	case v4 && len(b) == 4:
		return netip.AddrFrom4([4]byte(b)), true
	case !v4 && len(b) == 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}

// addrPort unmaps a (the kernel reports dual-stack sockets' IPv4 peers as
// ::ffff:a.b.c.d) and drops a port that came without an address.
func addrPort(a netip.Addr, port uint16) netip.AddrPort {
	if !a.IsValid() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), port)
}

// Integers are in host byte order except ports, which nla_put_be16 writes
// in network order.
func u8(b []byte) (uint8, bool) {
	if len(b) != 1 {
		return 0, false
	}
	return b[0], true
}

func flag(b []byte) (bool, bool) {
	v, ok := u8(b)
	return v != 0, ok
}

func u16(b []byte) (uint16, bool) {
	if len(b) != 2 {
		return 0, false
	}
	return binary.NativeEndian.Uint16(b), true
}

func be16(b []byte) (uint16, bool) {
	if len(b) != 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), true
}

func u32(b []byte) (uint32, bool) {
	if len(b) != 4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(b), true
}

func anyUint(b []byte) (uint32, bool) {
	switch len(b) {
	case 1:
		return uint32(b[0]), true
	case 2:
		return uint32(binary.NativeEndian.Uint16(b)), true
	case 4:
		return binary.NativeEndian.Uint32(b), true
	}
	return 0, false
}
