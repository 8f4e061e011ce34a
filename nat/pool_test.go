package nat

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

var clockBase = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func (c *fakeClock) Now() time.Time          { return clockBase.Add(time.Duration(c.ns.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }
func newClock() *fakeClock                   { return &fakeClock{} }
func pfx(s string) netip.Prefix              { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr                 { return netip.MustParseAddr(s) }
func blockOf(p *Pool, m Mapping) (netip.Addr, int) {
	return m.External.Addr(), int(m.External.Port()-p.portMin) / int(p.blockSize)
}

func mustPool(t testing.TB, cfg PoolConfig) *Pool {
	t.Helper()
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAlloc(t testing.TB, p *Pool, c netip.Addr, f Family) Mapping {
	t.Helper()
	m, err := p.Allocate(c, f)
	if err != nil {
		t.Fatalf("Allocate(%v, %v): %v", c, f, err)
	}
	return m
}

// checkInvariants walks the pool's internals; live is the caller's view of
// the allocated mappings.
func checkInvariants(t testing.TB, p *Pool, live map[netip.AddrPort]Mapping) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	used, held, usedBlocks := 0, 0, 0
	clientBlocks := map[*client]int{}
	clientLive := map[*client]int{}
	for _, a := range p.addrs {
		owned := 0
		for _, b := range a.blocks {
			if b == nil || b.owner == nil {
				continue
			}
			owned++
			n := 0
			for _, w := range b.inUse {
				n += bits.OnesCount64(w)
			}
			if n != b.live {
				t.Fatalf("block %v/%d: %d bits set, live %d", a.ip, b.idx, n, b.live)
			}
			if n+b.holdN+len(b.free) != int(p.blockSize) {
				t.Fatalf("block %v/%d: used %d + held %d + free %d != %d", a.ip, b.idx, n, b.holdN, len(b.free), p.blockSize)
			}
			if b.owner.ext != a {
				t.Fatalf("block %v/%d owned by a client paired to %v", a.ip, b.idx, b.owner.ext.ip)
			}
			used += n
			held += b.holdN
			clientBlocks[b.owner]++
			clientLive[b.owner] += n
		}
		if owned != a.used {
			t.Fatalf("address %v: %d blocks owned, used says %d", a.ip, owned, a.used)
		}
		if a.used > p.nBlocks {
			t.Fatalf("address %v over-used", a.ip)
		}
		usedBlocks += owned
	}
	if used != p.used || held != p.held || usedBlocks != p.st.UsedBlocks {
		t.Fatalf("counters: used %d/%d held %d/%d blocks %d/%d", used, p.used, held, p.held, usedBlocks, p.st.UsedBlocks)
	}
	for k, c := range p.clients {
		if c.key != k || len(c.blocks) == 0 || len(c.blocks) > p.maxBlocks {
			t.Fatalf("client %v: %d blocks (max %d)", k, len(c.blocks), p.maxBlocks)
		}
		if clientBlocks[c] != len(c.blocks) || clientLive[c] != c.live {
			t.Fatalf("client %v: blocks %d/%d live %d/%d", k, clientBlocks[c], len(c.blocks), clientLive[c], c.live)
		}
	}
	if live != nil {
		if len(live) != p.used {
			t.Fatalf("caller holds %d mappings, pool %d", len(live), p.used)
		}
		for ap, m := range live {
			a := p.byIP[ap.Addr()]
			b := a.blocks[int(ap.Port()-p.portMin)/int(p.blockSize)]
			off := ap.Port() - b.first
			if b.owner == nil || b.owner.key.addr != m.Client || b.inUse[off>>6]&(1<<(off&63)) == 0 {
				t.Fatalf("mapping %v of %v not held by the pool", ap, m.Client)
			}
		}
	}
}

func TestPairedPooling(t *testing.T) {
	p := mustPool(t, PoolConfig{Prefixes: []netip.Prefix{pfx("192.0.2.0/29")}, Now: newClock().Now})
	a, b := ip("10.0.0.5"), ip("10.0.0.6")
	m1 := mustAlloc(t, p, a, IPv4)
	m2 := mustAlloc(t, p, a, IPv4)
	if m1.External.Addr() != m2.External.Addr() {
		t.Fatalf("paired pooling broken: %v then %v", m1.External, m2.External)
	}
	if m1.External == m2.External {
		t.Fatalf("same port twice: %v", m1.External)
	}
	if m1.Client != a {
		t.Fatalf("Client %v", m1.Client)
	}
	a1, b1 := blockOf(p, m1)
	a2, b2 := blockOf(p, m2)
	if a1 != a2 || b1 != b2 {
		t.Fatalf("second session left the first block: %v %v", m1, m2)
	}
	m3 := mustAlloc(t, p, b, IPv4)
	if m3.External.Addr() == m1.External.Addr() {
		t.Fatalf("least loaded: second client on the busy address %v", m3.External)
	}
	// 4in6-mapped client is the same client.
	m4 := mustAlloc(t, p, ip("::ffff:10.0.0.5"), IPv4)
	if m4.External.Addr() != m1.External.Addr() || m4.Client != a {
		t.Fatalf("mapped client not paired: %v", m4)
	}
	checkInvariants(t, p, nil)
}

func TestTwoClientsDifferentBlocks(t *testing.T) {
	p := mustPool(t, PoolConfig{Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, Now: newClock().Now})
	m1 := mustAlloc(t, p, ip("10.0.0.1"), IPv4)
	m2 := mustAlloc(t, p, ip("10.0.0.2"), IPv4)
	_, b1 := blockOf(p, m1)
	_, b2 := blockOf(p, m2)
	if b1 == b2 {
		t.Fatalf("two clients share block %d: %v %v", b1, m1, m2)
	}
	for _, m := range []Mapping{m1, m2} {
		if m.External.Port() < 1024 {
			t.Fatalf("port %d below PortMin", m.External.Port())
		}
	}
}

func TestClientLimit(t *testing.T) {
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 4, MaxBlocksPerClient: 2,
		PortMin: 1000, PortMax: 1063, Now: newClock().Now,
	})
	c := ip("10.0.0.1")
	var ms []Mapping
	for range 8 {
		ms = append(ms, mustAlloc(t, p, c, IPv4))
	}
	_, err := p.Allocate(c, IPv4)
	if !errors.Is(err, ErrExhausted) || !errors.Is(err, ErrClientLimit) {
		t.Fatalf("9th allocation: %v, want ErrClientLimit", err)
	}
	// Another client is not affected.
	mustAlloc(t, p, ip("10.0.0.2"), IPv4)
	st := p.Stats()
	if st.UsedPorts != 9 || st.RefusalsClientLimit != 1 || st.Refusals != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Existing mappings stay valid.
	for _, m := range ms {
		if err := p.Release(m); err != nil {
			t.Fatalf("Release(%v): %v", m, err)
		}
	}
}

func TestHold(t *testing.T) {
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 4, MaxBlocksPerClient: 1,
		PortMin: 1000, PortMax: 1007, Hold: 10 * time.Second, Now: clk.Now,
	})
	c := ip("10.0.0.1")
	var ms []Mapping
	for range 4 {
		ms = append(ms, mustAlloc(t, p, c, IPv4))
	}
	if err := p.Release(ms[2]); err != nil {
		t.Fatal(err)
	}
	clk.Advance(10*time.Second - 1)
	if m, err := p.Allocate(c, IPv4); !errors.Is(err, ErrClientLimit) {
		t.Fatalf("port reissued before hold: %v, %v", m, err)
	}
	if st := p.Stats(); st.HeldPorts != 1 || st.UsedPorts != 3 || st.FreePorts+st.UsedPorts+st.HeldPorts != st.TotalPorts {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(1)
	m := mustAlloc(t, p, c, IPv4)
	if m.External != ms[2].External {
		t.Fatalf("after hold got %v, want the released %v", m.External, ms[2].External)
	}
	ms[2] = m

	// Release everything: the block drains and goes back after Hold,
	// and only then can another client get it.
	for _, m := range ms {
		p.Release(m)
	}
	clk.Advance(5 * time.Second)
	// Client 1 still owns the block; the other block is free for client 2.
	m2 := mustAlloc(t, p, ip("10.0.0.2"), IPv4)
	if _, b := blockOf(p, m2); b != 1 {
		t.Fatalf("client 2 got block %d", b)
	}
	if _, err := p.Allocate(ip("10.0.0.3"), IPv4); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("client 3: %v, want ErrPoolFull (block 0 still draining)", err)
	}
	clk.Advance(5 * time.Second)
	p.Sweep()
	st := p.Stats()
	if st.BlockReleases != 1 || st.UsedBlocks != 1 || len(st.Clients) != 1 {
		t.Fatalf("block not returned: %+v", st)
	}
	m3 := mustAlloc(t, p, ip("10.0.0.3"), IPv4)
	if _, b := blockOf(p, m3); b != 0 {
		t.Fatalf("client 3 got block %d", b)
	}
	checkInvariants(t, p, nil)
}

