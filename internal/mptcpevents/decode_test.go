package mptcpevents

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// nla builds one netlink attribute: length, type, value, padding to 4.
func nla(typ uint16, value []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(value)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func ne16(v uint16) []byte  { return binary.NativeEndian.AppendUint16(nil, v) }
func ne32(v uint32) []byte  { return binary.NativeEndian.AppendUint32(nil, v) }
func be16b(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// captured turns "type/len=hex ..." as logged from a Linux 6.18 kernel
// into an attribute buffer.
func captured(t *testing.T, s string) []byte {
	t.Helper()
	var out []byte
	for _, f := range strings.Fields(s) {
		typLen, val, _ := strings.Cut(f, "=")
		typ, _, _ := strings.Cut(typLen, "/")
		v, err := hex.DecodeString(val)
		if err != nil {
			t.Fatal(err)
		}
		var n uint16
		for _, c := range typ {
			n = n*10 + uint16(c-'0')
		}
		out = append(out, nla(n, v)...)
	}
	return out
}

func TestDecodeCaptured(t *testing.T) {
	le := binary.NativeEndian.Uint16([]byte{1, 0}) == 1
	if !le {
		t.Skip("vectors were captured on a little-endian host")
	}
	ap := netip.MustParseAddrPort
	tests := []struct {
		name string
		cmd  uint8
		raw  string
		want Event
	}{{
		name: "created, converter side, IPv4",
		cmd:  1,
		raw:  "1/4=d52e6811 18/1=01 13/2=0200 2/2=0200 5/4=0ac90101 7/4=0ac90102 9/2=9feb 10/2=4b52 3/1=00 4/1=00",
		want: Event{Type: Created, Token: 0x11682ed5, Family: 2, Local: ap("10.201.1.1:40939"), Remote: ap("10.201.1.2:19282"),
			Flags: FlagServerSide, ServerSide: true},
	}, {
		name: "established on a dual-stack listener: v4-mapped addresses",
		cmd:  2,
		raw:  "1/4=ac6b56d5 18/1=01 13/2=0200 2/2=0a00 6/16=00000000000000000000ffff0ac90101 8/16=00000000000000000000ffff0ac90102 9/2=1404 10/2=e5cc 3/1=00 4/1=00",
		want: Event{Type: Established, Token: 0xd5566bac, Family: 10, Local: ap("10.201.1.1:5124"), Remote: ap("10.201.1.2:58828"),
			Flags: FlagServerSide, ServerSide: true},
	}, {
		name: "sub_established, client side, bound to an interface",
		cmd:  10,
		raw:  "1/4=328a434b 2/2=0200 5/4=0ac90202 7/4=0ac90101 9/2=89d5 10/2=9feb 3/1=01 4/1=00 11/1=00 15/4=03000000",
		want: Event{Type: SubEstablished, Token: 0x4b438a32, Family: 2, Local: ap("10.201.2.2:35285"), Remote: ap("10.201.1.1:40939"),
			LocID: 1, IfIndex: 3},
	}, {
		// Captured with backup 0 and reset reason/flags 0; set here to
		// non-zero values so that their decoding shows.
		name: "sub_closed after a reset",
		cmd:  11,
		raw:  "1/4=70db9152 2/2=0200 5/4=0ac90202 7/4=0ac90101 9/2=2e77 10/2=1404 3/1=01 4/1=00 11/1=01 15/4=03000000 12/1=68 16/4=01000000 17/4=02000000",
		want: Event{Type: SubClosed, Token: 0x5291db70, Family: 2, Local: ap("10.201.2.2:11895"), Remote: ap("10.201.1.1:5124"),
			LocID: 1, Backup: true, IfIndex: 3, Error: 104, ResetReason: 1, ResetFlags: 2},
	}, {
		name: "announced with a port",
		cmd:  6,
		raw:  "1/4=d52e6811 4/1=03 10/2=1e61 7/4=0ac90202",
		want: Event{Type: Announced, Token: 0x11682ed5, RemID: 3, Remote: ap("10.201.2.2:7777")},
	}, {
		name: "removed",
		cmd:  7,
		raw:  "1/4=d52e6811 4/1=03",
		want: Event{Type: Removed, Token: 0x11682ed5, RemID: 3},
	}, {
		name: "listener_created on [::]",
		cmd:  15,
		raw:  "2/2=0a00 9/2=93e5 6/16=00000000000000000000000000000000",
		want: Event{Type: ListenerCreated, Family: 10, Local: ap("[::]:37861")},
	}, {
		name: "closed",
		cmd:  3,
		raw:  "1/4=328a434b",
		want: Event{Type: Closed, Token: 0x4b438a32},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(tc.cmd, captured(t, tc.raw))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeBuilt(t *testing.T) {
	a6 := netip.MustParseAddr("fd01:2::1")
	b6 := netip.MustParseAddr("fd01:2::2")
	buf := concat(
		nla(attrToken, ne32(0xdeadbeef)),
		nla(attrFamily, ne16(10)),
		nla(attrLocID, []byte{7}),
		nla(attrRemID, []byte{9}),
		nla(attrSaddr6, a6.AsSlice()),
		nla(attrDaddr6, b6.AsSlice()),
		nla(attrSport, be16b(443)),
		nla(attrDport, be16b(50000)),
		nla(attrBackup, []byte{1}),
		nla(attrTimeout, ne32(30)),
		nla(attrError, ne32(110)),             // a wider error still decodes
		nla(99, []byte{1, 2, 3}),              // unknown: skipped
		nla(attrServerSide|0x4000, []byte{1}), // NLA_F_NET_BYTEORDER is ignored
	)
	got, err := Decode(uint8(SubPriority), buf)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{Type: SubPriority, Token: 0xdeadbeef, Family: 10, LocID: 7, RemID: 9,
		Local: netip.AddrPortFrom(a6, 443), Remote: netip.AddrPortFrom(b6, 50000),
		Backup: true, Timeout: 30, Error: 110, ServerSide: true}
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestDecodeMalformed(t *testing.T) {
	for name, buf := range map[string][]byte{
		"token of 2 bytes":       nla(attrToken, ne16(1)),
		"IPv4 address in saddr6": nla(attrSaddr6, []byte{10, 0, 0, 1}),
		"IPv6 address in daddr4": nla(attrDaddr4, make([]byte, 16)),
		"port of 4 bytes":        nla(attrSport, ne32(80)),
		"truncated attribute":    nla(attrToken, ne32(1))[:6],
		"length past the end":    {0xff, 0x00, 0x01, 0x00},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(uint8(Created), buf); !errors.Is(err, ErrMalformed) {
				t.Errorf("Decode = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestTypeString(t *testing.T) {
	for typ, want := range map[Type]string{Created: "created", SubEstablished: "sub_established", Overflow: "overflow", 42: "event(42)"} {
		if got := typ.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", uint8(typ), got, want)
		}
	}
}

// FuzzDecode checks that no input panics and that a decoded event only
// holds addresses the attributes could carry.
func FuzzDecode(f *testing.F) {
	f.Add(uint8(1), concat(nla(attrToken, ne32(1)), nla(attrSaddr4, []byte{10, 0, 0, 1}), nla(attrSport, be16b(80))))
	f.Add(uint8(10), concat(nla(attrSaddr6, make([]byte, 16)), nla(attrError, []byte{104}), nla(attrIfIdx, ne32(3))))
	f.Add(uint8(3), []byte{})
	f.Fuzz(func(t *testing.T, cmd uint8, b []byte) {
		ev, err := Decode(cmd, b)
		if err != nil {
			return
		}
		if ev.Type != Type(cmd) {
			t.Fatalf("type %d decoded as %d", cmd, ev.Type)
		}
		for _, a := range []netip.AddrPort{ev.Local, ev.Remote} {
			if a.IsValid() && a.Addr().Is4In6() {
				t.Fatalf("mapped address %s left in %+v", a, ev)
			}
		}
		_ = ev.String()
	})
}

func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}
