// Package capturetest writes pcap and pcapng captures of TCP connections
// for tests, and holds the sample captures of Convert connections that the
// tests of package capture and of the decode command read.
package capturetest

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/convert-tc/converter/tlv/tlvtest"
)

// Link types a Capture can be written with.
const (
	LinkEthernet uint32 = 1   // a pcap file
	LinkSLL      uint32 = 113 // Linux cooked: a pcapng file
	LinkSLL2     uint32 = 276 // Linux cooked v2: a pcap file
)

// Side is the end of a connection that sends a packet.
type Side uint8

const (
	Client Side = iota // sends the SYN
	Server
)

// Conn is the addresses of one connection.
type Conn struct{ Client, Server netip.AddrPort }

// Packet is one TCP segment of a Capture.
type Packet struct {
	Conn     int // index in Capture.Conns
	From     Side
	At       time.Duration // after Base
	Flags    string        // S, A, P, F, R
	Seq, Ack uint32
	Payload  []byte
}

// Capture describes a capture file.
type Capture struct {
	Name    string // file name
	Link    uint32 // LinkEthernet, LinkSLL2 or LinkSLL
	Conns   []Conn
	Packets []Packet
}

// Base is the time of a Packet with At 0.
var Base = time.Date(2025, 3, 27, 10, 0, 0, 0, time.UTC)

// Encode writes the capture file: pcap with nanosecond timestamps, or
// pcapng for LinkSLL.
func (c Capture) Encode(tb testing.TB) []byte {
	tb.Helper()
	var b bytes.Buffer
	write := c.writer(tb, &b)
	for _, p := range c.Packets {
		frame := c.frame(tb, p)
		ci := gopacket.CaptureInfo{Timestamp: Base.Add(p.At), CaptureLength: len(frame), Length: len(frame)}
		if err := write(ci, frame); err != nil {
			tb.Fatal(err)
		}
	}
	return b.Bytes()
}

// PcapHeader is a little-endian nanosecond pcap file header.
func PcapHeader(link uint32) []byte {
	h := make([]byte, 24)
	binary.LittleEndian.PutUint32(h[0:], 0xa1b23c4d)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], 65535)
	binary.LittleEndian.PutUint32(h[20:], link)
	return h
}

// writer writes the file header and returns the packet writer. pcapgo
// writes link types as 8 bits, so the SLL2 header is written here.
func (c Capture) writer(tb testing.TB, b *bytes.Buffer) func(gopacket.CaptureInfo, []byte) error {
	tb.Helper()
	switch c.Link {
	case LinkEthernet:
		w := pcapgo.NewWriterNanos(b)
		if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
			tb.Fatal(err)
		}
		return w.WritePacket
	case LinkSLL2:
		b.Write(PcapHeader(LinkSLL2))
		return pcapgo.NewWriterNanos(b).WritePacket
	case LinkSLL:
	default:
		tb.Fatalf("capture %s: link type %d cannot be written", c.Name, c.Link)
	}
	iface := pcapgo.NgInterface{Name: "any", LinkType: layers.LinkTypeLinuxSLL, TimestampResolution: 9}
	w, err := pcapgo.NewNgWriterInterface(b, iface,
		pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "converter decode tests"}})
	if err != nil {
		tb.Fatal(err)
	}
	return func(ci gopacket.CaptureInfo, data []byte) error {
		if err := w.WritePacket(ci, data); err != nil {
			return err
		}
		return w.Flush()
	}
}

func (c Capture) frame(tb testing.TB, p Packet) []byte {
	tb.Helper()
	conn := c.Conns[p.Conn]
	src, dst := conn.Client, conn.Server
	if p.From == Server {
		src, dst = dst, src
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: p.Seq, Ack: p.Ack, Window: 64240,
		SYN: strings.Contains(p.Flags, "S"), ACK: strings.Contains(p.Flags, "A"),
		PSH: strings.Contains(p.Flags, "P"), FIN: strings.Contains(p.Flags, "F"),
		RST: strings.Contains(p.Flags, "R"),
	}
	if tcp.SYN {
		tcp.Options = []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
		}
	}
	ls, etherType := ipLayers(tb, src.Addr(), dst.Addr(), tcp)
	if c.Link == LinkEthernet {
		eth := &layers.Ethernet{SrcMAC: []byte{2, 0, 0, 0, 0, 1}, DstMAC: []byte{2, 0, 0, 0, 0, 2}, EthernetType: etherType}
		ls = append([]gopacket.SerializableLayer{eth}, ls...)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, append(ls, gopacket.Payload(p.Payload))...); err != nil {
		tb.Fatal(err)
	}
	return Cat(cookedHeader(c.Link, p.From, uint16(etherType)), buf.Bytes())
}

func ipLayers(tb testing.TB, src, dst netip.Addr, tcp *layers.TCP) ([]gopacket.SerializableLayer, layers.EthernetType) {
	tb.Helper()
	if src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			tb.Fatal(err)
		}
		return []gopacket.SerializableLayer{ip, tcp}, layers.EthernetTypeIPv4
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	return []gopacket.SerializableLayer{ip, tcp}, layers.EthernetTypeIPv6
}

// cookedHeader is the Linux SLL or SLL2 header of a packet captured on the
// converter host: packets from the client come in (type 0), the others go
// out (type 4).
func cookedHeader(link uint32, from Side, etherType uint16) []byte {
	pktType := byte(0)
	if from == Server {
		pktType = 4
	}
	mac := []byte{2, 0, 0, 0, 0, 1, 0, 0}
	switch link {
	case LinkSLL:
		h := []byte{0, pktType, 0, 1, 0, 6}
		return binary.BigEndian.AppendUint16(append(h, mac...), etherType)
	case LinkSLL2:
		h := binary.BigEndian.AppendUint16(nil, etherType)
		h = append(h, 0, 0, 0, 0, 0, 2, 0, 1, pktType, 6)
		return append(h, mac...)
	}
	return nil
}

