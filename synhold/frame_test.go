package synhold

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// synAck builds the converter's SYN+ACK (from 5124 to the client's port
// 40000) as gopacket serializes it, with correct checksums, and the same
// frame with the TCP checksum as a device would leave it for the NIC
// (garbage here: user space must not trust it).
func synAck(t *testing.T, v4 bool) (good, partial []byte) {
	t.Helper()
	good, partial, err := buildSynAck(v4)
	if err != nil {
		t.Fatal(err)
	}
	return good, partial
}

func buildSynAck(v4 bool) (good, partial []byte, err error) {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	tcp := &layers.TCP{SrcPort: 5124, DstPort: 40000, Seq: 7777, Ack: 1031, SYN: true, ACK: true, Window: 65160,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
			{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
			{OptionType: 30, OptionLength: 12, OptionData: []byte{0x01, 0x81, 1, 2, 3, 4, 5, 6, 7, 8}},
		}}
	var ip gopacket.NetworkLayer
	if v4 {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: net.IP{10, 201, 1, 1}, DstIP: net.IP{10, 201, 1, 2}}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.ParseIP("fd01:1::1"), DstIP: net.ParseIP("fd01:1::2")}
	}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip.(gopacket.SerializableLayer), tcp); err != nil {
		return nil, nil, err
	}
	good = buf.Bytes()
	partial = append([]byte(nil), good...)
	off := 14 + 20
	if !v4 {
		off = 14 + 40
	}
	binary.BigEndian.PutUint16(partial[off+16:], 0x1234)
	if v4 {
		binary.BigEndian.PutUint16(partial[14+10:], 0) // as if left for the device
	}
	return good, partial, nil
}

func TestFixChecksums(t *testing.T) {
	for _, v4 := range []bool{true, false} {
		good, partial := synAck(t, v4)
		if err := fixChecksums(partial); err != nil {
			t.Fatalf("v4=%v: %v", v4, err)
		}
		if !bytes.Equal(partial, good) {
			t.Errorf("v4=%v: fixed frame\n%x\nwant\n%x", v4, partial, good)
		}
	}
	if err := fixChecksums([]byte("short")); err == nil {
		t.Error("a short frame was accepted")
	}
}

// TestUnreachableFrame: the ICMP message built from a held SYN+ACK goes
// from the converter to the client and quotes the client's SYN (its
// addresses, ports and ISN), with valid checksums, as gopacket decodes it.
func TestUnreachableFrame(t *testing.T) {
	for _, v4 := range []bool{true, false} {
		good, _ := synAck(t, v4)
		const isn = 1000
		out, err := unreachableFrame(good, isn, 1)
		if err != nil {
			t.Fatal(err)
		}
		p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
		if el := p.ErrorLayer(); el != nil {
			t.Fatalf("v4=%v: decode: %v", v4, el.Error())
		}
		eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if !bytes.Equal(eth.DstMAC, good[0:6]) || !bytes.Equal(eth.SrcMAC, good[6:12]) {
			t.Errorf("v4=%v: Ethernet header changed", v4)
		}
		var payload []byte
		if v4 {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if !ok || icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 1) {
				t.Fatalf("not an ICMP host unreachable: %v", p)
			}
			if ip.SrcIP.String() != "10.201.1.1" || ip.DstIP.String() != "10.201.1.2" {
				t.Errorf("ICMP %v -> %v, want converter -> client", ip.SrcIP, ip.DstIP)
			}
			if checksumOK := csum(out[14+20:], 0) == 0; !checksumOK {
				t.Error("ICMP checksum wrong")
			}
			if csum(out[14:14+20], 0) != 0 {
				t.Error("IPv4 header checksum wrong")
			}
			payload = icmp.Payload
		} else {
			ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			icmp, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
			if !ok || icmp.TypeCode != layers.CreateICMPv6TypeCode(1, 1) {
				t.Fatalf("not an ICMPv6 destination unreachable: %v", p)
			}
			if ip.SrcIP.String() != "fd01:1::1" || ip.DstIP.String() != "fd01:1::2" {
				t.Errorf("ICMPv6 %v -> %v, want converter -> client", ip.SrcIP, ip.DstIP)
			}
			icmpBytes := out[14+40 : 14+40+int(ip.Length)]
			if csum(icmpBytes, pseudoSum(out[14:14+40], false, protoICMPv6, len(icmpBytes))) != 0 {
				t.Error("ICMPv6 checksum wrong")
			}
			payload = icmpBytes[8:]
		}
		// The quoted datagram is the client's SYN.
		first := layers.LayerTypeIPv4
		if !v4 {
			first = layers.LayerTypeIPv6
		}
		q := gopacket.NewPacket(payload, first, gopacket.Default)
		tcp, ok := q.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok {
			t.Fatalf("v4=%v: no TCP header quoted: %v", v4, q)
		}
		if tcp.SrcPort != 40000 || tcp.DstPort != 5124 || tcp.Seq != isn || !tcp.SYN || tcp.ACK {
			t.Errorf("v4=%v: quoted %+v, want the client's SYN 40000 -> 5124 seq %d", v4, tcp, isn)
		}
		src, dst := q.NetworkLayer().NetworkFlow().Endpoints()
		if want := map[bool]string{true: "10.201.1.2", false: "fd01:1::2"}[v4]; src.String() != want {
			t.Errorf("v4=%v: quoted source %v -> %v, want the client %s", v4, src, dst, want)
		}
	}
}

// csum is the Internet checksum over b with the partial sum s: 0 when b
// carries a correct checksum.
func csum(b []byte, s uint32) uint16 { return checksum(b, s) }

// FuzzHeldFrame: no frame makes the frame code panic, and a frame it
// accepts comes out with checksums that verify.
func FuzzHeldFrame(f *testing.F) {
	for _, v4 := range []bool{true, false} {
		good, partial, err := buildSynAck(v4)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(good)
		f.Add(partial)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		b := append([]byte(nil), frame...)
		if _, err := unreachableFrame(b, 1, 3); err != nil {
			return
		}
		if err := fixChecksums(b); err != nil {
			t.Fatalf("unreachableFrame accepted what fixChecksums refuses: %v", err)
		}
		tf, _ := parseTCPFrame(b)
		ip := b[tf.ipOff:tf.end]
		if tf.v4 && checksum(ip[:tf.ipHdrLen], 0) != 0 {
			t.Fatal("IPv4 header checksum does not verify")
		}
		seg := b[tf.tcpOff:tf.end]
		if checksum(seg, pseudoSum(ip, tf.v4, protoTCP, len(seg))) != 0 {
			t.Fatal("TCP checksum does not verify")
		}
	})
}
