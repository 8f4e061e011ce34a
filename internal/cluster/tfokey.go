package cluster

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ReadTFOKey reads a TCP Fast Open server key file and returns the value
// for net.ipv4.tcp_fastopen_key: the primary key, and the backup after a
// comma when the file has a second line. Each key is 16 bytes in hex (32
// digits; dashes and spaces are ignored). Every node of a cluster must
// hold the same keys: a client's cookie comes from whichever node the
// routers picked, and a cookie another node refuses makes an MPTCP client
// fall back to plain TCP.
func ReadTFOKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cluster: --tfo-key: %w", err)
	}
	var keys []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.NewReplacer("-", "", " ", "", "\t", "", "\r", "").Replace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		raw, err := hex.DecodeString(line)
		if err != nil || len(raw) != 16 {
			return "", fmt.Errorf("cluster: --tfo-key %s line %d: want 32 hex digits (16 bytes)", path, i+1)
		}
		h := hex.EncodeToString(raw)
		keys = append(keys, h[0:8]+"-"+h[8:16]+"-"+h[16:24]+"-"+h[24:32])
	}
	switch {
	case len(keys) == 0:
		return "", fmt.Errorf("cluster: --tfo-key %s: no key", path)
	case len(keys) > 2:
		return "", fmt.Errorf("cluster: --tfo-key %s: %d keys, at most 2 (primary, backup)", path, len(keys))
	}
	return strings.Join(keys, ","), nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
