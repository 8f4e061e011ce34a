package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/addrpolicy"
	"github.com/convert-tc/converter/internal/mptcpevents"
	"github.com/convert-tc/converter/internal/privdrop"
	"github.com/convert-tc/converter/internal/tfowindow"
)

func runCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run the converter daemon",
		Description: "Listens for Convert clients (MPTCP or plain TCP, Convert message in the SYN or right\n" +
			"after the handshake), reaches the server named in the Connect TLV and relays both ways.\n" +
			"Logs are JSON on stderr: one record per session end and one per refusal.",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "listen", Value: cli.NewStringSlice(engine.DefaultListen), Usage: "address:port to listen on (repeatable); [::] is dual stack"},
			&cli.StringFlag{Name: "cookie-secret", Usage: "file with the cookie secret (hex; a second line holds the previous secret during a rotation); turns on cookie mode"},
			&cli.StringSliceFlag{Name: "deny", Usage: "destination `CIDR` refused with Not Authorized (repeatable)"},
			&cli.StringSliceFlag{Name: "allow-destinations", Usage: "special-purpose destination `CIDR` to open (repeatable): private, shared, link-local, documentation and other special ranges are refused by default"},
			&cli.StringSliceFlag{Name: "allow-clients", Usage: "client `CIDR` allowed to use the converter (repeatable; default: every client)"},
			&cli.IntFlag{Name: "max-sessions", Value: 100000, Usage: "sessions in progress at most; beyond it Resource Exceeded"},
			&cli.IntFlag{Name: "max-pending-per-client", Value: engine.DefaultMaxPendingPerClient, Usage: "sessions of one client still being set up, at most"},
			&cli.IntFlag{Name: "max-sessions-per-client", Value: engine.DefaultMaxSessionsPerClient, Usage: "sessions of one client, at most"},
			&cli.IntFlag{Name: "max-handshakes", Value: engine.DefaultMaxHandshakes, Usage: "connections of all clients still being set up, at most"},
			&cli.IntFlag{Name: "rate-per-client", Value: engine.DefaultRatePerClient, Usage: "new sessions of one client per second (token bucket as deep as the rate); 0: no limit"},
			&cli.IntFlag{Name: "client-prefix-v6", Value: engine.DefaultClientPrefixV6, Usage: "an IPv6 client is its /N prefix for every per-client limit and for NAT pairing"},
			&cli.UintFlag{Name: "backoff", Value: 30, Usage: "seconds a refused client is asked to wait (Resource Exceeded; 0 = protocol default)"},
			&cli.DurationFlag{Name: "handshake-timeout", Value: 3 * time.Second, Usage: "wait for the Convert message and the client handshake"},
			&cli.DurationFlag{Name: "dial-timeout", Value: 5 * time.Second, Usage: "server-leg connect timeout (then Network Failure)"},
			&cli.DurationFlag{Name: "drain-timeout", Value: engine.DefaultShutdownDrain, Usage: "on SIGTERM, let sessions run to their end this long before aborting them (0: abort at once; a second SIGTERM aborts at once)"},
			&cli.DurationFlag{Name: "idle-timeout", Value: 2*time.Hour + 4*time.Minute, Usage: "close sessions idle this long (0: never)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "unix socket serving the session table (mode 0600); empty to disable"},
			&cli.BoolFlag{Name: "verify-client-first", Usage: "dial the server only once the client completed its handshake (no 0-RTT; for --nat preserve without ingress filtering)"},
			&cli.StringFlag{Name: "user", Usage: "after set-up, run as this `USER` (and its group), keeping only the capabilities the daemon needs"},
			&cli.BoolFlag{Name: "keep-privileges", Usage: "do not drop capabilities after set-up (debugging only)"},
			&cli.StringFlag{Name: "tfo-window-clamp", Value: string(tfowindow.ModeAuto), Usage: "lower the window of Convert SYNs with eBPF, against the kernel fault that stalls downloads of MPTCP clients that sent SYN data: auto (where a start-up probe finds the fault), on or off"},
		}, slices.Concat(transparentFlags(), natFlags(), cookieFlags(), configFlags())...),
		Action: func(c *cli.Context) error {
			if path := c.String("config"); path != "" {
				if err := applyConfigFile(c, path); err != nil {
					return usageError("%v", err)
				}
			}
			if c.Bool("check") {
				problems := checkConfig(c, io)
				for _, p := range problems {
					fmt.Fprintln(io.err, "converter: "+p)
				}
				if len(problems) > 0 {
					return cli.Exit(fmt.Sprintf("converter: %d problem(s)", len(problems)), 1)
				}
				fmt.Fprintln(io.out, "configuration OK")
				return nil
			}
			if problems := modeProblems(c); len(problems) > 0 {
				return usageError("%s", strings.Join(problems, "; "))
			}
			cfg, err := runConfig(c, io)
			if err != nil {
				return err
			}
			// The log level changes on reload.
			levelVar := new(slog.LevelVar)
			levelVar.UnmarshalText([]byte(c.String("log-level")))
			cfg.Logger = slog.New(slog.NewJSONHandler(io.err, &slog.HandlerOptions{Level: levelVar}))
			cfg.Logger.Info("converter", "version", version)
			clampMode, err := tfowindow.ParseMode(c.String("tfo-window-clamp"))
			if err != nil {
				return usageError("--tfo-window-clamp: %v", err)
			}
			dp, err := setupDataplane(c, &cfg, tfowindow.Decide(c.Context, clampMode), cfg.Logger)
			if err != nil {
				var ec cli.ExitCoder
				if errors.As(err, &ec) {
					return err
				}
				return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
			}
			defer dp.close(cfg.Logger)
			// The pool's sweeper runs through the drain; it stops before
			// the mapping log closes.
			natCtx, stopNAT := context.WithCancel(context.WithoutCancel(c.Context))
			defer stopNAT()
			addr, err := setupAddressing(natCtx, c, &cfg, cfg.Logger)
			if err != nil {
				var ec cli.ExitCoder
				if errors.As(err, &ec) {
					return err
				}
				return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
			}
			defer func() {
				stopNAT()
				addr.close(cfg.Logger)
			}()
			srv, err := engine.New(cfg)
			if err != nil {
				return usageError("%v", err)
			}
			if err := engine.CheckKernel(); err != nil {
				return cli.Exit(fmt.Sprintf("converter: kernel check: %v", err), 1)
			}
			if err := srv.Listen(c.Context); err != nil {
				return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
			}
			// ctx ends at the first stop signal: no new session. life
			// ends once the sessions did: the control socket (GET /ready
			// says "draining"), the MPTCP events and SIGHUP serve the
			// drain too.
			ctx, cancel := context.WithCancel(c.Context)
			defer cancel()
			life, endLife := context.WithCancel(context.WithoutCancel(ctx))
			defer endLife()
			notify := notifier{log: cfg.Logger}
			rl := &reloader{args: reloadArgs(c.Context), running: c, srv: srv, level: levelVar, log: cfg.Logger}
			if cfg.Cookies != nil {
				path := c.String("cookie-secret")
				rl.cookies = func() error { return reloadCookies(cfg.Cookies, path, cfg.Logger) }
			}
			reload := func(ctx context.Context) ReloadOutcome {
				notify.reloading()
				o := rl.reload(ctx)
				if ok, state := srv.Readiness(); ok {
					notify.ready("serving (reloaded)")
				} else {
					notify.send("STATUS=" + state + " (reloaded)") // still draining: no READY after STOPPING
				}
				return o
			}
			handleHUP(life, cfg.Logger, reload)
			var side sync.WaitGroup
			if err := startObservers(life, &side, c.String("control"), srv, dp, addr, rl, reload, cfg.Logger); err != nil {
				return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
			}
			for _, a := range srv.Addrs() {
				cfg.Logger.Info("listening", "address", a.String())
			}
			if err := dropPrivileges(c, dp, cfg.Logger); err != nil {
				return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
			}
			go func() {
				<-ctx.Done()
				notify.stopping()
			}()
			served := make(chan struct{})
			go func() {
				select {
				case <-abortContext(c.Context).Done():
					srv.Abort()
				case <-served:
				}
			}()
			go func() {
				// Serve marks itself started at once; say so when it has.
				for ok, _ := srv.Readiness(); !ok && ctx.Err() == nil; ok, _ = srv.Readiness() {
					time.Sleep(time.Millisecond)
				}
				if ctx.Err() == nil {
					notify.ready(fmt.Sprintf("serving on %d listener(s)", len(srv.Addrs())))
				}
			}()
			err = srv.Serve(ctx)
			close(served)
			endLife()
			side.Wait()
			if err != nil {
				return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
			}
			cfg.Logger.Info("stopped", "stats", srv.Stats())
			return nil
		},
	}
}