// A client re-using its draining block keeps it, and ports on hold in it
// stay on hold.
func TestDrainingBlockReused(t *testing.T) {
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 4, MaxBlocksPerClient: 1,
		PortMin: 1000, PortMax: 1007, Hold: 10 * time.Second, Now: clk.Now,
	})
	c := ip("10.0.0.1")
	m1 := mustAlloc(t, p, c, IPv4)
	p.Release(m1)
	clk.Advance(5 * time.Second)
	m2 := mustAlloc(t, p, c, IPv4)
	if m2.External == m1.External {
		t.Fatal("held port reissued")
	}
	clk.Advance(6 * time.Second) // first drain deadline passed, but block is live
	p.Sweep()
	if st := p.Stats(); st.UsedBlocks != 1 || st.BlockReleases != 0 {
		t.Fatalf("live block released: %+v", st)
	}
	p.Release(m2)
	clk.Advance(9 * time.Second)
	p.Sweep()
	if st := p.Stats(); st.UsedBlocks != 1 {
		t.Fatalf("block released while a port is on hold: %+v", st)
	}
	clk.Advance(time.Second)
	p.Sweep()
	if st := p.Stats(); st.UsedBlocks != 0 || st.HeldPorts != 0 || st.FreePorts != st.TotalPorts || len(st.Clients) != 0 {
		t.Fatalf("block not released: %+v", st)
	}
	checkInvariants(t, p, nil)
}

