// Package daemon is `converter run`: it owns start-up, reload and
// shutdown of the converter. Run sets up, in order, the data plane (BPF
// programs, policy routing, announced endpoints), the server-leg
// addressing (NAT pool), the engine and its listeners, SIGHUP reload,
// the MPTCP event feed and the control socket, the metrics, drops privileges, then
// serves until its context ends (drain) and the abort signal (abort).
// Each step returns its undo; whatever was set up is undone in reverse
// order on every way out, and every goroutine is awaited.
//
// The CLI maps its flags and config file onto a Config; this package
// knows nothing of flags beyond their names.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/handover"
	"github.com/convert-tc/converter/internal/mptcpevents"
	"github.com/convert-tc/converter/internal/privdrop"
	"github.com/convert-tc/converter/internal/tfowindow"
	"github.com/convert-tc/converter/internal/web"
)

// Options is what Run takes from its caller besides the Config.
type Options struct {
	// Stderr receives the JSON log.
	Stderr io.Writer
	// Version is logged first and served on the control socket.
	Version string
	// Abort, when closed, aborts the drain: the second stop signal. Nil
	// aborts as soon as ctx ends.
	Abort <-chan struct{}
	// Reevaluate computes the configuration afresh, as a new start would
	// (command line and config file read again), with every problem
	// Config.Check finds. Nil reloads the running Config (the cookie
	// secret file is read again).
	Reevaluate func(ctx context.Context) (Config, []string)
	// Args is the command line the daemon was started with (Args[0] the
	// program): an upgrade (SIGUSR2, POST /upgrade) runs the binary on
	// disk again with it.
	Args []string
}

// ConfigError is a configuration Run refuses, as opposed to a failure of
// the host.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func configErrorf(format string, a ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, a...)}
}

// daemon is one run: what the steps set up, for the next steps and the
// undos.
type daemon struct {
	cfg    Config
	opts   Options
	level  *slog.LevelVar // reload changes it
	log    *slog.Logger
	notify notifier

	ecfg    engine.Config // built up by the steps before newEngine
	cookies *cookie.Keys
	dp      *dataplane
	addr    *addressing
	srv     *engine.Server
	served  bool // Serve ran: it closed the listeners
	rl      *reloader
	events  *mptcpevents.Listener
	ctl     *control.Server // nil without a control socket

	// Upgrades: pred is the daemon this one took over from; handing is
	// set while this one hands over, successor once it has.
	pred        *predecessor
	handing     atomic.Bool
	successor   *handover.Conn
	stopServing context.CancelFunc // a hand-over ends the serving as a stop signal does
	upgrades    upgrader
	mainPIDSent atomic.Bool // systemd's main process is the successor now
}

// step is one stage of the start; undo (nil when nothing to undo) is run
// in reverse order when Run returns.
type step struct {
	name string
	do   func(ctx context.Context) (undo func(), err error)
}

// steps is the start, in order. A step uses what the steps before it left
// in d: the engine takes the data plane's and the addressing's part of
// ecfg, the control socket reloads through the reloader.
func (d *daemon) steps() []step {
	return []step{
		{"validate", d.validate},
		{"cookies", d.loadCookies},
		{"takeover", d.takeOver},
		{"dataplane", d.setupDataplane},
		{"addressing", d.setupAddressing},
		{"engine", d.newEngine},
		{"kernel", d.checkKernel},
		{"listen", d.listen},
		{"reload", d.handleReload},
		{"observers", d.startObservers},
		{"metrics", d.startMetrics},
		{"web", d.startWeb},
		{"announce", d.logListening},
		{"privileges", d.dropPrivileges},
		{"settle", d.returnStartupMemory},
	}
}

// returnStartupMemory returns what the start-up left behind (loading and
// verifying BPF programs, the TCP Fast Open probe, parsing) to the kernel
// now, rather than whenever the runtime's scavenger gets to it: a
// long-running daemon's resident memory is then what it holds.
func (d *daemon) returnStartupMemory(context.Context) (func(), error) {
	debug.FreeOSMemory()
	return nil, nil
}

