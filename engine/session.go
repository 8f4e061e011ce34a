package engine

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/convert-tc/converter/nat"
	sessions "github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
)

// session is the engine's own machinery for one converted connection.
// The connection's record (legs, addresses, start, counters, state) is
// its table entry, which operators read too: one copy, not two in step.
type session struct {
	srv       *Server         // its counters, buffers, logger, parker
	entry     *sessions.Entry // never nil: one outside the table when it was full
	mapping   *nat.Mapping    // the server leg's source from the shared pool, if any
	handshake *handshakeWatch // the client's handshake, until the reply
	dirs      [2]direction    // the relay's (relay.go), set by startRelay, guarded by relayMu
	endReason string          // guarded by mu
	end       sessionEnd

	preserved    bool        // the server leg is sourced from the client's address
	mptcp        bool        // the Client leg is MPTCP (false: plain TCP or fallback)
	synData      bool        // the Convert message came in the SYN
	relayAborted bool        // guarded by relayMu
	relayDone    bool        // guarded by relayMu
	detached     bool        // both directions parked on duplicates, no connections (detach.go); guarded by relayMu
	unverified   atomic.Bool // the client never completed its handshake
	relaying     atomic.Bool // the relay started: the idle sweep may end it
	abortOnce    sync.Once
	relayMu      sync.Mutex
	mu           sync.Mutex
}

// logger is the session's logger, built when it logs (at its end, on a
// refusal) rather than held by every idle session.
func (s *session) logger() *slog.Logger {
	return slog.New(s.srv.log.Handler().WithAttrs(s.logAttrs(nil)))
}

// logAttrs appends the session's identity to attrs.
func (s *session) logAttrs(attrs []slog.Attr) []slog.Attr {
	attrs = append(attrs,
		slog.Uint64("session", s.entry.ID()),
		slog.String("client", s.entry.ClientAddr().String()),
		slog.Bool("mptcp", s.mptcp))
	if d := s.entry.Destination(); d.IsValid() {
		attrs = append(attrs, slog.String("destination", d.String()))
	}
	return attrs
}

// setEndReason keeps the first reason given: it is the cause, later ones
// are consequences.
func (s *session) setEndReason(r string) {
	s.mu.Lock()
	if s.endReason == "" {
		s.endReason = r
	}
	s.mu.Unlock()
}

func (s *session) reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.endReason == "" {
		return "closed"
	}
	return s.endReason
}

var errIdle = errors.New("idle timeout")

// sessionEnd is what a session's end undoes besides its legs (see
// Server.endSession): fields rather than closures, since every idle
// session holds it.
type sessionEnd struct {
	clientKey   netip.Prefix // its place in the client table
	pending     bool         // still counted there as not yet relaying
	steered     bool         // joinToken is in the steering program's map
	joinToken   uint32
	releasePort func() // its transparent per-port listener, if any
}

// idleSweeps is how many times per idle timeout the sessions are looked
// at: an idle session ends between the timeout and an eighth more (at
// most idleSweepMax more). One sweep, not a timer per session: an idle
// session should hold no timer.
const (
	idleSweeps   = 8
	idleSweepMax = 30 * time.Second
)

// sweepIdle aborts the relaying sessions in which no byte moved for idle,
// until ctx ends.
func (s *Server) sweepIdle(ctx context.Context, idle time.Duration) {
	t := time.NewTicker(min(max(idle/idleSweeps, 10*time.Millisecond), idleSweepMax))
	defer t.Stop()
	var batch []*session
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		for sess := range s.sessions {
			if sess.relaying.Load() {
				batch = append(batch, sess)
			}
		}
		s.mu.Unlock()
		now := time.Now()
		for _, sess := range batch {
			if now.Sub(sess.entry.LastActive()) >= idle && sess.abortBoth(errIdle) {
				s.stats.idle.Add(1)
			}
		}
		clear(batch)
		batch = batch[:0]
	}
}

