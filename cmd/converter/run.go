package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/internal/daemon"
	"github.com/convert-tc/converter/internal/tfowindow"
)

// defaults is converter run without flags: every flag of the command
// takes its default from it.
var defaults = daemon.Defaults()

func runCommand(io stdio) *cli.Command {
	d := defaults
	return &cli.Command{
		Name:  "run",
		Usage: "run the converter daemon",
		Description: "Listens for Convert clients (MPTCP or plain TCP, Convert message in the SYN or right\n" +
			"after the handshake), reaches the server named in the Connect TLV and relays both ways.\n" +
			"Logs are JSON on stderr: one record per session end and one per refusal.",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "listen", Value: stringSlice(d.Listen), Usage: "address:port to listen on (repeatable); [::] is dual stack"},
			&cli.StringFlag{Name: "cookie-secret", Value: d.CookieSecret, Usage: "file with the cookie secret (hex; a second line holds the previous secret during a rotation); turns on cookie mode"},
			&cli.StringSliceFlag{Name: "deny", Value: stringSlice(d.Deny), Usage: "destination `CIDR` refused with Not Authorized (repeatable)"},
			&cli.StringSliceFlag{Name: "allow-destinations", Value: stringSlice(d.AllowDestinations), Usage: "special-purpose destination `CIDR` to open (repeatable): private, shared, link-local, documentation and other special ranges are refused by default"},
			&cli.StringSliceFlag{Name: "allow-clients", Value: stringSlice(d.AllowClients), Usage: "client `CIDR` allowed to use the converter (repeatable; default: every client)"},
			&cli.IntFlag{Name: "max-sessions", Value: d.MaxSessions, Usage: "sessions in progress at most; beyond it Resource Exceeded"},
			&cli.IntFlag{Name: "max-pending-per-client", Value: d.MaxPendingPerClient, Usage: "sessions of one client still being set up, at most"},
			&cli.IntFlag{Name: "max-sessions-per-client", Value: d.MaxSessionsPerClient, Usage: "sessions of one client, at most"},
			&cli.IntFlag{Name: "max-handshakes", Value: d.MaxHandshakes, Usage: "connections of all clients still being set up, at most"},
			&cli.IntFlag{Name: "rate-per-client", Value: d.RatePerClient, Usage: "new sessions of one client per second (token bucket as deep as the rate); 0: no limit"},
			&cli.IntFlag{Name: "client-prefix-v6", Value: d.ClientPrefixV6, Usage: "an IPv6 client is its /N prefix for every per-client limit and for NAT pairing"},
			&cli.UintFlag{Name: "backoff", Value: d.Backoff, Usage: "seconds a refused client is asked to wait (Resource Exceeded; 0 = protocol default)"},
			&cli.DurationFlag{Name: "handshake-timeout", Value: d.HandshakeTimeout, Usage: "wait for the Convert message and the client handshake"},
			&cli.DurationFlag{Name: "dial-timeout", Value: d.DialTimeout, Usage: "server-leg connect timeout (then Network Failure)"},
			&cli.DurationFlag{Name: "drain-timeout", Value: d.DrainTimeout, Usage: "on SIGTERM, let sessions run to their end this long before aborting them (0: abort at once; a second SIGTERM aborts at once)"},
			&cli.DurationFlag{Name: "idle-timeout", Value: d.IdleTimeout, Usage: "close sessions idle this long (0: never)"},
			&cli.StringFlag{Name: "log-level", Value: strings.ToLower(d.LogLevel.String()), Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "control", Value: d.Control, Usage: "unix socket serving the session table (mode 0600); empty to disable"},
			&cli.StringFlag{Name: "web", Value: d.Web, Usage: "serve the live page of the converted connections on http://`ADDR:PORT`/ (off by default; read-only, no authentication: bind a loopback or lab address)"},
			&cli.StringFlag{Name: "metrics-listen", Value: d.MetricsListen, Usage: "serve Prometheus metrics on http://`ADDR:PORT`/metrics (off by default; the control socket serves GET /metrics either way)"},
			&cli.BoolFlag{Name: "verify-client-first", Value: d.VerifyClientFirst, Usage: "dial the server only once the client completed its handshake (no 0-RTT; for --nat preserve without ingress filtering)"},
			&cli.StringFlag{Name: "user", Value: d.User, Usage: "after set-up, run as this `USER` (and its group), keeping only the capabilities the daemon needs"},
			&cli.BoolFlag{Name: "keep-privileges", Value: d.KeepPrivileges, Usage: "do not drop capabilities after set-up (debugging only)"},
			&cli.StringFlag{Name: "tfo-window-clamp", Value: string(d.TFOWindowClamp), Usage: "lower the window of Convert SYNs with eBPF, against the kernel fault that stalls downloads of MPTCP clients that sent SYN data: auto (where a start-up probe finds the fault), on or off"},
			&cli.BoolFlag{Name: "syn-hold", Value: d.SynHold, Usage: "answer the SYN of an MPTCP client that sent its Convert message in the SYN only once the server answered the converter's SYN (eBPF on the client-facing interfaces: --client-iface, or every interface that is up): a refused server is a refused connect"},
			&cli.DurationFlag{Name: "syn-hold-max", Value: d.SynHoldMax, Usage: "with --syn-hold, answer the client at the latest this long after its SYN (at most 900ms: below its 1 s SYN retransmission)"},
		}, slices.Concat(transparentFlags(), natFlags(), cookieFlags(), configFlags())...),
		Action: func(c *cli.Context) error { return runAction(c, io) },
	}
}

