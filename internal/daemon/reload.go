package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/cluster"
)

// ReloadOutcome is what a reload did, as the log, GET /stats ("reload")
// and `converter reload` report it.
type ReloadOutcome struct {
	Time          time.Time `json:"time"`
	OK            bool      `json:"ok"`
	Problems      []string  `json:"problems,omitempty"`
	NeedsRestart  []string  `json:"needs_restart,omitempty"`
	CookiesReload string    `json:"cookies,omitempty"`
	TFOKeyReload  string    `json:"tfo_key,omitempty"`
}

// reloader evaluates the configuration again and puts the reloadable part
// in force; a configuration with any problem leaves the running one in
// force.
type reloader struct {
	running    Config // as started: what needs a restart never changes
	reevaluate func(context.Context) (Config, []string)
	srv        *engine.Server
	level      *slog.LevelVar
	log        *slog.Logger
	cookies    *cookie.Keys  // nil without cookie mode
	node       *cluster.Node // nil unless a cluster node

	mu   sync.Mutex // one reload at a time
	last ReloadOutcome
}

func (r *reloader) reload(ctx context.Context) ReloadOutcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := ReloadOutcome{Time: time.Now().UTC()}
	next, problems := r.running, r.running.Validate(nil)
	if r.reevaluate != nil {
		next, problems = r.reevaluate(context.WithoutCancel(ctx))
	}
	out.Problems = problems
	if len(problems) == 0 {
		out.NeedsRestart = needsRestart(r.running, next)
		if err := r.srv.SetPolicy(next.engineConfig(nil).Policy()); err != nil {
			out.Problems = append(out.Problems, err.Error())
		}
	}
	if len(out.Problems) == 0 {
		r.level.Set(next.LogLevel)
		if r.cookies != nil {
			// The file the daemon started with is read again: keys rotate
			// without a restart.
			if err := r.reloadCookies(); err != nil {
				out.CookiesReload = "kept the keys in use: " + err.Error()
			} else {
				out.CookiesReload = "reloaded"
			}
		}
		if r.node != nil && r.running.TFOKey != "" {
			// The shared TCP Fast Open key rotates the same way.
			if err := r.node.ReloadTFOKey(); err != nil {
				r.log.Error("reload the TFO key; keeping the key in use", "path", r.running.TFOKey, "error", err.Error())
				out.TFOKeyReload = "kept the key in use: " + err.Error()
			} else {
				out.TFOKeyReload = "reloaded"
			}
		}
	}
	out.OK = len(out.Problems) == 0
	if out.OK {
		r.log.Info("reloaded", "needs_restart", out.NeedsRestart, "cookies", out.CookiesReload)
	} else {
		r.log.Error("reload refused: the running configuration stays in force", "problems", out.Problems)
	}
	r.last = out
	return out
}

// reloadCookies reads the secret file again. A file that fails the checks
// (mode, content) keeps the keys in use and is logged.
func (r *reloader) reloadCookies() error {
	path := r.running.CookieSecret
	if err := r.cookies.Reload(path); err != nil {
		r.log.Error("reload cookie secret; keeping the keys in use", "path", path, "error", err.Error())
		return err
	}
	r.log.Info("cookie secret reloaded", "path", path)
	return nil
}

// lastOutcome is the last reload's outcome, for GET /stats.
func (r *reloader) lastOutcome() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last.Time.IsZero() {
		return nil
	}
	return r.last
}

// handleHUP reloads on every SIGHUP until g stops. The mapping log
// reopens on its own handler (addressing).
func handleHUP(g *group, log *slog.Logger, reload func(context.Context) ReloadOutcome) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	g.run(func(ctx context.Context) {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP received")
				reload(ctx)
			}
		}
	})
}
