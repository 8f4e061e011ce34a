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