// runAction maps the flags and the config file onto the daemon's Config
// and runs it: exit 2 for a configuration refused, 1 for a failure.
func runAction(c *cli.Context, io stdio) error {
	if path := c.String("config"); path != "" {
		if err := applyConfigFile(c, path); err != nil {
			return usageError("%v", err)
		}
	}
	cfg, problems := daemonConfig(c)
	if c.Bool("check") {
		problems = append(problems, cfg.Check(c.IsSet)...)
		for _, p := range problems {
			fmt.Fprintln(io.err, "converter: "+p)
		}
		if len(problems) > 0 {
			return cli.Exit(fmt.Sprintf("converter: %d problem(s)", len(problems)), 1)
		}
		fmt.Fprintln(io.out, "configuration OK")
		return nil
	}
	// Given flags count here: a flag of another mode is refused even at
	// its default value.
	if problems = append(problems, cfg.Validate(c.IsSet)...); len(problems) > 0 {
		return usageError("%s", strings.Join(problems, "; "))
	}
	args, _ := c.Context.Value(argsKey{}).([]string)
	err := daemon.Run(c.Context, cfg, daemon.Options{
		Stderr:  io.err,
		Version: version,
		Abort:   abortContext(c.Context).Done(),
		Reevaluate: func(ctx context.Context) (daemon.Config, []string) {
			return evaluate(ctx, args)
		},
		Args: args,
	})
	var ce *daemon.ConfigError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return usageError("%v", err)
	}
	return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
}

