package synhold

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

const (
	ethLen      = 14
	etherIPv4   = 0x0800
	etherIPv6   = 0x86dd
	protoTCP    = 6
	protoICMP   = 1
	protoICMPv6 = 58
	ipv6Len     = 40
	tcpMinLen   = 20
)

var errFrame = errors.New("not an Ethernet IPv4 or IPv6 TCP frame")

// tcpFrame locates the headers of an Ethernet frame carrying TCP without
// IPv6 extension headers (what the converter's own stack sends).
type tcpFrame struct {
	v4       bool
	ipOff    int // always ethLen
	ipHdrLen int
	tcpOff   int
	end      int // end of the IP datagram
}

func parseTCPFrame(f []byte) (tcpFrame, error) {
	if len(f) < ethLen+20 {
		return tcpFrame{}, errFrame
	}
	t := tcpFrame{ipOff: ethLen}
	switch binary.BigEndian.Uint16(f[12:14]) {
	case etherIPv4:
		ip := f[ethLen:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if ip[0]>>4 != 4 || ihl < 20 || ip[9] != protoTCP || total < ihl+tcpMinLen || ethLen+total > len(f) {
			return tcpFrame{}, errFrame
		}
		t.v4, t.ipHdrLen, t.end = true, ihl, ethLen+total
	case etherIPv6:
		if len(f) < ethLen+ipv6Len+tcpMinLen {
			return tcpFrame{}, errFrame
		}
		ip := f[ethLen:]
		payload := int(binary.BigEndian.Uint16(ip[4:6]))
		if ip[0]>>4 != 6 || ip[6] != protoTCP || payload < tcpMinLen || ethLen+ipv6Len+payload > len(f) {
			return tcpFrame{}, errFrame
		}
		t.ipHdrLen, t.end = ipv6Len, ethLen+ipv6Len+payload
	default:
		return tcpFrame{}, errFrame
	}
	t.tcpOff = ethLen + t.ipHdrLen
	if doff := int(f[t.tcpOff+12]>>4) * 4; doff < tcpMinLen || t.tcpOff+doff > t.end {
		return tcpFrame{}, errFrame
	}
	return t, nil
}

// addrs returns the frame's source and destination.
func (t tcpFrame) addrs(f []byte) (src, dst netip.AddrPort) {
	ports := f[t.tcpOff:]
	sp, dp := binary.BigEndian.Uint16(ports[0:2]), binary.BigEndian.Uint16(ports[2:4])
	ip := f[t.ipOff:]
	if t.v4 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), sp), netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), dp)
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[8:24])), sp), netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[24:40])), dp)
}

// fixChecksums recomputes the IPv4 header checksum and the TCP checksum of
// a frame captured on its way out: the stack leaves a partial TCP sum for
// the device (CHECKSUM_PARTIAL), which a frame sent again from user space
// would carry as it is and the receiver drop (TcpInCsumErrors).
func fixChecksums(f []byte) error {
	t, err := parseTCPFrame(f)
	if err != nil {
		return err
	}
	ip := f[t.ipOff:t.end]
	if t.v4 {
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:t.ipHdrLen], 0))
	}
	seg := f[t.tcpOff:t.end]
	seg[16], seg[17] = 0, 0
	binary.BigEndian.PutUint16(seg[16:18], checksum(seg, pseudoSum(ip, t.v4, protoTCP, len(seg))))
	return nil
}

// pseudoSum is the partial sum of the pseudo-header of a segment of n
// bytes of proto inside the IP header ip.
func pseudoSum(ip []byte, v4 bool, proto byte, n int) uint32 {
	var s uint32
	if v4 {
		s = sum16(ip[12:20], 0)
	} else {
		s = sum16(ip[8:40], 0)
	}
	return s + uint32(proto) + uint32(n>>16) + uint32(n&0xffff)
}

func sum16(b []byte, s uint32) uint32 {
	for ; len(b) >= 2; b = b[2:] {
		s += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	return s
}

// checksum is the Internet checksum of b on top of the partial sum s.
func checksum(b []byte, s uint32) uint16 {
	s = sum16(b, s)
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// unreachableFrame builds the ICMP (IPv4 type 3) or ICMPv6 (type 1)
// destination unreachable with code that the client's stack takes as the
// answer to its SYN: sent from the converter's address on the held
// SYN+ACK's path (its Ethernet header as is), quoting the client's SYN as
// the client sent it (its addresses and ports, sequence number isn). A
// client in SYN-SENT drops the connection with the code's errno.
func unreachableFrame(synack []byte, isn uint32, code byte) ([]byte, error) {
	t, err := parseTCPFrame(synack)
	if err != nil {
		return nil, err
	}
	ip := synack[t.ipOff:]
	tcp := synack[t.tcpOff:]
	// The quoted SYN: the SYN+ACK's header with addresses and ports
	// swapped, no options.
	var quoted []byte
	if t.v4 {
		q := make([]byte, 20+tcpMinLen)
		q[0], q[8], q[9] = 0x45, 64, protoTCP
		binary.BigEndian.PutUint16(q[2:4], uint16(len(q)))
		copy(q[12:16], ip[16:20])
		copy(q[16:20], ip[12:16])
		binary.BigEndian.PutUint16(q[10:12], checksum(q[:20], 0))
		quoted = q
	} else {
		q := make([]byte, ipv6Len+tcpMinLen)
		q[0], q[6], q[7] = 0x60, protoTCP, 64
		binary.BigEndian.PutUint16(q[4:6], tcpMinLen)
		copy(q[8:24], ip[24:40])
		copy(q[24:40], ip[8:24])
		quoted = q
	}
	th := quoted[len(quoted)-tcpMinLen:]
	copy(th[0:2], tcp[2:4])
	copy(th[2:4], tcp[0:2])
	binary.BigEndian.PutUint32(th[4:8], isn)
	th[12], th[13] = 5<<4, 0x02 // data offset 5, SYN
	binary.BigEndian.PutUint16(th[14:16], 65535)

	icmp := make([]byte, 8+len(quoted))
	copy(icmp[8:], quoted)
	icmp[1] = code
	out := make([]byte, 0, ethLen+ipv6Len+len(icmp))
	out = append(out, synack[:ethLen]...)
	if t.v4 {
		icmp[0] = 3
		binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp, 0))
		h := make([]byte, 20)
		h[0], h[8], h[9] = 0x45, 64, protoICMP
		h[6] = 0x40 // don't fragment
		binary.BigEndian.PutUint16(h[2:4], uint16(20+len(icmp)))
		copy(h[12:20], ip[12:20]) // converter -> client, as the SYN+ACK
		binary.BigEndian.PutUint16(h[10:12], checksum(h, 0))
		out = append(append(out, h...), icmp...)
	} else {
		icmp[0] = 1
		h := make([]byte, ipv6Len)
		h[0], h[6], h[7] = 0x60, protoICMPv6, 64
		binary.BigEndian.PutUint16(h[4:6], uint16(len(icmp)))
		copy(h[8:40], ip[8:40])
		binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp, pseudoSum(h, false, protoICMPv6, len(icmp))))
		out = append(append(out, h...), icmp...)
	}
	if len(out) < 60 { // Ethernet minimum, padded as a NIC would
		out = append(out, make([]byte, 60-len(out))...)
	}
	return out, nil
}