func runConfig(c *cli.Context, io stdio) (engine.Config, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return engine.Config{}, usageError("--log-level: %v", err)
	}
	cfg := engine.Config{
		Listen:               c.StringSlice("listen"),
		HandshakeTimeout:     c.Duration("handshake-timeout"),
		DialTimeout:          c.Duration("dial-timeout"),
		IdleTimeout:          c.Duration("idle-timeout"),
		ShutdownDrain:        shutdownDrain(c.Duration("drain-timeout")),
		MaxSessions:          c.Int("max-sessions"),
		MaxPendingPerClient:  c.Int("max-pending-per-client"),
		MaxSessionsPerClient: c.Int("max-sessions-per-client"),
		MaxHandshakes:        c.Int("max-handshakes"),
		RatePerClient:        c.Int("rate-per-client"),
		ClientPrefixV6:       c.Int("client-prefix-v6"),
		MaxTransparentPorts:  c.Int("max-transparent-ports"),
		VerifyClientFirst:    c.Bool("verify-client-first"),
		Logger:               slog.New(slog.NewJSONHandler(io.err, &slog.HandlerOptions{Level: level})),
	}
	if cfg.RatePerClient == 0 {
		cfg.RatePerClient = -1 // engine.Config: negative turns the limit off
	}
	if b := c.Uint("backoff"); b > 255 {
		return cfg, usageError("--backoff %d: at most 255 seconds", b)
	} else {
		cfg.Backoff = uint8(b)
	}
	var err error
	if cfg.Deny, err = prefixes(c.StringSlice("deny")); err != nil {
		return cfg, usageError("--deny: %v", err)
	}
	if cfg.AllowClients, err = prefixes(c.StringSlice("allow-clients")); err != nil {
		return cfg, usageError("--allow-clients: %v", err)
	}
	if cfg.AllowDestinations, err = prefixes(c.StringSlice("allow-destinations")); err != nil {
		return cfg, usageError("--allow-destinations: %v", err)
	}
	if cfg.Cookies, err = loadCookies(c); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// shutdownDrain maps --drain-timeout to the engine: 0 there means the