// daemonConfig maps the flags of converter run onto the daemon's Config,
// with a problem for every value that does not parse.
func daemonConfig(c *cli.Context) (daemon.Config, []string) {
	var problems []string
	add := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	prefixes := func(name string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range c.StringSlice(name) {
			p, err := daemon.ParsePrefixes([]string{s})
			if err != nil {
				add("--%s %q: %v", name, s, err)
				continue
			}
			out = append(out, p...)
		}
		return out
	}
	cfg := daemon.Config{
		Listen:               c.StringSlice("listen"),
		CookieSecret:         c.String("cookie-secret"),
		CookieLifetime:       c.Duration("cookie-lifetime"),
		Deny:                 prefixes("deny"),
		AllowDestinations:    prefixes("allow-destinations"),
		AllowClients:         prefixes("allow-clients"),
		MaxSessions:          c.Int("max-sessions"),
		MaxPendingPerClient:  c.Int("max-pending-per-client"),
		MaxSessionsPerClient: c.Int("max-sessions-per-client"),
		MaxHandshakes:        c.Int("max-handshakes"),
		RatePerClient:        c.Int("rate-per-client"),
		ClientPrefixV6:       c.Int("client-prefix-v6"),
		Backoff:              c.Uint("backoff"),
		HandshakeTimeout:     c.Duration("handshake-timeout"),
		DialTimeout:          c.Duration("dial-timeout"),
		DrainTimeout:         c.Duration("drain-timeout"),
		IdleTimeout:          c.Duration("idle-timeout"),
		Control:              c.String("control"),
		MetricsListen:        c.String("metrics-listen"),
		Web:                  c.String("web"),
		VerifyClientFirst:    c.Bool("verify-client-first"),
		User:                 c.String("user"),
		KeepPrivileges:       c.Bool("keep-privileges"),
		TFOWindowClamp:       tfowindow.Mode(c.String("tfo-window-clamp")),
		SynHold:              c.Bool("syn-hold"),
		SynHoldMax:           c.Duration("syn-hold-max"),
		Transparent:          c.Bool("transparent"),
		ClientIfaces:         c.StringSlice("client-iface"),
		ServerIfaces:         c.StringSlice("server-iface"),
		RouteTable:           c.Int("route-table"),
		MaxTransparentPorts:  c.Int("max-transparent-ports"),
		NAT:                  daemon.NATMode(c.String("nat")),
		Pool:                 prefixes("pool"),
		PortBlock:            c.Int("port-block"),
		MaxBlocksPerClient:   c.Int("max-blocks-per-client"),
		PortHold:             c.Duration("port-hold"),
		Hairpin:              c.Bool("hairpin"),
		NATLog:               c.String("nat-log"),
		TFOKey:               c.String("tfo-key"),
	}
	for _, f := range []struct {
		name string
		into *[]netip.Addr
	}{{"cluster-vip", &cfg.ClusterVIPs}, {"node-address", &cfg.NodeAddresses}} {
		for _, s := range c.StringSlice(f.name) {
			a, err := netip.ParseAddr(s)
			if err != nil {
				add("--%s %q: %v", f.name, s, err)
				continue
			}
			*f.into = append(*f.into, a.Unmap())
		}
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		add("--log-level: %v", err)
	}
	if m := c.Uint("mark"); m > math.MaxUint32 {
		add("--mark %d: at most %d", m, uint32(math.MaxUint32))
	} else {
		cfg.Mark = uint32(m)
	}
	for _, s := range c.StringSlice("announce") {
		ap, err := daemon.ParseAnnounce(s)
		if err != nil {
			add("--announce %q: %v", s, err)
			continue
		}
		cfg.Announce = append(cfg.Announce, ap)
	}
	return cfg, problems
}

// evaluate runs the CLI's run command on args again, without starting
// anything: the config file is read afresh and everything --check checks
// is checked. It is how the daemon reloads.
func evaluate(ctx context.Context, args []string) (daemon.Config, []string) {
	var cfg daemon.Config
	var problems []string
	quiet := stdio{in: strings.NewReader(""), out: io.Discard, err: io.Discard}
	app := newApp(quiet)
	cmd := app.Command("run")
	if cmd == nil {
		return cfg, []string{"no run command"}
	}
	cmd.Action = func(c *cli.Context) error {
		if path := c.String("config"); path != "" {
			if err := applyConfigFile(c, path); err != nil {
				problems = append(problems, err.Error())
				return nil
			}
		}
		cfg, problems = daemonConfig(c)
		problems = append(problems, cfg.Check(c.IsSet)...)
		return nil
	}
	if err := app.RunContext(context.WithoutCancel(ctx), args); err != nil {
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != 0 {
			problems = append(problems, err.Error())
		}
	}
	return cfg, problems
}

// stringSlice is a list default as a flag holds it: nil when empty. An
// announced address without a port is written without one.
func stringSlice[T any](vs []T) *cli.StringSlice {
	if len(vs) == 0 {
		return nil
	}
	ss := make([]string, 0, len(vs))
	for _, v := range vs {
		if ap, ok := any(v).(netip.AddrPort); ok && ap.Port() == 0 {
			ss = append(ss, ap.Addr().String())
			continue
		}
		ss = append(ss, fmt.Sprint(v))
	}
	return cli.NewStringSlice(ss...)
}