// Run runs the daemon until ctx ends, then drains the sessions (cut short
// when opts.Abort closes) and undoes its set-up. A refused configuration
// is a *ConfigError.
func Run(ctx context.Context, cfg Config, opts Options) error {
	if opts.Stderr == nil {
		opts.Stderr = io.Discard
	}
	d := &daemon{cfg: cfg, opts: opts, level: new(slog.LevelVar)}
	d.level.Set(cfg.LogLevel)
	d.log = slog.New(slog.NewJSONHandler(opts.Stderr, &slog.HandlerOptions{Level: d.level}))
	d.notify = notifier{log: d.log}
	// First, before anything that can fail.
	d.log.Info("converter", "version", opts.Version)
	d.ecfg = cfg.engineConfig(d.log)

	var undos []func()
	defer func() {
		for i := len(undos) - 1; i >= 0; i-- {
			undos[i]()
		}
	}()
	for _, s := range d.steps() {
		undo, err := s.do(ctx)
		if err != nil {
			return err
		}
		if undo != nil {
			undos = append(undos, undo)
		}
	}
	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	d.stopServing = stop
	return d.serve(serveCtx)
}

func (d *daemon) validate(context.Context) (func(), error) {
	if problems := d.cfg.Validate(nil); len(problems) > 0 {
		return nil, configErrorf("%s", strings.Join(problems, "; "))
	}
	return nil, nil
}

// loadCookies reads --cookie-secret. A secret file open to its group or
// others is refused with an error that names it and its mode.
func (d *daemon) loadCookies(context.Context) (func(), error) {
	if d.cfg.CookieSecret == "" {
		return nil, nil
	}
	keys, err := cookie.Load(d.cfg.CookieSecret, cookie.WithLifetime(d.cfg.CookieLifetime))
	if err != nil {
		return nil, configErrorf("--cookie-secret: %v", err)
	}
	d.cookies, d.ecfg.Cookies = keys, keys
	return nil, nil
}

func (d *daemon) setupDataplane(ctx context.Context) (func(), error) {
	var inherit *inheritance
	var clamp tfowindow.Decision
	if p := d.pred; p != nil {
		inherit = &inheritance{bpf: p.bpf, earlyDemux: p.offer.State["early_demux"]}
		clamp, inherit.clampDecided = p.clampDecision(d.cfg.TFOWindowClamp)
	}
	if inherit == nil || !inherit.clampDecided {
		clamp = tfowindow.Decide(ctx, d.cfg.TFOWindowClamp)
	}
	dp, err := setupDataplane(ctx, d.cfg, &d.ecfg, clamp, inherit, d.log)
	if err != nil {
		return nil, err
	}
	d.dp = dp
	return func() { dp.close(d.log) }, nil
}

func (d *daemon) setupAddressing(ctx context.Context) (func(), error) {
	addr, err := setupAddressing(d.cfg, &d.ecfg, d.log)
	if err != nil {
		return nil, err
	}
	d.addr = addr
	// The sweeper and the log's reopening run through the drain: their
	// context is not the stop signal's.
	g := newGroup(ctx)
	addr.maintain(g, d.log)
	if err := d.adoptPool(g); err != nil {
		g.stop()
		addr.close(d.log)
		return nil, err
	}
	return func() {
		g.stop()
		addr.close(d.log)
	}, nil
}

func (d *daemon) newEngine(context.Context) (func(), error) {
	srv, err := engine.New(d.ecfg)
	if err != nil {
		return nil, configErrorf("%v", err)
	}
	d.srv = srv
	return nil, nil
}

func (d *daemon) checkKernel(context.Context) (func(), error) {
	if err := engine.CheckKernel(); err != nil {
		return nil, fmt.Errorf("kernel check: %w", err)
	}
	return nil, nil
}

