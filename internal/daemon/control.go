package daemon

import (
	"context"
	"runtime"

	"github.com/convert-tc/converter/control"
)

// controlServer serves the session table and, under GET /stats, every
// part of the daemon; POST /reload reloads as SIGHUP does.
func (d *daemon) controlServer() *control.Server {
	ctl := control.New(d.srv.Table(), d.log)
	d.ctl = ctl // the metrics step installs GET /metrics
	ctl.Register("converter", func() any { return d.srv.Stats() })
	ctl.SetReady(d.srv.Readiness)
	ctl.Register("reload", d.rl.lastOutcome)
	ctl.SetReload(func(ctx context.Context) (any, bool) {
		o := d.reload(ctx)
		return versionedOutcome{Version: d.opts.Version, ReloadOutcome: o}, o.OK
	})
	ctl.Register("mptcp_events", func() any { return d.events.Stats() })
	ctl.Register("runtime", runtimeStats)
	ctl.Register("daemon", func() any { return map[string]string{"version": d.opts.Version} })
	ctl.Register("bpf", d.dp.status)
	ctl.Register("nat", d.addr.stats)
	if n := d.dp.cluster; n != nil {
		ctl.Register("cluster", func() any { return n.Status() })
	}
	ctl.SetHandover(d.handOver)
	ctl.SetUpgrade(func(ctx context.Context) (any, bool) {
		o := d.upgrade(ctx)
		return versionedUpgrade{Version: d.opts.Version, UpgradeOutcome: o}, o.OK
	})
	return ctl
}

// versionedOutcome is a reload's outcome as `converter reload --json`
// prints it: the version first, as in every --json document.
type versionedOutcome struct {
	Version string `json:"version"`
	ReloadOutcome
}

// runtimeStats is what an operator needs to see where the daemon's memory
// goes: goroutine stacks against heap.
func runtimeStats() any {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return map[string]uint64{
		"goroutines":        uint64(runtime.NumGoroutine()),
		"heap_inuse_bytes":  ms.HeapInuse,
		"stack_inuse_bytes": ms.StackInuse,
		"sys_bytes":         ms.Sys,
	}
}

// versionedUpgrade is an upgrade's outcome as `converter upgrade --json`
// prints it.
type versionedUpgrade struct {
	Version string `json:"version"`
	UpgradeOutcome
}