// default, so no drain is negative.
func shutdownDrain(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// handleHUP makes SIGHUP reload, in every mode, and never stop the
// daemon. The mapping log reopens on its own handler (--nat share).
func handleHUP(ctx context.Context, log *slog.Logger, reload func(context.Context) ReloadOutcome) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
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
	}()
}

// dropPrivileges keeps, once everything is set up, only what the daemon
// still needs: CAP_NET_ADMIN (transparent sockets, removing routes and
// endpoints at exit), CAP_NET_BIND_SERVICE (per-port listeners on low
// ports) and CAP_BPF where programs are loaded (map updates); no_new_privs;
// and with --user that user. A binary built with cgo cannot do this on
// every thread: it says so and keeps running.
func dropPrivileges(c *cli.Context, dp *dataplane, log *slog.Logger) error {
	if c.Bool("keep-privileges") {
		log.Warn("privileges kept", "reason", "--keep-privileges")
		return nil
	}
	keep := []int{privdrop.CapNetAdmin, privdrop.CapNetBindService}
	if dp.loaded() {
		keep = append(keep, privdrop.CapBPF)
	}
	err := privdrop.Drop(keep, c.String("user"))
	switch {
	case errors.Is(err, privdrop.ErrCgo) && c.String("user") == "":
		log.Error("privileges kept", "error", err.Error())
		return nil
	case err != nil:
		return fmt.Errorf("drop privileges: %w", err)
	}
	var mask uint64
	for _, k := range keep {
		mask |= 1 << k
	}
	log.Info("privileges dropped", "keep", privdrop.Names(mask), "user", c.String("user"), "no_new_privs", true)
	return nil
}

// prefixes parses CIDRs; a bare address is a single-address prefix.
// IPv4-mapped forms are unmapped (::ffff:10.0.0.0/104 is 10.0.0.0/8), as
// addresses are before they are matched.
func prefixes(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, err
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, addrpolicy.UnmapPrefix(p))
	}
	return out, nil
}

// startObservers feeds the session table from the kernel's MPTCP events
// and serves it on the control socket. Both run until ctx ends.
func startObservers(ctx context.Context, wg *sync.WaitGroup, controlPath string, srv *engine.Server, dp *dataplane, addr *addressing, rl *reloader, reload func(context.Context) ReloadOutcome, log *slog.Logger) error {
	events, err := mptcpevents.Listen(nil)
	if err != nil {
		return fmt.Errorf("subscribe to MPTCP events: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer events.Close()
		if err := events.Run(ctx, srv.Table().HandleEvent); err != nil {
			log.Warn("MPTCP events stopped", "error", err.Error())
		}
	}()
	if controlPath == "" {
		return nil
	}
	ctl := control.New(srv.Table(), log)
	ctl.Register("converter", func() any { return srv.Stats() })
	ctl.SetReady(srv.Readiness)
	ctl.Register("reload", rl.lastOutcome)
	ctl.SetReload(func(ctx context.Context) (any, bool) {
		o := reload(ctx)
		return versionedOutcome(o), o.OK
	})
	ctl.Register("mptcp_events", func() any { return events.Stats() })
	ctl.Register("runtime", runtimeStats)
	ctl.Register("daemon", func() any { return map[string]string{"version": version} })
	ctl.Register("bpf", dp.status)
	ctl.Register("nat", addr.stats)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := ctl.Serve(ctx, controlPath); err != nil {
			log.Error("control socket stopped", "path", controlPath, "error", err.Error())
		}
	}()
	return nil
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