func TestExhaustionNeverEvicts(t *testing.T) {
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/31")}, BlockSize: 4, MaxBlocksPerClient: 2,
		PortMin: 1000, PortMax: 1007, Now: clk.Now,
	})
	live := map[netip.AddrPort]Mapping{}
	add := func(c string) Mapping {
		m := mustAlloc(t, p, ip(c), IPv4)
		live[m.External] = m
		return m
	}
	a := add("10.0.0.1") // .10 block 0
	b := add("10.0.0.2") // .11 block 0 (least loaded)
	c := add("10.0.0.3") // .10 block 1 (tie broken by address)
	if a.External.Addr() == b.External.Addr() || a.External.Addr() != c.External.Addr() {
		t.Fatalf("placement %v %v %v", a, b, c)
	}
	add("10.0.0.2") // b's block
	for range 3 {
		add("10.0.0.1")
	}
	// a's block is full, its address has no free block: refused even
	// though .11 has a free block (pairing is kept).
	if _, err := p.Allocate(ip("10.0.0.1"), IPv4); !errors.Is(err, ErrAddressFull) || !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want ErrAddressFull", err)
	}
	add("10.0.0.4") // .11 block 1
	if _, err := p.Allocate(ip("10.0.0.5"), IPv4); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("got %v, want ErrPoolFull", err)
	}
	checkInvariants(t, p, live)
	st := p.Stats()
	if st.RefusalsAddressFull != 1 || st.RefusalsPoolFull != 1 || st.UsedBlocks != 4 || st.UsedPorts != len(live) {
		t.Fatalf("stats %+v", st)
	}
	for _, m := range live {
		if err := p.Release(m); err != nil {
			t.Fatalf("mapping %v lost: %v", m, err)
		}
	}
}

