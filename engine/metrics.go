package engine

import "github.com/convert-tc/converter/internal/histogram"

// The engine measures itself with atomic counters and lock-free
// histograms (internal/histogram) and knows no metrics library: a
// collector reads Server.Metrics at scrape time (internal/metrics exports
// it to Prometheus). An observation is a few atomic additions; the relay
// adds one per chunk moved (up to 256 KiB or 1 MiB), nothing per packet.

// LegKind is what the client leg is: MPTCP, or plain TCP (a client
// without MPTCP, or one that fell back).
type LegKind uint8

const (
	LegMPTCP LegKind = iota
	LegTCP
	NumLegKinds
)

func (k LegKind) String() string {
	if k == LegMPTCP {
		return "mptcp"
	}
	return "tcp"
}

// Arrival is where the Convert message came: in the SYN (TCP Fast Open
// data) or after the handshake.
type Arrival uint8

const (
	ArrivalSYN Arrival = iota
	ArrivalAfterHandshake
	NumArrivals
)

func (a Arrival) String() string {
	if a == ArrivalSYN {
		return "syn"
	}
	return "after_handshake"
}

// Bounds of the engine's histograms.
var (
	// Set-up latencies: from a few tens of microseconds on loopback to
	// the handshake timeout.
	setupBounds = histogram.Durations(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
	// Server-leg connects: a round trip to anywhere, up to the dial timeout.
	connectBounds = histogram.Durations(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
	// Sessions: a request to a day-long tunnel.
	durationBounds = histogram.Durations(0.01, 0.1, 1, 10, 60, 300, 900, 3600, 7200, 21600, 86400)
	subflowBounds  = []int64{1, 2, 3, 4, 5, 6, 8, 12, 16}
)

// timings are the engine's histograms. Durations are in nanoseconds.
type timings struct {
	// synToServerSyn: accept of the Convert SYN to the server-leg SYN
	// (the first connect attempt); synToReply: to the Convert reply
	// written; connect: the server-leg connect that succeeded.
	synToServerSyn, synToReply, connect *histogram.Histogram
	// duration: converted sessions, accept to end of the relay;
	// subflows: subflows an MPTCP session had over its life, at its end.
	duration, subflows *histogram.Histogram
}

func newTimings() timings {
	return timings{
		synToServerSyn: histogram.New(setupBounds...),
		synToReply:     histogram.New(setupBounds...),
		connect:        histogram.New(connectBounds...),
		duration:       histogram.New(durationBounds...),
		subflows:       histogram.New(subflowBounds...),
	}
}

// Metrics is the engine's counters, gauges and histograms at one time,
// typed for a collector.
type Metrics struct {
	// Accepted counts connections that became sessions, by client leg
	// and by where the Convert message came.
	Accepted [NumLegKinds][NumArrivals]uint64
	// Converted sessions reached the relay; InfoOnly requests were
	// answered with Supported TCP Extensions.
	Converted, InfoOnly uint64
	// Refused counts Error TLVs sent, by Error code; Resets the
	// connections reset instead (the codec's verdict), Aborts those
	// closed silently.
	Refused        [256]uint64
	Resets, Aborts uint64
	// RelayResets counts sessions aborted because one relay direction
	// failed (a reset or an error on a leg), by the side the bytes came
	// from: sessions.Client is the direction toward the server.
	RelayResets [2]uint64
	// IdleTimeouts counts sessions closed by the idle timeout.
	IdleTimeouts uint64
	// Bytes relayed, by the side they came from (sessions.Client: toward
	// the server) and the client leg's kind.
	Bytes [2][NumLegKinds]uint64

	DialFailures, SynAckMissed, PortsCapped, Unverified uint64

	// Gauges: sessions being served (accepted, not yet ended), those
	// still in their set-up, per-port transparent listeners open.
	Active            int64
	PendingHandshakes int
	TransparentPorts  int
	// Parked relay directions (gauge) and memory trims (counter).
	ParkedDirections int
	MemoryTrims      uint64

	// Histograms; durations in nanoseconds.
	SynToServerSyn, SynToReply, ServerConnect, SessionDuration, Subflows histogram.Snapshot
}

// Metrics returns the engine's measurements as they are now.
func (s *Server) Metrics() Metrics {
	c := &s.stats
	m := Metrics{
		Converted: c.converted.Load(), InfoOnly: c.infoOnly.Load(),
		Resets: c.resets.Load(), Aborts: c.aborts.Load(), IdleTimeouts: c.idle.Load(),
		DialFailures: c.dialFailures.Load(), SynAckMissed: c.synAckMissed.Load(),
		PortsCapped: c.portsCapped.Load(), Unverified: c.unverified.Load(),
		Active: s.active.Load(), PendingHandshakes: s.clients.pendingHandshakes(),
		TransparentPorts: s.TransparentPorts(),
		SynToServerSyn:   s.timings.synToServerSyn.Snapshot(),
		SynToReply:       s.timings.synToReply.Snapshot(),
		ServerConnect:    s.timings.connect.Snapshot(),
		SessionDuration:  s.timings.duration.Snapshot(),
		Subflows:         s.timings.subflows.Snapshot(),
	}
	if s.parker != nil {
		m.ParkedDirections, m.MemoryTrims = s.parker.parkedCount(), s.trimmer.trims.Load()
	}
	for k := range c.byKind {
		for a := range c.byKind[k] {
			m.Accepted[k][a] = c.byKind[k][a].Load()
		}
	}
	for i := range c.refused {
		m.Refused[i] = c.refused[i].Load()
	}
	for side := range c.relayResets {
		m.RelayResets[side] = c.relayResets[side].Load()
		for k := range c.bytes[side] {
			m.Bytes[side][k] = c.bytes[side][k].Load()
		}
	}
	return m
}

// legKind is the session's client leg kind.
func (s *session) legKind() LegKind {
	if s.mptcp {
		return LegMPTCP
	}
	return LegTCP
}

// observeEnd records a converted session's end.
func (s *Server) observeEnd(sess *session) {
	s.timings.duration.Since(sess.entry.Start())
	if sess.mptcp {
		s.timings.subflows.Observe(int64(sess.entry.SubflowsSeen()))
	}
}