func (d *daemon) listen(ctx context.Context) (func(), error) {
	if err := d.srv.Listen(ctx); err != nil {
		return nil, err
	}
	return func() {
		if !d.served {
			// Serving a context that already ended closes the listeners
			// and returns.
			done, cancel := context.WithCancel(context.WithoutCancel(ctx))
			cancel()
			d.srv.Serve(done)
		}
	}, nil
}

// handleReload sets up the reloader and makes SIGHUP reload, in every
// mode, and never stop the daemon; it serves through the drain.
func (d *daemon) handleReload(ctx context.Context) (func(), error) {
	d.rl = &reloader{
		running:    d.cfg,
		reevaluate: d.opts.Reevaluate,
		srv:        d.srv,
		level:      d.level,
		log:        d.log,
		cookies:    d.cookies,
		node:       d.dp.cluster,
	}
	g := newGroup(ctx)
	handleHUP(g, d.log, d.reload)
	d.handleUpgradeSignal(g)
	return g.stop, nil
}

// reload is a reload as systemd, the log and the control socket see it.
func (d *daemon) reload(ctx context.Context) ReloadOutcome {
	d.notify.reloading()
	o := d.rl.reload(ctx)
	if ok, state := d.srv.Readiness(); ok {
		d.notify.ready("serving (reloaded)")
	} else {
		d.notify.send("STATUS=" + state + " (reloaded)") // still draining: no READY after STOPPING
	}
	return o
}

// startObservers feeds the session table from the kernel's MPTCP events
// and serves it on the control socket, both through the drain.
func (d *daemon) startObservers(ctx context.Context) (func(), error) {
	events, err := mptcpevents.Listen(nil)
	if err != nil {
		return nil, fmt.Errorf("subscribe to MPTCP events: %w", err)
	}
	d.events = events
	g := newGroup(ctx)
	g.run(func(ctx context.Context) {
		if err := events.Run(ctx, d.srv.Table().HandleEvent); err != nil {
			d.log.Warn("MPTCP events stopped", "error", err.Error())
		}
	})
	if d.cfg.Control != "" {
		ctl := d.controlServer()
		path := d.cfg.Control
		if d.pred == nil {
			// Up before the "listening" records: whoever waits for them
			// may ask at once.
			if err := ctl.Bind(path); err != nil {
				g.stop()
				events.Close()
				return nil, err
			}
		}
		g.run(func(ctx context.Context) {
			if p := d.pred; p != nil {
				// The path is the predecessor's until it stopped
				// accepting: a failed hand-over leaves it its socket.
				select {
				case <-p.released:
				case <-ctx.Done():
					return
				}
				ctl.ReplaceLive()
			}
			if err := ctl.Serve(ctx, path); err != nil {
				d.log.Error("control socket stopped", "path", path, "error", err.Error())
			}
		})
	}
	return func() {
		g.stop()
		events.Close()
	}, nil
}

// startWeb serves the live page (--web) through the drain.
func (d *daemon) startWeb(ctx context.Context) (func(), error) {
	if d.cfg.Web == "" {
		return nil, nil
	}
	ln, err := web.Listen(ctx, d.cfg.Web)
	if err != nil {
		return nil, err
	}
	g := newGroup(ctx)
	g.run(func(ctx context.Context) {
		if err := web.Serve(ctx, ln, web.Handler(web.FromServer(d.srv))); err != nil {
			d.log.Error("web page stopped", "address", ln.Addr().String(), "error", err.Error())
		}
	})
	d.log.Info("web page", "address", ln.Addr().String())
	return g.stop, nil
}

// logListening says the daemon is reachable: the namespace tests and
// operators wait for these records.
func (d *daemon) logListening(context.Context) (func(), error) {
	for _, a := range d.srv.Addrs() {
		d.log.Info("listening", "address", a.String())
	}
	return nil, nil
}

