package engine

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func testClients(cfg Config) (*clientTable, *time.Time) {
	now := time.Unix(1000, 0)
	t := newClientTable(cfg.WithDefaults())
	t.now = func() time.Time { return now }
	return t, &now
}

func TestClientKey(t *testing.T) {
	s := &Server{cfg: Config{ClientPrefixV6: 64}}
	for in, want := range map[string]string{
		"10.0.0.1":            "10.0.0.1/32",
		"::ffff:10.0.0.1":     "10.0.0.1/32",
		"2001:db8:1:2::1":     "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::": "2001:db8:1:2::/64",
	} {
		if got := s.clientKey(netip.MustParseAddr(in)); got != netip.MustParsePrefix(want) {
			t.Errorf("clientKey(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestClientLimits(t *testing.T) {
	ct, _ := testClients(Config{MaxPendingPerClient: 2, MaxSessionsPerClient: 3, RatePerClient: -1})
	a := netip.MustParsePrefix("10.0.0.1/32")
	b := netip.MustParsePrefix("10.0.0.2/32")
	mustArrive := func(k netip.Prefix) {
		t.Helper()
		if err := ct.arrive(k); err != nil {
			t.Fatalf("arrive %s: %v", k, err)
		}
	}
	mustArrive(a)
	mustArrive(a)
	if err := ct.arrive(a); err == nil || !strings.Contains(err.Error(), "being set up") {
		t.Fatalf("third pending session of a: %v", err)
	}
	mustArrive(b) // another client is not affected
	ct.established(a)
	mustArrive(a) // a: 1 pending + 1 relaying + this one
	ct.established(a)
	if err := ct.arrive(a); err == nil || !strings.Contains(err.Error(), "3 sessions") {
		t.Fatalf("fourth session of a: %v", err)
	}
	ct.leave(a, false) // the relaying one ends
	mustArrive(a)
	if p, n := ct.counts(a); p != 2 || n != 3 {
		t.Errorf("a: %d pending, %d sessions; want 2, 3", p, n)
	}
	ct.leave(a, true)
	ct.leave(a, true)
	ct.leave(a, false)
	ct.leave(b, true)
	if len(ct.m) != 0 || ct.handshakes != 0 {
		t.Errorf("left behind: %v, %d handshakes", ct.m, ct.handshakes)
	}
}

func TestClientRate(t *testing.T) {
	ct, now := testClients(Config{RatePerClient: 10})
	a := netip.MustParsePrefix("2001:db8::/64")
	for i := range 10 {
		if err := ct.arrive(a); err != nil {
			t.Fatalf("session %d within the burst: %v", i, err)
		}
		ct.established(a)
	}
	if err := ct.arrive(a); err == nil || !strings.Contains(err.Error(), "faster than") {
		t.Fatalf("11th session in the same instant: %v", err)
	}
	*now = now.Add(100 * time.Millisecond) // one token back
	if err := ct.arrive(a); err != nil {
		t.Fatalf("after 100 ms: %v", err)
	}
	if err := ct.arrive(a); err == nil {
		t.Fatal("a second session after 100 ms")
	}
	// Sessions ending do not refill the bucket: only time does.
	for range 11 {
		ct.leave(a, false)
	}
	if _, ok := ct.m[a]; !ok {
		t.Fatal("a client with an empty bucket was forgotten")
	}
	if err := ct.arrive(a); err == nil {
		t.Fatal("closing sessions refilled the bucket")
	}
	*now = now.Add(2 * time.Second)
	ct.sweep(*now)
	if len(ct.m) != 0 {
		t.Errorf("a client without sessions and a full bucket is kept: %v", ct.m)
	}
}

func TestHandshakeCap(t *testing.T) {
	ct, _ := testClients(Config{MaxHandshakes: 2, RatePerClient: -1})
	for i, k := range []string{"10.0.0.1/32", "10.0.0.2/32"} {
		if err := ct.arrive(netip.MustParsePrefix(k)); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	if err := ct.arrive(netip.MustParsePrefix("10.0.0.3/32")); err == nil || !strings.Contains(err.Error(), "handshake") {
		t.Fatalf("third handshake: %v", err)
	}
	ct.established(netip.MustParsePrefix("10.0.0.1/32"))
	if err := ct.arrive(netip.MustParsePrefix("10.0.0.3/32")); err != nil {
		t.Fatalf("after one handshake ended: %v", err)
	}
}

func TestLogLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLogLimiter(10, 3)
	l.now = func() time.Time { return now }
	for i := range 3 {
		if ok, _ := l.allow(); !ok {
			t.Fatalf("line %d of the burst refused", i)
		}
	}
	for range 5 {
		if ok, _ := l.allow(); ok {
			t.Fatal("a line past the burst allowed")
		}
	}
	now = now.Add(100 * time.Millisecond)
	if ok, n := l.allow(); !ok || n != 5 {
		t.Fatalf("after 100 ms: allowed %v, %d suppressed reported; want true, 5", ok, n)
	}
	if ok, _ := l.allow(); ok {
		t.Fatal("a second line after one token came back")
	}
}
