package nat

import (
	"net/netip"
	"testing"
	"time"
)

// TestHandOverPool: a successor adopts the predecessor's blocks. Clients
// keep their external address; no port the predecessor uses or holds, and
// no block of its reserve, is handed out by the successor; the
// predecessor's last sessions get blocks from its reserve only; once the
// predecessor is gone its ports go on hold and its reserve back.
func TestHandOverPool(t *testing.T) {
	clock := time.Unix(1000, 0)
	cfg := PoolConfig{
		Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/30")}, BlockSize: 8,
		MaxBlocksPerClient: 4, PortMin: 1024, PortMax: 1024 + 8*8 - 1, Hold: time.Second,
		Now: func() time.Time { return clock },
	}
	old, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	a1 := mustAlloc(t, old, a, IPv4)
	a2 := mustAlloc(t, old, a, IPv4)
	b1 := mustAlloc(t, old, b, IPv4)
	if err := old.Release(a2); err != nil { // on hold in the predecessor
		t.Fatal(err)
	}
	blocks := old.PrepareHandOver(1)

	next, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	release, err := next.Adopt(blocks)
	if err != nil {
		t.Fatal(err)
	}
	predecessor := map[netip.AddrPort]bool{a1.External: true, a2.External: true, b1.External: true}
	inBlock := func(m Mapping, hb HandedBlock) bool {
		return m.External.Addr() == hb.External && m.External.Port() >= hb.First && m.External.Port() < hb.First+8
	}
	// The successor serves a, b and a new client c.
	for i := 0; i < 6; i++ {
		for _, cl := range []netip.Addr{a, b, netip.MustParseAddr("10.0.0.3")} {
			m := mustAlloc(t, next, cl, IPv4)
			if predecessor[m.External] {
				t.Fatalf("successor handed out %v, the predecessor's", m.External)
			}
			for _, hb := range blocks {
				if !hb.Client.IsValid() && inBlock(m, hb) {
					t.Fatalf("successor handed out %v from the predecessor's reserve", m.External)
				}
			}
			if cl == a && m.External.Addr() != a1.External.Addr() {
				t.Fatalf("client a moved from %v to %v across the hand-over", a1.External.Addr(), m.External.Addr())
			}
		}
	}
	// The predecessor's last session of a new client: from its reserve.
	d := mustAlloc(t, old, netip.MustParseAddr("10.0.0.4"), IPv4)
	reserved := false
	for _, hb := range blocks {
		reserved = reserved || (!hb.Client.IsValid() && inBlock(d, hb))
	}
	if !reserved {
		t.Fatalf("predecessor's late mapping %v is outside its reserve", d)
	}
	if _, err := old.Allocate(netip.MustParseAddr("10.0.0.5"), IPv4); err == nil {
		// one spare block per address: 10.0.0.4 took the reserve of
		// the least loaded address; another may find none
		t.Logf("a second late client found a reserve block too")
	}
	old.HandedOver()

	before := next.Stats()
	release()
	after := next.Stats()
	if after.UsedPorts != before.UsedPorts-3 || after.HeldPorts != before.HeldPorts+3 {
		t.Fatalf("after release: used %d -> %d, held %d -> %d; want the predecessor's 3 ports on hold", before.UsedPorts, after.UsedPorts, before.HeldPorts, after.HeldPorts)
	}
	if after.UsedBlocks >= before.UsedBlocks {
		t.Fatalf("reserve not returned: blocks %d -> %d", before.UsedBlocks, after.UsedBlocks)
	}
	// A pool in use adopts nothing; a block that does not fit is refused.
	if _, err := next.Adopt(blocks); err == nil {
		t.Fatal("adopted into a pool in use")
	}
	fresh, _ := NewPool(cfg)
	if _, err := fresh.Adopt([]HandedBlock{{Family: IPv4, External: netip.MustParseAddr("198.51.100.1"), First: 1025}}); err == nil {
		t.Fatal("adopted a misaligned block")
	}
}
