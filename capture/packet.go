package capture

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// linkPayload strips the link-layer header and returns the IP packet.
func linkPayload(link uint32, b []byte) ([]byte, bool) {
	switch link {
	case linkEthernet:
		return etherPayload(b)
	case linkSLL:
		if len(b) < 16 {
			return nil, false
		}
		return ipByEtherType(binary.BigEndian.Uint16(b[14:16]), b[16:])
	case linkSLL2:
		if len(b) < 20 {
			return nil, false
		}
		return ipByEtherType(binary.BigEndian.Uint16(b[0:2]), b[20:])
	case linkNull, linkLoop:
		if len(b) < 4 {
			return nil, false
		}
		return b[4:], true // the address family: the IP version tells the same
	case linkRaw, linkRaw12, linkRaw14, linkIPv4, linkIPv6:
		return b, true
	}
	return nil, false
}

// etherPayload skips an Ethernet header and any VLAN tags.
func etherPayload(b []byte) ([]byte, bool) {
	if len(b) < 14 {
		return nil, false
	}
	et, rest := binary.BigEndian.Uint16(b[12:14]), b[14:]
	for (et == 0x8100 || et == 0x88a8 || et == 0x9100) && len(rest) >= 4 {
		et, rest = binary.BigEndian.Uint16(rest[2:4]), rest[4:]
	}
	return ipByEtherType(et, rest)
}

func ipByEtherType(et uint16, b []byte) ([]byte, bool) {
	if et != 0x0800 && et != 0x86dd {
		return nil, false
	}
	return b, true
}

// packetMeta is what a Stream tells about the packet carrying its first
// byte.
type packetMeta struct {
	index    int // 1-based packet number in the capture
	time     time.Time
	src, dst netip.AddrPort
	syn      bool
}

type tcpPacket struct {
	packetMeta
	ack     bool
	seq     uint32
	payload []byte
	snapped bool // the capture cut the packet short
}

// parsePacket decodes a TCP segment over IPv4 or IPv6.
func parsePacket(link uint32, data []byte, ci gopacket.CaptureInfo) (tcpPacket, bool) {
	ip, ok := linkPayload(link, data)
	if !ok || len(ip) == 0 {
		return tcpPacket{}, false
	}
	first := layers.LayerTypeIPv4
	switch ip[0] >> 4 {
	case 4:
	case 6:
		first = layers.LayerTypeIPv6
	default:
		return tcpPacket{}, false
	}
	pkt := gopacket.NewPacket(ip, first, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		return tcpPacket{}, false
	}
	src, dst, ok := ipEndpoints(pkt)
	if !ok {
		return tcpPacket{}, false
	}
	return tcpPacket{
		packetMeta: packetMeta{
			time: ci.Timestamp.UTC(),
			src:  netip.AddrPortFrom(src, uint16(tcp.SrcPort)),
			dst:  netip.AddrPortFrom(dst, uint16(tcp.DstPort)),
			syn:  tcp.SYN,
		},
		ack:     tcp.ACK,
		seq:     tcp.Seq,
		payload: tcp.Payload,
		snapped: ci.CaptureLength < ci.Length,
	}, true
}

// ipEndpoints returns the addresses of the innermost IP header, the one
// the TCP segment belongs to.
func ipEndpoints(pkt gopacket.Packet) (src, dst netip.Addr, ok bool) {
	for _, l := range pkt.Layers() {
		switch l := l.(type) {
		case *layers.IPv4:
			src, _ = netip.AddrFromSlice(l.SrcIP.To4())
			dst, _ = netip.AddrFromSlice(l.DstIP.To4())
		case *layers.IPv6:
			src, _ = netip.AddrFromSlice(l.SrcIP)
			dst, _ = netip.AddrFromSlice(l.DstIP)
		}
	}
	return src, dst, src.IsValid() && dst.IsValid()
}
