// Package metrics exports the converter's measurements to Prometheus.
// Each part of the daemon is a typed source (an interface the part
// already implements) with a collector of its own, read at scrape time:
// the engine's counters and histograms, the session table, the BPF
// programs' maps, the address pool and its log, the control socket and
// the kernel's MPTCP counters of the daemon's namespace. Nothing here
// runs between scrapes.
//
// Every name starts with converter_ and carries its unit; labels take
// values from small fixed sets (kinds, directions, state and Error code
// names, counter names): never an address.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/nat"
	"github.com/convert-tc/converter/session"
)

// namespace prefixes every metric of the converter.
const namespace = "converter"

// Engine is the converter's engine (*engine.Server).
type Engine interface{ Metrics() engine.Metrics }

// Table is the session table (*session.Table).
type Table interface{ Gauges() session.Gauges }

// BPFCounters is a BPF program's counter map (*bpf.Steering,
// *bpf.SynAckCapture, *bpf.SynWindowClamp): counts by the program's own
// fixed counter names.
type BPFCounters interface {
	Counters() (map[string]uint64, error)
}

// ClusterNode is a scale-out node: whether its VIPs are announced.
type ClusterNode interface{ Announced() bool }

// Pool is the shared address pool (*nat.Pool), with its mapping log.
type Pool interface{ Stats() nat.Stats }

// ControlSocket is the control socket's server (*control.Server).
type ControlSocket interface{ Clients() int }

// Sources are the parts of a running converter. Engine is required; a
// nil part is not exported (no pool, no BPF program, no control socket).
type Sources struct {
	// Version is exported as converter_build_info{version}.
	Version string
	Engine  Engine
	Table   Table
	// BPF programs by the name of the program label: "steering",
	// "synack_capture", "synwin".
	BPF     map[string]BPFCounters
	Pool    Pool
	Control ControlSocket
	// Cluster is a scale-out node (*cluster.Node); nil: not exported.
	Cluster ClusterNode
	// Netstat reads the kernel's MPTCP counters; nil: not exported.
	Netstat *Netstat
	// Runtime adds the Go runtime's and the process's standard metrics
	// (go_*, process_*).
	Runtime bool
}

// NewRegistry returns a registry with a collector per source.
func NewRegistry(src Sources) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace:   namespace,
		Name:        "build_info",
		Help:        "Always 1; the version label names the running converter.",
		ConstLabels: prometheus.Labels{"version": src.Version},
	}, func() float64 { return 1 }))
	reg.MustRegister(newEngineCollector(src.Engine))
	if src.Table != nil {
		reg.MustRegister(newTableCollector(src.Table))
	}
	if len(src.BPF) > 0 {
		reg.MustRegister(newBPFCollector(src.BPF))
	}
	if src.Pool != nil {
		reg.MustRegister(newPoolCollector(src.Pool))
	}
	if c := src.Control; c != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "control_socket_clients",
			Help:      "Connections open to the control socket.",
		}, func() float64 { return float64(c.Clients()) }))
	}
	if n := src.Cluster; n != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "cluster_vips_announced",
			Help:      "1 while this scale-out node's VIPs are on its device for the BGP speaker (ready), 0 once withdrawn (draining).",
		}, func() float64 {
			if n.Announced() {
				return 1
			}
			return 0
		}))
	}
	if src.Netstat != nil {
		reg.MustRegister(newKernelCollector(src.Netstat))
	}
	if src.Runtime {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return reg
}

// Handler serves reg in the Prometheus exposition formats. A source that
// fails (a BPF map that cannot be read) leaves its metrics out and the
// rest is served.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
	})
}
