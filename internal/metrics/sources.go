package metrics

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// bpfCollector reads the BPF programs' counter maps at scrape time. The
// event label takes the program's counter names, a fixed enum of the C
// source (bpf/).
type bpfCollector struct {
	progs  map[string]BPFCounters
	events *prometheus.Desc
}

func newBPFCollector(progs map[string]BPFCounters) *bpfCollector {
	return &bpfCollector{
		progs: progs,
		events: desc("bpf_events_total",
			"The BPF programs' counters, summed over CPUs, by program (steering: steered, joins_steered, passed, lookup_failed...; synack_capture: captured, update_failed, skipped; synwin: clamped, unscaled, failed; syn_hold: syns_noted, synacks_held, released, released_at_cap, refused_reset, refused_unreachable...).",
			"program", "event"),
	}
}

func (c *bpfCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.events }

func (c *bpfCollector) Collect(ch chan<- prometheus.Metric) {
	for _, prog := range slices.Sorted(maps.Keys(c.progs)) {
		counts, err := c.progs[prog].Counters()
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.events, err)
			continue
		}
		for _, event := range slices.Sorted(maps.Keys(counts)) {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(counts[event]), prog, event)
		}
	}
}

// poolCollector exports the shared address pool and its mapping log.
type poolCollector struct {
	src Pool

	addresses, blocks, blocksUsed, ports, portsUsed, portsHeld, portsFree *prometheus.Desc
	allocations, refusals                                                 *prometheus.Desc
	logWritten, logDropped, logErrors, logQueued                          *prometheus.Desc
}

func newPoolCollector(src Pool) *poolCollector {
	return &poolCollector{
		src:         src,
		addresses:   desc("nat_addresses", "External addresses in the shared pool."),
		blocks:      desc("nat_blocks", "Port blocks in the pool."),
		blocksUsed:  desc("nat_blocks_in_use", "Port blocks held by clients."),
		ports:       desc("nat_ports", "Ports in the pool."),
		portsUsed:   desc("nat_ports_in_use", "Ports mapped to a server leg now."),
		portsHeld:   desc("nat_ports_held", "Released ports still held back before reuse."),
		portsFree:   desc("nat_ports_free", "Ports free for new mappings."),
		allocations: desc("nat_allocations_total", "Mappings made."),
		refusals: desc("nat_refusals_total", "Mappings refused, by reason (pool_full, address_full, client_limit, log_full).",
			"reason"),
		logWritten: desc("nat_log_lines_written_total", "Mapping log lines written."),
		logDropped: desc("nat_log_lines_dropped_total", "Mapping log lines not written, by reason (buffer_full and closed: refused, so the mapping was not made either; lost: accepted but not written before the log closed).",
			"reason"),
		logErrors: desc("nat_log_write_errors_total", "Failed writes and reopens of the mapping log."),
		logQueued: desc("nat_log_lines_queued", "Mapping log lines accepted and not written yet."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.addresses, c.blocks, c.blocksUsed, c.ports, c.portsUsed, c.portsHeld, c.portsFree,
		c.allocations, c.refusals, c.logWritten, c.logDropped, c.logErrors, c.logQueued} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(c.addresses, s.Addresses)
	gauge(c.blocks, s.TotalBlocks)
	gauge(c.blocksUsed, s.UsedBlocks)
	gauge(c.ports, s.TotalPorts)
	gauge(c.portsUsed, s.UsedPorts)
	gauge(c.portsHeld, s.HeldPorts)
	gauge(c.portsFree, s.FreePorts)
	counter(c.allocations, s.Allocations)
	counter(c.refusals, s.RefusalsPoolFull, "pool_full")
	counter(c.refusals, s.RefusalsAddressFull, "address_full")
	counter(c.refusals, s.RefusalsClientLimit, "client_limit")
	counter(c.refusals, s.RefusalsLogFull, "log_full")
	if l := s.Log; l != nil {
		counter(c.logWritten, l.Written)
		counter(c.logDropped, l.RefusedFull, "buffer_full")
		counter(c.logDropped, l.RefusedClosed, "closed")
		counter(c.logDropped, l.Lost, "lost")
		counter(c.logErrors, l.WriteErrors)
		gauge(c.logQueued, l.Queued)
	}
}
