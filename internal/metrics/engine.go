package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/histogram"
	"github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(namespace+"_"+name, help, labels, nil)
}

// directions name the relay directions by the session.Side the bytes
// come from.
var directions = [2]string{session.Client: "to_server", session.Server: "to_client"}

// engineCollector exports engine.Metrics.
type engineCollector struct {
	src Engine

	accepted, converted, info, refused, resets, aborts, relayResets, idle *prometheus.Desc
	bytes, dialFailures, synAckMissed, portsCapped, unverified            *prometheus.Desc
	active, pending, ports, parked, trims                                 *prometheus.Desc
	synToServerSyn, synToReply, connect, duration, subflows               *prometheus.Desc
}

func newEngineCollector(src Engine) *engineCollector {
	return &engineCollector{
		src: src,
		accepted: desc("connections_accepted_total",
			"Client connections accepted as sessions, by client leg (mptcp, or tcp: no MPTCP or fallen back) and by where the Convert message came (syn: TCP Fast Open data, after_handshake).",
			"client_leg", "convert_message"),
		converted: desc("sessions_converted_total", "Sessions that got their Convert reply and reached the relay."),
		info:      desc("info_requests_total", "Info-only requests answered with Supported TCP Extensions."),
		refused: desc("refusals_total", "Sessions refused with an Error TLV, by Error code (number and RFC 8803 name).",
			"code", "error"),
		resets:      desc("refusal_resets_total", "Connections reset instead of answered, as RFC 8803 asks for some malformed messages."),
		aborts:      desc("silent_aborts_total", "Connections closed without an answer (handshake timeout, unverified client, read error, shutdown during a connect)."),
		relayResets: desc("relay_resets_total", "Sessions aborted (both legs reset) because one relay direction failed, by direction.", "direction"),
		idle:        desc("idle_timeouts_total", "Sessions closed by the idle timeout."),
		bytes: desc("relayed_bytes_total", "Bytes relayed, by direction and client leg kind (with the early bytes that came with the Convert message).",
			"direction", "client_leg"),
		dialFailures: desc("server_connect_failures_total", "Server-leg connects that failed (the client got an Error TLV)."),
		synAckMissed: desc("synack_capture_misses_total", "Server legs whose SYN+ACK the capture program did not hold: the reply's options were rebuilt from TCP_INFO."),
		portsCapped:  desc("transparent_ports_capped_total", "Sessions served without a per-port transparent listener: the cap was reached."),
		unverified:   desc("unverified_clients_total", "Sessions whose client never completed its handshake."),
		active:       desc("sessions_active", "Sessions being served: accepted and not ended (set-up and relay)."),
		pending:      desc("pending_handshakes", "Sessions of every client still being set up (not at the relay yet)."),
		ports:        desc("transparent_listeners", "Per-port transparent listeners open (for joins to original destination ports)."),
		parked:       desc("parked_directions", "Relay directions waiting without a goroutine (an idle session parks both)."),
		trims:        desc("memory_trims_total", "Times the memory freed by sessions going idle was returned to the kernel at once."),
		synToServerSyn: desc("convert_syn_to_server_syn_seconds",
			"From the accept of the client's connection (the SYN's arrival when the Convert message came in it) to the first server-leg SYN."),
		synToReply: desc("convert_syn_to_reply_seconds", "From the accept of the client's connection to the Convert reply written."),
		connect:    desc("server_connect_seconds", "Server-leg connects that succeeded, from connect() to established."),
		duration:   desc("session_duration_seconds", "Converted sessions, from accept to the end of the relay."),
		subflows:   desc("session_subflows", "Subflows an MPTCP client leg had over its life, observed at the session's end."),
	}
}

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.accepted, c.converted, c.info, c.refused, c.resets, c.aborts, c.relayResets, c.idle,
		c.bytes, c.dialFailures, c.synAckMissed, c.portsCapped, c.unverified, c.active, c.pending, c.ports,
		c.parked, c.trims, c.synToServerSyn, c.synToReply, c.connect, c.duration, c.subflows} {
		ch <- d
	}
}

// knownCodes marks the codes RFC 8803 defines: always exported, at 0
// until used, so that rates exist from the start.
var knownCodes = func() (known [256]bool) {
	for _, c := range tlv.AllErrorCodes {
		known[c] = true
	}
	return known
}()

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.src.Metrics()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	for k := range engine.NumLegKinds {
		for a := range engine.NumArrivals {
			counter(c.accepted, m.Accepted[k][a], k.String(), a.String())
		}
	}
	counter(c.converted, m.Converted)
	counter(c.info, m.InfoOnly)
	for code, n := range m.Refused {
		if n > 0 || knownCodes[code] {
			counter(c.refused, n, strconv.Itoa(code), tlv.ErrorCode(code).String())
		}
	}
	counter(c.resets, m.Resets)
	counter(c.aborts, m.Aborts)
	for side, name := range directions {
		counter(c.relayResets, m.RelayResets[side], name)
		for k := range engine.NumLegKinds {
			counter(c.bytes, m.Bytes[side][k], name, k.String())
		}
	}
	counter(c.idle, m.IdleTimeouts)
	counter(c.dialFailures, m.DialFailures)
	counter(c.synAckMissed, m.SynAckMissed)
	counter(c.portsCapped, m.PortsCapped)
	counter(c.unverified, m.Unverified)
	gauge(c.active, float64(m.Active))
	gauge(c.pending, float64(m.PendingHandshakes))
	gauge(c.ports, float64(m.TransparentPorts))
	gauge(c.parked, float64(m.ParkedDirections))
	counter(c.trims, m.MemoryTrims)
	ch <- constHistogram(c.synToServerSyn, m.SynToServerSyn, 1e-9)
	ch <- constHistogram(c.synToReply, m.SynToReply, 1e-9)
	ch <- constHistogram(c.connect, m.ServerConnect, 1e-9)
	ch <- constHistogram(c.duration, m.SessionDuration, 1e-9)
	ch <- constHistogram(c.subflows, m.Subflows, 1)
}

// constHistogram exports a snapshot, its values multiplied by scale
// (1e-9: nanoseconds to seconds).
func constHistogram(d *prometheus.Desc, s histogram.Snapshot, scale float64) prometheus.Metric {
	cum, count := s.Cumulative()
	buckets := make(map[float64]uint64, len(cum))
	for i, b := range s.Bounds {
		buckets[float64(b)*scale] = cum[i]
	}
	return prometheus.MustNewConstHistogram(d, count, float64(s.Sum)*scale, buckets)
}

// tableCollector exports the session table's gauges.
type tableCollector struct {
	src               Table
	byState, subflows *prometheus.Desc
}

func newTableCollector(src Table) *tableCollector {
	return &tableCollector{
		src:      src,
		byState:  desc("sessions", "Sessions in the session table, by state.", "state"),
		subflows: desc("subflows_open", "Client-leg subflows open over all sessions in the table (a plain TCP client leg is one)."),
	}
}

func (c *tableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.byState
	ch <- c.subflows
}

func (c *tableCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.src.Gauges()
	for st := range session.NumStates {
		ch <- prometheus.MustNewConstMetric(c.byState, prometheus.GaugeValue, float64(g.ByState[st]), st.String())
	}
	ch <- prometheus.MustNewConstMetric(c.subflows, prometheus.GaugeValue, float64(g.Subflows))
}