func TestReleaseErrors(t *testing.T) {
	p := mustPool(t, PoolConfig{Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, Now: newClock().Now})
	m := mustAlloc(t, p, ip("10.0.0.1"), IPv4)
	bad := []Mapping{
		{External: m.External, Client: ip("10.0.0.2")},
		{External: netip.AddrPortFrom(ip("192.0.2.11"), m.External.Port()), Client: m.Client},
		{External: netip.AddrPortFrom(m.External.Addr(), 80), Client: m.Client},
		{External: netip.AddrPortFrom(m.External.Addr(), m.External.Port()^1), Client: m.Client},
		{},
	}
	for _, b := range bad {
		if err := p.Release(b); !errors.Is(err, ErrNotAllocated) {
			t.Errorf("Release(%v) = %v", b, err)
		}
	}
	if err := p.Release(m); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(m); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("double release: %v", err)
	}
	if _, err := p.Allocate(netip.Addr{}, IPv4); !errors.Is(err, ErrBadClient) {
		t.Fatal(err)
	}
	if _, err := p.Allocate(ip("10.0.0.1"), IPv6); !errors.Is(err, ErrNoFamily) || errors.Is(err, ErrExhausted) {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Releases != 1 || st.Allocations != 1 || st.UsedPorts != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPrefixes(t *testing.T) {
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{
			pfx("192.0.2.0/30"), pfx("192.0.2.8/31"), pfx("192.0.2.20/32"),
			pfx("2001:db8:1::/48"), pfx("2001:db8:2::5/128"), pfx("2001:db8:3::/127"),
		},
		IPv6AddrsPerPrefix: 3,
	})
	var got []string
	for _, a := range p.addrs {
		got = append(got, a.ip.String())
	}
	want := "[192.0.2.1 192.0.2.2 192.0.2.8 192.0.2.9 192.0.2.20 2001:db8:1::1 2001:db8:1::2 2001:db8:1::3 2001:db8:2::5 2001:db8:3::1]"
	if fmt.Sprint(got) != want {
		t.Fatalf("addresses\n got %v\nwant %s", got, want)
	}
	st := p.Stats()
	if st.Addresses != 10 || st.TotalBlocks != 10*126 || st.TotalPorts != 10*126*512 || st.FreePorts != st.TotalPorts {
		t.Fatalf("stats %+v", st)
	}
	// An IPv6 client may want an IPv4 external address and vice versa;
	// the two pairings are independent.
	c := ip("2001:db8:ff::1")
	m4 := mustAlloc(t, p, c, IPv4)
	m6 := mustAlloc(t, p, c, IPv6)
	if !m4.External.Addr().Is4() || !m6.External.Addr().Is6() {
		t.Fatalf("families: %v %v", m4, m6)
	}
	if st := p.Stats(); len(st.Clients) != 2 || st.Clients[0].Family != IPv4 || st.Clients[1].Family != IPv6 {
		t.Fatalf("clients %+v", st.Clients)
	}

	for _, bad := range []PoolConfig{
		{},
		{Prefixes: []netip.Prefix{pfx("192.0.2.0/24"), pfx("192.0.2.128/25")}},
		{Prefixes: []netip.Prefix{pfx("192.0.2.0/24")}, BlockSize: 70000},
		{Prefixes: []netip.Prefix{pfx("192.0.2.0/24")}, PortMin: 2000, PortMax: 1000},
		{Prefixes: []netip.Prefix{pfx("192.0.2.0/24")}, MaxBlocksPerClient: -1},
		{Prefixes: []netip.Prefix{pfx("10.0.0.0/8")}},
		{Prefixes: []netip.Prefix{pfx("::ffff:192.0.2.0/120")}},
	} {
		if _, err := NewPool(bad); err == nil {
			t.Errorf("NewPool(%+v) accepted", bad)
		}
	}
}

func TestStatsAddUp(t *testing.T) {
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.0/29"), pfx("2001:db8::/64")}, BlockSize: 64,
		Hold: time.Second, Now: clk.Now,
	})
	r := rand.New(rand.NewPCG(1, 2))
	live := map[netip.AddrPort]Mapping{}
	var allocs, rels uint64
	for i := range 5000 {
		if len(live) > 0 && r.IntN(3) == 0 {
			for k, m := range live {
				if err := p.Release(m); err != nil {
					t.Fatal(err)
				}
				delete(live, k)
				rels++
				break
			}
		} else {
			c := netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(20))})
			m, err := p.Allocate(c, Family(4+2*r.IntN(2)))
			if err != nil {
				if !errors.Is(err, ErrExhausted) {
					t.Fatal(err)
				}
				continue
			}
			if _, dup := live[m.External]; dup {
				t.Fatalf("%v handed out twice", m.External)
			}
			live[m.External] = m
			allocs++
		}
		if i%7 == 0 {
			clk.Advance(100 * time.Millisecond)
		}
		st := p.Stats()
		if st.FreePorts+st.UsedPorts+st.HeldPorts != st.TotalPorts || st.UsedPorts != len(live) {
			t.Fatalf("stats do not add up: %+v", st)
		}
		blocks, ports := 0, 0
		for _, c := range st.Clients {
			blocks += c.Blocks
			ports += c.Ports
		}
		if blocks != st.UsedBlocks || ports != st.UsedPorts {
			t.Fatalf("per client %d blocks %d ports, totals %+v", blocks, ports, st)
		}
	}
	checkInvariants(t, p, live)
	st := p.Stats()
	if st.Allocations != allocs || st.Releases != rels {
		t.Fatalf("counters %+v, want %d/%d", st, allocs, rels)
	}
}