// dropPrivileges keeps, once everything is set up, only what the daemon
// still needs: CAP_NET_ADMIN (transparent sockets, removing routes and
// endpoints at exit), CAP_NET_BIND_SERVICE (per-port listeners on low
// ports) and CAP_BPF where programs are loaded (map updates); no_new_privs;
// and with a user that user. A binary built with cgo cannot do this on
// every thread: it says so and keeps running.
func (d *daemon) dropPrivileges(context.Context) (func(), error) {
	if d.cfg.KeepPrivileges {
		d.log.Warn("privileges kept", "reason", "--keep-privileges")
		return nil, nil
	}
	keep := []int{privdrop.CapNetAdmin, privdrop.CapNetBindService}
	if d.dp.loaded() {
		// CAP_PERFMON too: the verifier refuses the programs' pointer
		// arithmetic without it, and an upgrade's new process (which
		// inherits only these) loads them again.
		keep = append(keep, privdrop.CapBPF, privdrop.CapPerfmon)
	}
	err := privdrop.Drop(keep, d.cfg.User)
	switch {
	case errors.Is(err, privdrop.ErrCgo) && d.cfg.User == "":
		d.log.Error("privileges kept", "error", err.Error())
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("drop privileges: %w", err)
	}
	var mask uint64
	for _, k := range keep {
		mask |= 1 << k
	}
	d.log.Info("privileges dropped", "keep", privdrop.Names(mask), "user", d.cfg.User, "no_new_privs", true)
	return nil, nil
}

// serve runs the engine until ctx ends and its drain is over, telling
// systemd where it is.
func (d *daemon) serve(ctx context.Context) error {
	g := newGroup(ctx)
	g.run(func(life context.Context) {
		select {
		case <-ctx.Done():
			// A cluster node leaves the anycast group first: no new
			// connection comes while its sessions drain.
			d.withdrawVIPs()
			if !d.mainPIDSent.Load() { // else it is the successor's to say
				d.notify.stopping()
			}
		case <-life.Done():
		}
	})
	abort := d.opts.Abort
	if abort == nil {
		abort = ctx.Done()
	}
	g.run(func(life context.Context) {
		select {
		case <-abort:
			d.srv.Abort()
		case <-life.Done():
		}
	})
	g.run(func(life context.Context) {
		// Serve marks itself started at once; say so when it has.
		for ok, _ := d.srv.Readiness(); !ok && ctx.Err() == nil && life.Err() == nil; ok, _ = d.srv.Readiness() {
			time.Sleep(time.Millisecond)
		}
		if ctx.Err() == nil && life.Err() == nil {
			d.completeTakeOver()
			if n := d.dp.cluster; n != nil {
				if err := n.Announce(); err != nil {
					d.log.Error("cluster: announce the VIPs", "error", err.Error())
				}
			}
			d.notify.ready(fmt.Sprintf("serving on %d listener(s)", len(d.srv.Addrs())))
		}
	})
	d.served = true
	err := d.srv.Serve(ctx)
	g.stop()
	if err != nil {
		return err
	}
	d.log.Info("stopped", "stats", d.srv.Stats())
	return nil
}

// withdrawVIPs takes a cluster node's VIPs off its device.
func (d *daemon) withdrawVIPs() {
	if d.dp == nil || d.dp.cluster == nil {
		return
	}
	if err := d.dp.cluster.Withdraw(); err != nil {
		d.log.Error("cluster: withdraw the VIPs", "error", err.Error())
	}
}

// group is goroutines that run until stop, which ends their context and
// waits for them. Its context does not end with the parent's: a group
// serves through the drain, until the undo of its step.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newGroup(parent context.Context) *group {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	return &group{ctx: ctx, cancel: cancel}
}

func (g *group) run(f func(ctx context.Context)) {
	g.wg.Go(func() { f(g.ctx) })
}

func (g *group) stop() {
	g.cancel()
	g.wg.Wait()
}
