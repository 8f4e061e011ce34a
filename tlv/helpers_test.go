package tlv

import (
	"encoding/hex"
	"net/netip"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