func TestConcurrent(t *testing.T) {
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.0/30"), pfx("2001:db8::/64")}, IPv6AddrsPerPrefix: 2,
		BlockSize: 32, MaxBlocksPerClient: 3, PortMin: 1024, PortMax: 2047,
		Hold: 20 * time.Millisecond, Now: clk.Now,
	})
	var inUse sync.Map
	var okN, refused, released atomic.Int64
	var wg sync.WaitGroup
	const G, N = 32, 3000
	for g := range G {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			var mine []Mapping
			for range N {
				if len(mine) > 0 && (len(mine) > 40 || r.IntN(2) == 0) {
					i := r.IntN(len(mine))
					m := mine[i]
					mine[i] = mine[len(mine)-1]
					mine = mine[:len(mine)-1]
					inUse.Delete(m.External) // before the port can be reissued
					if err := p.Release(m); err != nil {
						t.Errorf("Release(%v): %v", m, err)
						return
					}
					released.Add(1)
				} else {
					c := netip.AddrFrom4([4]byte{10, 1, byte(g), byte(r.IntN(3))})
					m, err := p.Allocate(c, Family(4+2*r.IntN(2)))
					if err != nil {
						if !errors.Is(err, ErrExhausted) {
							t.Errorf("Allocate: %v", err)
							return
						}
						refused.Add(1)
						continue
					}
					if prev, dup := inUse.LoadOrStore(m.External, m); dup {
						t.Errorf("%v handed out twice: %v and %v", m.External, prev, m)
						return
					}
					mine = append(mine, m)
					okN.Add(1)
				}
				clk.Advance(time.Millisecond / 4)
			}
			for _, m := range mine {
				inUse.Delete(m.External)
				if err := p.Release(m); err != nil {
					t.Errorf("Release(%v): %v", m, err)
				}
				released.Add(1)
			}
		})
	}
	wg.Wait()
	st := p.Stats()
	if st.Allocations != uint64(okN.Load()) || st.Releases != uint64(released.Load()) || st.Refusals != uint64(refused.Load()) {
		t.Fatalf("counters %+v; ok %d released %d refused %d", st, okN.Load(), released.Load(), refused.Load())
	}
	if st.UsedPorts != 0 || okN.Load() != released.Load() {
		t.Fatalf("ports left in use: %+v", st)
	}
	t.Logf("allocated %d, refused %d", okN.Load(), refused.Load())
	clk.Advance(time.Second)
	p.Sweep()
	checkInvariants(t, p, map[netip.AddrPort]Mapping{})
	st = p.Stats()
	if st.UsedBlocks != 0 || st.HeldPorts != 0 || st.FreePorts != st.TotalPorts || len(st.Clients) != 0 || st.BlockAllocations != st.BlockReleases {
		t.Fatalf("pool not back to empty: %+v", st)
	}
}

func BenchmarkAllocateRelease(b *testing.B) {
	clk := newClock()
	p := mustPool(b, PoolConfig{Prefixes: []netip.Prefix{pfx("100.64.0.0/22")}, Now: clk.Now})
	clients := make([]netip.Addr, 1000)
	for i := range clients {
		clients[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	}
	// Keep a window of live sessions so blocks are shared and held.
	var ring [256]Mapping
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		slot := &ring[i&255]
		if slot.Client.IsValid() {
			if err := p.Release(*slot); err != nil {
				b.Fatal(err)
			}
		}
		m, err := p.Allocate(clients[i%len(clients)], IPv4)
		if err != nil {
			b.Fatal(err)
		}
		*slot = m
		clk.Advance(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}
