package engine

import (
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// Defaults of the per-client limits (RFC 8803 §9.3, RFC 6888 REQ-4).
const (
	DefaultMaxPendingPerClient  = 256
	DefaultMaxSessionsPerClient = 1024
	DefaultMaxHandshakes        = 8192
	DefaultRatePerClient        = 200 // new sessions per second; the burst is as large
	DefaultClientPrefixV6       = 64
	DefaultMaxTransparentPorts  = 1024
	// DefaultShutdownDrain is how long sessions may run to their end
	// after SIGTERM.
	DefaultShutdownDrain = 30 * time.Second
)

// clientKey is what every per-client limit counts by, and what NAT pairs:
// an IPv4 address, or the IPv6 prefix a subscriber is given (one /64
// holds 2^64 addresses, one host can use many of them).
func (s *Server) clientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(s.cfg.ClientPrefixV6)
	return p
}

// clientTable holds the per-client counts: sessions being set up
// (pending), sessions in all, and a token bucket of new sessions.
// Entries live while a client has sessions or an unfilled bucket.
type clientTable struct {
	now func() time.Time

	mu                                     sync.Mutex
	maxPending, maxSessions, maxHandshakes int
	rate                                   float64 // tokens per second; 0: no rate limit
	m                                      map[netip.Prefix]*clientState
	handshakes                             int // pending sessions of every client
	lastSweep                              time.Time
}

type clientState struct {
	pending, sessions int
	tokens            float64
	at                time.Time // when tokens was last brought up to date
}

func newClientTable(cfg Config) *clientTable {
	t := &clientTable{now: time.Now, m: map[netip.Prefix]*clientState{}}
	t.setLimits(cfg)
	return t
}

// setLimits puts cfg's per-client limits in force (a reload); counts and
// buckets are kept.
func (t *clientTable) setLimits(cfg Config) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.maxPending, t.maxSessions = cfg.MaxPendingPerClient, cfg.MaxSessionsPerClient
	t.maxHandshakes, t.rate = cfg.MaxHandshakes, float64(cfg.RatePerClient)
}

// arrive counts a new connection of client k as pending, or says which
// limit it hit. Called at accept, before anything is allocated for the
// connection.
func (t *clientTable) arrive(k netip.Prefix) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.sweep(now)
	if t.maxHandshakes > 0 && t.handshakes >= t.maxHandshakes {
		return fmt.Errorf("%d connections in their handshake, limit %d", t.handshakes, t.maxHandshakes)
	}
	c := t.m[k]
	if c == nil {
		c = &clientState{tokens: t.rate, at: now}
	}
	switch {
	case t.maxPending > 0 && c.pending >= t.maxPending:
		return fmt.Errorf("client %s has %d sessions being set up, limit %d", k, c.pending, t.maxPending)
	case t.maxSessions > 0 && c.sessions >= t.maxSessions:
		return fmt.Errorf("client %s has %d sessions, limit %d", k, c.sessions, t.maxSessions)
	}
	if t.rate > 0 {
		c.tokens = min(t.rate, c.tokens+now.Sub(c.at).Seconds()*t.rate)
		c.at = now
		if c.tokens < 1 {
			t.m[k] = c // keep the empty bucket
			return fmt.Errorf("client %s opens sessions faster than %g per second", k, t.rate)
		}
		c.tokens--
	}
	c.pending++
	c.sessions++
	t.handshakes++
	t.m[k] = c
	return nil
}

// established moves a session of k from pending to relaying.
func (t *clientTable) established(k netip.Prefix) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.m[k]; c != nil && c.pending > 0 {
		c.pending--
		t.handshakes--
	}
}

// leave ends a session of k; wasPending says it never reached the relay.
func (t *clientTable) leave(k netip.Prefix, wasPending bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.m[k]
	if c == nil {
		return
	}
	if wasPending && c.pending > 0 {
		c.pending--
		t.handshakes--
	}
	if c.sessions > 0 {
		c.sessions--
	}
	if c.sessions == 0 && t.full(c, t.now()) {
		delete(t.m, k)
	}
}

// full reports whether c's bucket has refilled: forgetting it then
// changes nothing.
func (t *clientTable) full(c *clientState, now time.Time) bool {
	return t.rate == 0 || c.tokens+now.Sub(c.at).Seconds()*t.rate >= t.rate
}

// sweep forgets, now and then, clients without sessions whose bucket
// refilled, so that the table is bounded by the clients seen in the
// last second or so.
func (t *clientTable) sweep(now time.Time) {
	if now.Sub(t.lastSweep) < time.Second {
		return
	}
	t.lastSweep = now
	for k, c := range t.m {
		if c.sessions == 0 && t.full(c, now) {
			delete(t.m, k)
		}
	}
}

// counts returns the pending and total sessions of k.
func (t *clientTable) counts(k netip.Prefix) (pending, sessions int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.m[k]; c != nil {
		return c.pending, c.sessions
	}
	return 0, 0
}

// pendingHandshakes returns the sessions of every client that have not
// reached the relay yet.
func (t *clientTable) pendingHandshakes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.handshakes
}
