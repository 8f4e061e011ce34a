package capture

import (
	"bytes"
	"testing"

	"github.com/convert-tc/converter/capture/capturetest"
)

func TestLinkPayload(t *testing.T) {
	cat := capturetest.Cat
	ip4 := []byte{0x45, 0, 0, 20}
	ip6 := []byte{0x60, 0, 0, 0}
	eth := func(et ...byte) []byte { return cat(make([]byte, 12), et) }
	sll := func(et ...byte) []byte { return cat(make([]byte, 14), et) }
	sll2 := func(et ...byte) []byte { return cat(et, make([]byte, 18)) }
	tests := []struct {
		name string
		link uint32
		in   []byte
		want []byte // nil: not IP
	}{
		{"ethernet ipv4", linkEthernet, cat(eth(0x08, 0x00), ip4), ip4},
		{"ethernet ipv6", linkEthernet, cat(eth(0x86, 0xdd), ip6), ip6},
		{"ethernet vlan", linkEthernet, cat(eth(0x81, 0x00), []byte{0, 5, 0x08, 0x00}, ip4), ip4},
		{"ethernet q-in-q", linkEthernet, cat(eth(0x88, 0xa8), []byte{0, 5, 0x81, 0x00, 0, 6, 0x86, 0xdd}, ip6), ip6},
		{"ethernet arp", linkEthernet, cat(eth(0x08, 0x06), ip4), nil},
		{"ethernet short", linkEthernet, make([]byte, 13), nil},
		{"sll", linkSLL, cat(sll(0x08, 0x00), ip4), ip4},
		{"sll short", linkSLL, make([]byte, 15), nil},
		{"sll2", linkSLL2, cat(sll2(0x86, 0xdd), ip6), ip6},
		{"sll2 short", linkSLL2, make([]byte, 19), nil},
		{"raw", linkRaw, ip6, ip6},
		{"raw ipv4", linkIPv4, ip4, ip4},
		{"raw ipv6", linkIPv6, ip6, ip6},
		{"null", linkNull, cat([]byte{2, 0, 0, 0}, ip4), ip4},
		{"loop", linkLoop, cat([]byte{0, 0, 0, 30}, ip6), ip6},
		{"unsupported", 105, ip4, nil},
	}
	for _, tt := range tests {
		got, ok := linkPayload(tt.link, tt.in)
		if ok != (tt.want != nil) || !bytes.Equal(got, tt.want) {
			t.Errorf("%s: got %x, %v; want %x", tt.name, got, ok, tt.want)
		}
	}
}
