package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// TCP flags for hand-built segments.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// framer builds Ethernet frames of TCP segments from the client's path-1
// address to a server address, with correct checksums, so that the
// malformations a test adds afterwards are the only thing wrong with them.
type framer struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	dport          uint16
}

// seg is one segment: raw option bytes (padded to 4 here) and payload.
type seg struct {
	sport   uint16
	flags   byte
	opts    []byte
	payload []byte
}

func (f framer) build(s seg) []byte {
	opts := append([]byte{}, s.opts...)
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	tcp := make([]byte, 20+len(opts)+len(s.payload))
	binary.BigEndian.PutUint16(tcp[0:], s.sport)
	binary.BigEndian.PutUint16(tcp[2:], f.dport)
	binary.BigEndian.PutUint32(tcp[4:], 0x01020304)
	tcp[12] = byte((20 + len(opts)) / 4 << 4)
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], opts)
	copy(tcp[20+len(opts):], s.payload)

	src, dst := f.src.AsSlice(), f.dst.AsSlice()
	pseudo := append(append(append([]byte{}, src...), dst...), 0, 6, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))

	var ip []byte
	ethertype := uint16(0x0800)
	if f.src.Is4() {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
		ip[6] = 0x40 // DF
		ip[8] = 64
		ip[9] = 6
		copy(ip[12:], src)
		copy(ip[16:], dst)
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	} else {
		ethertype = 0x86dd
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(tcp)))
		ip[6] = 6
		ip[7] = 64
		copy(ip[8:], src)
		copy(ip[24:], dst)
	}
	eth := make([]byte, 14)
	copy(eth[0:], f.dstMAC)
	copy(eth[6:], f.srcMAC)
	binary.BigEndian.PutUint16(eth[12:], ethertype)
	return append(append(eth, ip...), tcp...)
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// mpJoin is an MP_JOIN SYN option (RFC 8684 section 3.2) for token.
func mpJoin(token uint32) []byte {
	o := []byte{30, 12, 0x10, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd}
	binary.BigEndian.PutUint32(o[4:], token)
	return o
}

// ext is an IPv6 extension header for withExt: its protocol number and its
// bytes after the first two (next header and length, which withExt fills
// in); 8n-2 bytes long.
type ext struct {
	proto byte
	body  []byte
}

var (
	padN6    = []byte{1, 4, 0, 0, 0, 0} // one PadN option filling 8 bytes
	hopByHop = ext{0, padN6}
	destOpts = ext{60, padN6}
	// An atomic fragment (offset 0, no more fragments): a whole segment
	// behind a fragment header.
	fragHdr = ext{44, []byte{0, 0, 0, 0, 0, 1}}
)

// destOptsLen is a destination options header of n bytes (n%8 == 0) full
// of Pad1 options (which Linux would refuse beyond 7 bytes: for
// BPF_PROG_TEST_RUN only).
func destOptsLen(n int) ext { return ext{60, make([]byte, n-2)} }

// routing is a segment routing header (type 4) with one segment and
// segsLeft segments left.
func routing(segsLeft byte) ext {
	body := make([]byte, 22)
	body[0], body[1] = 4, segsLeft
	return ext{43, body}
}

// withExt inserts extension headers between the IPv6 header and the TCP
// segment of a frame built by a framer, fixing the next header chain and
// the payload length (the TCP checksum does not change).
func withExt(frame []byte, exts ...ext) []byte {
	const ip6 = 14
	var hdrs []byte
	next := frame[ip6+6]
	for i := len(exts) - 1; i >= 0; i-- {
		e := exts[i]
		h := append([]byte{next, byte((len(e.body)+2)/8 - 1)}, e.body...)
		if e.proto == 44 {
			h[1] = 0 // reserved in a fragment header
		}
		hdrs = append(h, hdrs...)
		next = e.proto
	}
	out := append(append(append([]byte{}, frame[:ip6+40]...), hdrs...), frame[ip6+40:]...)
	out[ip6+6] = next
	binary.BigEndian.PutUint16(out[ip6+4:], binary.BigEndian.Uint16(frame[ip6+4:])+uint16(len(hdrs)))
	return out
}