// Cat concatenates byte slices into a new one.
func Cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// Samples are three captures of Convert connections to a converter at
// port 5124, built from the protocol's test vectors:
//
//   - tfo-ipv4.pcap (Ethernet): the request and its HTTP GET ride in the
//     SYN (TCP Fast Open); the reply starts the converter's first data,
//     with the HTTP response.
//   - split-ipv6.pcap (SLL2): the request follows the handshake in two
//     segments, out of order and retransmitted; the reply is an Error.
//   - malformed-ipv4.pcapng (SLL): a malformed request in a SYN and the
//     converter's echo; a plain HTTP connection to the converter port; a
//     connection without data.
func Samples(tb testing.TB) []Capture {
	tb.Helper()
	a2 := tlvtest.ByID(tb, "A2").Input
	a3 := tlvtest.ByID(tb, "A3").Input
	b1 := tlvtest.ByID(tb, "B1").Input
	c32 := tlvtest.ByID(tb, "C32").Input
	d3 := tlvtest.ByID(tb, "D3")
	d3reply := d3.Reply // Malformed Message, echoing D3
	http := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	get := []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
	ap := netip.MustParseAddrPort
	return []Capture{
		{
			// (1) TFO: the request and its HTTP GET ride in the SYN; the
			// reply B1 starts the converter's first data, with the response.
			Name: "tfo-ipv4.pcap", Link: LinkEthernet,
			Conns: []Conn{{ap("192.0.2.10:40001"), ap("198.51.100.1:5124")}},
			Packets: []Packet{
				{0, Client, 123456789, "S", 1000, 0, a2},
				{0, Server, 124000001, "SA", 5000, 1062, nil},
				{0, Client, 125000000, "A", 1062, 5001, nil},
				{0, Server, 140000000, "PA", 5001, 1062, Cat(b1, http)},
				{0, Client, 141000000, "A", 1062, 5001 + 28 + 40, nil},
				{0, Client, 150000000, "FA", 1062, 5001 + 28 + 40, nil},
				{0, Server, 151000000, "FA", 5001 + 28 + 40, 1063, nil},
				{0, Client, 152000000, "A", 1063, 5001 + 28 + 41, nil},
			},
		},
		{
			// (2) The request follows the handshake in two segments. The
			// first was lost before the capture point: the second shows up
			// first, then the retransmitted first, then a spurious
			// retransmission of the second. The reply is an Error.
			Name: "split-ipv6.pcap", Link: LinkSLL2,
			Conns: []Conn{{ap("[2001:db8::10]:40002"), ap("[2001:db8:1::1]:5124")}},
			Packets: []Packet{
				{0, Client, 1 * time.Second, "S", 7000, 0, nil},
				{0, Server, 1*time.Second + 1000, "SA", 9000, 7001, nil},
				{0, Client, 1*time.Second + 2000, "A", 7001, 9001, nil},
				{0, Client, 1*time.Second + 3000, "PA", 7011, 9001, a3[10:]},
				{0, Server, 1*time.Second + 4000, "A", 9001, 7001, nil},
				{0, Client, 1*time.Second + 200000000, "PA", 7001, 9001, a3[:10]},
				{0, Client, 1*time.Second + 200000500, "PA", 7011, 9001, a3[10:]},
				{0, Server, 1*time.Second + 200001000, "PA", 9001, 7029, c32},
				{0, Server, 1*time.Second + 200001001, "FA", 9009, 7029, nil},
				{0, Client, 1*time.Second + 200002000, "R", 7029, 0, nil},
			},
		},
		{
			// (3) A malformed request (D3) in a TFO SYN and the converter's
			// echo; a plain HTTP connection to the converter port; a
			// connection that carries no data at all (no record).
			Name: "malformed-ipv4.pcapng", Link: LinkSLL,
			Conns: []Conn{
				{ap("203.0.113.7:40003"), ap("198.51.100.1:5124")},
				{ap("203.0.113.7:40004"), ap("198.51.100.1:5124")},
				{ap("203.0.113.7:40005"), ap("198.51.100.1:5124")},
			},
			Packets: []Packet{
				{0, Client, 2 * time.Second, "S", 100, 0, d3.Input},
				{1, Client, 2*time.Second + 10, "S", 300, 0, nil},
				{0, Server, 2*time.Second + 1000, "SA", 200, 109, nil},
				{1, Server, 2*time.Second + 1010, "SA", 400, 301, nil},
				{0, Client, 2*time.Second + 2000, "A", 109, 201, nil},
				{1, Client, 2*time.Second + 2010, "PA", 301, 401, get},
				{0, Server, 2*time.Second + 3000, "PA", 201, 109, d3reply},
				{0, Server, 2*time.Second + 3001, "FA", 217, 109, nil},
				{0, Client, 2*time.Second + 4000, "R", 109, 0, nil},
				{2, Client, 2*time.Second + 5000, "S", 500, 0, nil},
				{2, Server, 2*time.Second + 6000, "SA", 600, 501, nil},
				{2, Client, 2*time.Second + 7000, "A", 501, 601, nil},
				{1, Server, 2*time.Second + 8000, "FA", 401, 301 + uint32(len(get)), nil},
				{2, Client, 2*time.Second + 9000, "FA", 501, 601, nil},
				{2, Server, 2*time.Second + 10000, "FA", 601, 502, nil},
			},
		},
	}
}