// counters are the converter's event counts.
type counters struct {
	accepts, mptcp, fallback, synData atomic.Uint64
	converted, infoOnly, dialFailures atomic.Uint64
	resets, aborts                    atomic.Uint64
	synAckMissed                      atomic.Uint64      // capture on, SYN+ACK not found
	portsCapped                       atomic.Uint64      // sessions without a per-port listener: cap reached
	unverified                        atomic.Uint64      // clients that never completed their handshake
	refused                           [256]atomic.Uint64 // by Error code
	idle                              atomic.Uint64      // sessions closed by the idle timeout
	byKind                            [NumLegKinds][NumArrivals]atomic.Uint64
	// Per relay direction (the sessions.Side the bytes come from).
	relayResets [2]atomic.Uint64
	bytes       [2][NumLegKinds]atomic.Uint64
}

func (c *counters) accepted(s *session) {
	c.accepts.Add(1)
	if s.mptcp {
		c.mptcp.Add(1)
	} else {
		c.fallback.Add(1)
	}
	arrival := ArrivalAfterHandshake
	if s.synData {
		c.synData.Add(1)
		arrival = ArrivalSYN
	}
	c.byKind[s.legKind()][arrival].Add(1)
}

func (c *counters) refusal(r *refusal) {
	switch r.action {
	case tlv.ActionReset:
		c.resets.Add(1)
	case tlv.ActionAbort:
		c.aborts.Add(1)
	default:
		c.refused[r.code].Add(1)
	}
}

// Stats is a snapshot of the counters.
type Stats struct {
	Accepted     uint64 `json:"accepted"`
	MPTCP        uint64 `json:"mptcp"`
	PlainTCP     uint64 `json:"plain_tcp"`
	SynData      uint64 `json:"syn_data"`
	Converted    uint64 `json:"converted"`
	InfoOnly     uint64 `json:"info_only"`
	DialFailures uint64 `json:"dial_failures"`
	Resets       uint64 `json:"resets"`
	Aborts       uint64 `json:"silent_aborts"`
	SynAckMissed uint64 `json:"syn_ack_capture_missed"`
	PortsCapped  uint64 `json:"transparent_ports_capped"`
	// Unverified counts sessions whose client never completed its
	// handshake (a spoofed source, or a client gone at once).
	Unverified uint64            `json:"unverified"`
	Refused    map[string]uint64 `json:"refused"` // by Error code name
	Active     int64             `json:"active"`
	// TransparentPorts is how many per-port listeners are open now.
	TransparentPorts int `json:"transparent_ports"`
	// ParkedDirections is how many relay directions wait without a
	// goroutine (idle sessions park both); MemoryTrims how many times
	// the memory they freed was returned to the kernel at once.
	ParkedDirections int    `json:"parked_directions"`
	MemoryTrims      uint64 `json:"memory_trims"`
}

// Stats returns the counters as they are now.
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Accepted: c.accepts.Load(), MPTCP: c.mptcp.Load(), PlainTCP: c.fallback.Load(),
		SynData: c.synData.Load(), Converted: c.converted.Load(), InfoOnly: c.infoOnly.Load(),
		DialFailures: c.dialFailures.Load(), Resets: c.resets.Load(), Aborts: c.aborts.Load(),
		SynAckMissed: c.synAckMissed.Load(), PortsCapped: c.portsCapped.Load(), Unverified: c.unverified.Load(),
		Refused: map[string]uint64{}, Active: s.active.Load(), TransparentPorts: s.TransparentPorts(),
	}
	if s.parker != nil {
		st.ParkedDirections = s.parker.parkedCount()
		st.MemoryTrims = s.trimmer.trims.Load()
	}
	for i := range c.refused {
		if n := c.refused[i].Load(); n > 0 {
			st.Refused[tlv.ErrorCode(i).String()] = n
		}
	}
	return st
}
