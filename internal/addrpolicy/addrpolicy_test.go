package addrpolicy

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestSpecial(t *testing.T) {
	refused := []string{
		"10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "0.0.0.1",
		"240.0.0.1", "255.255.255.255", "127.0.0.1", "192.0.2.1", "198.51.100.1", "203.0.113.1",
		"198.18.0.1", "224.0.0.1", "192.88.99.1", "192.0.0.1",
		"::ffff:169.254.169.254", "::ffff:10.0.0.1", // mapped
		"64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", // NAT64 well-known prefix (RFC 6052 /96)
		"64:ff9b:1::a9fe:a9fe",     // local-use prefix, /96 embedding
		"64:ff9b:1:a9fe:a9:fe00::", // local-use prefix, /48 embedding
		"2002:a00:1::1",            // 6to4 of 10.0.0.1
		"fd00::1", "fc00::1", "fe80::1", "::1", "::", "ff02::1", "2001:db8::1", "3fff::1",
		"2001::1", "2001:2::1", "100::1", "5f00::1", "fec0::1", "::a00:1",
	}
	for _, s := range refused {
		if rg, ok := Special(netip.MustParseAddr(s)); !ok {
			t.Errorf("%s: not special", s)
		} else if rg.Name == "" || rg.Ref == "" {
			t.Errorf("%s: range without a name or reference: %+v", s, rg)
		}
	}
	allowed := []string{
		"8.8.8.8", "1.1.1.1", "192.0.0.9", "192.0.0.10", "100.128.0.1", "172.32.0.1",
		"2606:4700::1111", "2001:4860::8888", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8",
	}
	for _, s := range allowed {
		if rg, ok := Special(netip.MustParseAddr(s)); ok {
			t.Errorf("%s: refused as %+v", s, rg)
		}
	}
}

func TestUnmapPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"::ffff:10.0.0.0/104":  "10.0.0.0/8",
		"::ffff:192.0.2.1/128": "192.0.2.1/32",
		"10.1.2.3/8":           "10.0.0.0/8",
		"fd00::1/8":            "fd00::/8",
	} {
		if got := UnmapPrefix(netip.MustParsePrefix(in)); got != netip.MustParsePrefix(want) {
			t.Errorf("UnmapPrefix(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestRoutesCache(t *testing.T) {
	now := time.Unix(1000, 0)
	calls := 0
	r := &Routes{cache: map[netip.Addr]routeEntry{}, now: func() time.Time { return now },
		get: func(a netip.Addr) (RouteKind, error) {
			calls++
			if a == netip.MustParseAddr("192.0.2.9") {
				return RouteUnicast, errors.New("no route")
			}
			return RouteLocal, nil
		}}
	a := netip.MustParseAddr("198.51.100.7")
	if r.Kind(a) != RouteLocal || r.Kind(netip.MustParseAddr("::ffff:198.51.100.7")) != RouteLocal || calls != 1 {
		t.Errorf("want one lookup for two asks of one address (mapped or not), got %d", calls)
	}
	now = now.Add(routeCacheTTL)
	r.Kind(a)
	if calls != 2 {
		t.Errorf("an entry older than the TTL was not looked up again")
	}
	if r.Kind(netip.MustParseAddr("192.0.2.9")) != RouteUnicast {
		t.Errorf("a failed lookup must read as unicast (the connect reports the error)")
	}
}

// TestRoutesKernel asks this namespace's routing table: loopback is local.
func TestRoutesKernel(t *testing.T) {
	r := NewRoutes()
	if k := r.Kind(netip.MustParseAddr("127.0.0.1")); k != RouteLocal {
		t.Errorf("127.0.0.1 routes %q, want local", k)
	}
	if k := r.Kind(netip.MustParseAddr("::1")); k != RouteLocal {
		t.Logf("::1 routes %q (IPv6 may be off here)", k)
	}
}
