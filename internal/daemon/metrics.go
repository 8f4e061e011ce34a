package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/convert-tc/converter/internal/metrics"
	"github.com/convert-tc/converter/internal/reuseport"
)

// startMetrics builds the Prometheus registry of every part set up so
// far, serves it on the control socket (GET /metrics) and, with
// --metrics-listen, over HTTP on that address, through the drain.
func (d *daemon) startMetrics(ctx context.Context) (func(), error) {
	src := metrics.Sources{
		Version: d.opts.Version,
		Engine:  d.srv,
		Table:   d.srv.Table(),
		BPF:     d.dp.counterSources(),
		Runtime: true,
	}
	if d.addr != nil && d.addr.pool != nil {
		src.Pool = d.addr.pool
	}
	if d.ctl != nil {
		src.Control = d.ctl
	}
	if d.dp.cluster != nil {
		src.Cluster = d.dp.cluster
	}
	// Opened here, in the daemon's namespace: read at every scrape.
	ns, err := metrics.OpenNetstat(metrics.DefaultNetstat)
	if err != nil {
		d.log.Warn("kernel MPTCP counters not exported", "error", err.Error())
	} else {
		src.Netstat = ns
	}
	closeNetstat := func() {
		if ns != nil {
			ns.Close()
		}
	}
	h := metrics.Handler(metrics.NewRegistry(src))
	if d.ctl != nil {
		d.ctl.SetMetrics(h)
	}
	if d.cfg.MetricsListen == "" {
		return closeNetstat, nil
	}
	ln, err := listenMetrics(ctx, d.cfg.MetricsListen)
	if err != nil {
		closeNetstat()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	g := newGroup(ctx)
	g.run(func(ctx context.Context) {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			if !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("metrics listener stopped", "address", ln.Addr().String(), "error", err.Error())
			}
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	d.log.Info("metrics", "address", ln.Addr().String(), "path", "/metrics")
	return func() {
		g.stop()
		closeNetstat()
	}, nil
}

// listenMetrics opens the metrics listener (internal/reuseport: an
// upgrade's successor binds it too).
func listenMetrics(ctx context.Context, addr string) (net.Listener, error) {
	ln, err := reuseport.Listen(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	return ln, nil
}

// counterSources are the loaded BPF programs' counter maps, by program.
func (dp *dataplane) counterSources() map[string]metrics.BPFCounters {
	out := map[string]metrics.BPFCounters{}
	if dp == nil {
		return out
	}
	if dp.steering != nil {
		out["steering"] = dp.steering
	}
	if dp.synacks != nil {
		out["synack_capture"] = dp.synacks
	}
	if dp.synwin != nil {
		out["synwin"] = dp.synwin
	}
	if dp.synhold != nil {
		out["syn_hold"] = dp.synhold
	}
	return out
}
