package nat

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// FuzzPool drives a small pool with a byte string of operations
// (allocate, release, double release, advance the clock, sweep) and checks
// after each one: no port is handed out twice, a released port is not
// reissued before Hold, live mappings of a client share one external
// address, refusals are justified and never evict, blocks per client stay
// within the limit and Free + Used + Held == Total.
func FuzzPool(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 2, 0, 3, 50, 0, 1})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 3, 101, 0, 0})
	f.Add([]byte{0, 8, 0, 9, 0, 10, 1, 11, 2, 1, 6, 0, 3, 255, 0, 8, 2, 0, 3, 1, 0, 12})
	f.Fuzz(fuzzPool)
}

func fuzzPool(t *testing.T, ops []byte) {
	if len(ops) > 512 { // long inputs only slow the fuzzer down
		ops = ops[:512]
	}
	const hold = 10 * time.Second
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes:           []netip.Prefix{pfx("192.0.2.10/31"), pfx("2001:db8::/64")},
		IPv6AddrsPerPrefix: 1, BlockSize: 4, MaxBlocksPerClient: 2,
		PortMin: 1000, PortMax: 1013, // 3 blocks per address, 2 ports unused
		Hold: hold, Now: clk.Now, Rand: rand.New(rand.NewPCG(1, 2)),
	})
	live := map[netip.AddrPort]Mapping{}
	var order []netip.AddrPort
	released := map[netip.AddrPort]time.Time{}
	var last Mapping
	next := func(i *int) byte {
		if *i >= len(ops) {
			return 0
		}
		b := ops[*i]
		*i++
		return b
	}
	for i := 0; i < len(ops); {
		op := next(&i)
		switch op % 5 {
		case 0, 1: // allocate
			x := next(&i)
			c := netip.AddrFrom4([4]byte{10, 0, 0, x & 7})
			fam := IPv4
			if x&8 != 0 {
				fam = IPv6
			}
			m, err := p.Allocate(c, fam)
			if err != nil {
				checkRefusal(t, p, c, fam, err)
				continue
			}
			if _, dup := live[m.External]; dup {
				t.Fatalf("%v handed out twice", m.External)
			}
			if at, ok := released[m.External]; ok && clk.Now().Sub(at) < hold {
				t.Fatalf("%v reissued %v after release", m.External, clk.Now().Sub(at))
			}
			if FamilyOf(m.External.Addr()) != fam || m.Client != c {
				t.Fatalf("mapping %v for %v %v", m, c, fam)
			}
			for _, o := range live {
				if o.Client == c && FamilyOf(o.External.Addr()) == fam && o.External.Addr() != m.External.Addr() {
					t.Fatalf("not paired: %v and %v", o, m)
				}
			}
			live[m.External] = m
			order = append(order, m.External)
		case 2: // release
			if len(order) == 0 {
				continue
			}
			j := int(next(&i)) % len(order)
			ap := order[j]
			order[j] = order[len(order)-1]
			order = order[:len(order)-1]
			m := live[ap]
			delete(live, ap)
			if err := p.Release(m); err != nil {
				t.Fatalf("Release(%v): %v", m, err)
			}
			released[ap] = clk.Now()
			last = m
		case 3: // release again, or a foreign mapping
			m := last
			if _, ok := live[m.External]; ok || !m.Client.IsValid() {
				m.Client = ip("10.9.9.9")
			}
			if err := p.Release(m); !errors.Is(err, ErrNotAllocated) {
				t.Fatalf("bogus Release(%v) = %v", m, err)
			}
		case 4: // advance the clock, maybe sweep
			x := next(&i)
			clk.Advance(time.Duration(x) * 100 * time.Millisecond)
			if x&1 != 0 {
				p.Sweep()
			}
		}
		checkInvariants(t, p, live)
		st := p.Stats()
		if st.FreePorts+st.UsedPorts+st.HeldPorts != st.TotalPorts || st.UsedPorts != len(live) {
			t.Fatalf("stats %+v with %d live", st, len(live))
		}
		for _, cs := range st.Clients {
			if cs.Blocks > 2 || cs.Blocks < 1 {
				t.Fatalf("client %+v", cs)
			}
		}
	}
	// Everything goes back once released and held long enough.
	for _, m := range live {
		if err := p.Release(m); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(hold)
	p.Sweep()
	st := p.Stats()
	if st.UsedBlocks != 0 || st.FreePorts != st.TotalPorts || st.BlockAllocations != st.BlockReleases {
		t.Fatalf("pool not empty at the end: %+v", st)
	}
}

// checkRefusal verifies that err is a justified exhaustion.
func checkRefusal(t *testing.T, p *Pool, c netip.Addr, fam Family, err error) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	cl := p.clients[clientKey{c, fam}]
	switch {
	case errors.Is(err, ErrClientLimit):
		if cl == nil || len(cl.blocks) != p.maxBlocks {
			t.Fatalf("ErrClientLimit for %v with %v", c, cl)
		}
	case errors.Is(err, ErrAddressFull):
		if cl == nil || cl.ext.used != p.nBlocks || len(cl.blocks) >= p.maxBlocks {
			t.Fatalf("ErrAddressFull for %v", c)
		}
	case errors.Is(err, ErrPoolFull):
		if cl != nil {
			t.Fatalf("ErrPoolFull for paired client %v", c)
		}
		for _, a := range p.addrs {
			if a.fam == fam && a.used < p.nBlocks {
				t.Fatalf("ErrPoolFull while %v has a free block", a.ip)
			}
		}
	default:
		t.Fatalf("Allocate(%v, %v): %v", c, fam, err)
	}
	if cl != nil {
		for _, b := range cl.blocks {
			if len(b.free) > 0 {
				t.Fatalf("refused %v with a free port in its block", c)
			}
		}
	}
}
