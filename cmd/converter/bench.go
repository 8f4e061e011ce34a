package main

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/bench"
)

// Bench modes and the flags that belong to each; the flags of every mode
// are --via, --proxy, --mptcp, --syn-data, --timeout and --json.
var benchModeFlags = map[string][]string{
	"throughput": {"streams", "bytes", "direction"},
	"connect":    {"duration", "concurrency", "request-size"},
	"idle":       {"count", "hold", "concurrency"},
}

// Bounds that keep a run's resources in check.
const (
	benchMaxStreams     = 1024
	benchMaxConcurrency = 10000
	benchMaxIdleCount   = 1000000
)

func benchCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:      "bench",
		Usage:     "measure throughput, connection rate or idle-session cost, direct, through a proxy or through a converter",
		ArgsUsage: "HOST:PORT",
		Description: "The load generator sends to a bench server (`converter bench --serve ADDR:PORT`) at HOST:PORT,\n" +
			"directly, through a TCP proxy that forwards to it (--proxy), or through a converter (--via:\n" +
			"the Convert message and the first bytes ride in the SYN, or follow the handshake with\n" +
			"--syn-data=false). --mptcp sets the first leg's protocol; it defaults to on with --via and\n" +
			"off otherwise.\n" +
			"\n" +
			"  --mode throughput  --streams connections each move --bytes: --direction up sends them to the\n" +
			"                     server's sink, down has the server send them, both does both at once on\n" +
			"                     each stream. Each direction is timed from the first connect to its last\n" +
			"                     byte confirmed: up, the sink's count of the last stream; down, the last\n" +
			"                     stream's end of stream (both: its last byte). With both, the count\n" +
			"                     follows the server's bytes, so up takes at least as long as down.\n" +
			"  --mode connect     for --duration, --concurrency workers each loop: connect, write a\n" +
			"                     --request-size request, read its echo, wait for the server's close,\n" +
			"                     close. Latency runs from the connect to the last response byte.\n" +
			"  --mode idle        open --count connections that send nothing, hold them for --hold, close.\n" +
			"                     Once they are open it prints 'holding' on stderr.\n" +
			"\n" +
			"The server (--serve) answers every mode on one port: the first byte of a connection selects\n" +
			"the sink ('T', answered with an 8-byte count at the client's half-close), the source ('S'\n" +
			"and an 8-byte count of bytes to send), both ('B' and a count: send while sinking, then the\n" +
			"count) or the echo ('E' and a 24-bit length), and it closes first so that TIME_WAIT stays on\n" +
			"its side. It accepts MPTCP and TCP and runs until interrupted.\n" +
			"\n" +
			"For connect runs, give the generator's network namespace a wide net.ipv4.ip_local_port_range\n" +
			"and raise RLIMIT_NOFILE (ulimit -n) for idle runs. Exit status: 0 done, 1 the run failed,\n" +
			"2 usage error.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "serve", Usage: "run the bench server on `ADDR:PORT` instead of the generator"},
			&cli.StringFlag{Name: "mode", Value: "throughput", Usage: "throughput, connect or idle"},
			&cli.StringFlag{Name: "via", Usage: "go through the converter at `ADDR:PORT` (HOST:PORT must be an IP literal)"},
			&cli.StringFlag{Name: "proxy", Usage: "connect to the TCP proxy at `ADDR:PORT`, which forwards to HOST:PORT"},
			&cli.BoolFlag{Name: "mptcp", Usage: "use Multipath TCP on the first leg", DefaultText: "on with --via, off otherwise"},
			&cli.BoolFlag{Name: "syn-data", Value: true, Usage: "with --via, send the Convert message and the first bytes in the SYN; false sends them right after the handshake (no effect on the wire of direct and --proxy routes, whose first bytes always follow the handshake)"},
			&cli.IntFlag{Name: "streams", Value: 1, Usage: "throughput: parallel streams"},
			&cli.StringFlag{Name: "bytes", Value: "1G", Usage: "throughput: bytes per stream and direction, `SIZE` with an optional K, M, G, T suffix (powers of 1024)"},
			&cli.StringFlag{Name: "direction", Value: "up", Usage: "throughput: up (client to server), down (server to client) or both (at once on each stream)"},
			&cli.DurationFlag{Name: "duration", Value: 5 * time.Second, Usage: "connect: how long to start connections"},
			&cli.IntFlag{Name: "concurrency", Value: 32, Usage: "connect, idle: connections in flight"},
			&cli.IntFlag{Name: "request-size", Value: 64, Usage: fmt.Sprintf("connect: request and response `BYTES` (%d to %d)", bench.MinRequestSize, bench.MaxRequestSize)},
			&cli.IntFlag{Name: "count", Value: 10000, Usage: "idle: connections to open"},
			&cli.DurationFlag{Name: "hold", Value: 10 * time.Second, Usage: "idle: how long to hold them"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "longest wait for one step: a connect, a write, a read, a response"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as one JSON object, with the converter's \"version\""},
		},
		Action:          func(c *cli.Context) error { return runBench(c, io) },
		OnUsageError:    benchUsageError,
		HideHelpCommand: true,
	}
}

// benchUsageError reports a flag parsing error with the usage exit code
// and without the whole help text.
func benchUsageError(c *cli.Context, err error, _ bool) error {
	return usageError("%s: %s (see --help)", commandName(c), flagErrorText(err))
}

func runBench(c *cli.Context, io stdio) error {
	if c.IsSet("serve") {
		return benchServe(c, io)
	}
	mode := c.String("mode")
	own, ok := benchModeFlags[mode]
	if !ok {
		return usageError("bench: --mode %q: want throughput, connect or idle", mode)
	}
	for m, flags := range benchModeFlags {
		for _, f := range flags {
			if m != mode && !slices.Contains(own, f) && c.IsSet(f) {
				return usageError("bench: --%s is for --mode %s, not %s", f, m, mode)
			}
		}
	}
	target, err := benchTarget(c)
	if err != nil {
		return err
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return usageError("bench: --timeout must be positive")
	}
	res, err := benchRun(c, io, mode, target, timeout)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		b, err := versionedJSON(res, "")
		if err != nil {
			return err
		}
		_, err = io.out.Write(b)
		return err
	}
	fmt.Fprintln(io.out, benchLine(res))
	return nil
}

// benchRun checks the flags of mode and runs it.
func benchRun(c *cli.Context, io stdio, mode string, target bench.Target, timeout time.Duration) (any, error) {
	switch mode {
	case "throughput":
		cfg, err := benchThroughputConfig(c, target, timeout)
		if err != nil {
			return nil, err
		}
		return benchResult(bench.Throughput(c.Context, cfg))
	case "connect":
		cfg, err := benchConnectConfig(c, target, timeout)
		if err != nil {
			return nil, err
		}
		return benchResult(bench.Connect(c.Context, cfg))
	default:
		cfg, err := benchIdleConfig(c, target, timeout, io.err)
		if err != nil {
			return nil, err
		}
		return benchResult(bench.Idle(c.Context, cfg))
	}
}

// benchResult turns a failed run into exit status 1.
func benchResult[R any](res R, err error) (any, error) {
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("converter: bench: %v", err), 1)
	}
	return res, nil
}

func benchServe(c *cli.Context, io stdio) error {
	if c.NArg() > 0 {
		return usageError("bench: --serve takes no HOST:PORT argument")
	}
	for _, f := range []string{"mode", "via", "proxy", "mptcp", "syn-data", "streams", "bytes", "direction", "duration", "concurrency", "request-size", "count", "hold", "timeout", "json"} {
		if c.IsSet(f) {
			return usageError("bench: --%s is for the generator, not --serve", f)
		}
	}
	l, err := bench.Listen(c.Context, c.String("serve"))
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: bench: %v", err), 1)
	}
	fmt.Fprintf(io.err, "bench: serving on %s (sink, source and echo, MPTCP and TCP)\n", l.Addr())
	if err := bench.Serve(c.Context, l); err != nil {
		return cli.Exit(fmt.Sprintf("converter: bench: %v", err), 1)
	}
	return nil
}

func benchTarget(c *cli.Context) (bench.Target, error) {
	var t bench.Target
	switch c.NArg() {
	case 1:
		t.Dest = c.Args().First()
	case 0:
		return t, usageError("bench needs HOST:PORT (or --serve ADDR:PORT)")
	default:
		return t, usageError("bench takes one HOST:PORT, got %q", strings.Join(c.Args().Slice(), " "))
	}
	if c.IsSet("via") && c.IsSet("proxy") {
		return t, usageError("bench: --via and --proxy exclude each other")
	}
	if v := c.String("via"); c.IsSet("via") {
		via, err := netip.ParseAddrPort(v)
		if err != nil {
			return t, usageError("bench: --via %q: %v", v, err)
		}
		if _, err := netip.ParseAddrPort(t.Dest); err != nil {
			return t, usageError("bench: through a converter HOST:PORT must be IP:PORT: %v", err)
		}
		t.Via = via
	}
	if p := c.String("proxy"); c.IsSet("proxy") {
		if p == "" {
			return t, usageError("bench: --proxy needs ADDR:PORT")
		}
		t.Proxy = p
	}
	t.MPTCP = t.Via.IsValid()
	if c.IsSet("mptcp") {
		t.MPTCP = c.Bool("mptcp")
	}
	t.AfterHandshake = !c.Bool("syn-data")
	return t, nil
}

func benchThroughputConfig(c *cli.Context, t bench.Target, timeout time.Duration) (bench.ThroughputConfig, error) {
	cfg := bench.ThroughputConfig{Target: t, Streams: c.Int("streams"), Timeout: timeout}
	if cfg.Streams < 1 || cfg.Streams > benchMaxStreams {
		return cfg, usageError("bench: --streams %d: want 1 to %d", cfg.Streams, benchMaxStreams)
	}
	n, err := bench.ParseSize(c.String("bytes"))
	if err != nil {
		return cfg, usageError("bench: --bytes: %v", err)
	}
	if n < 1 {
		return cfg, usageError("bench: --bytes must be at least 1")
	}
	cfg.Bytes = n
	if cfg.Direction, err = bench.ParseDirection(c.String("direction")); err != nil {
		return cfg, usageError("bench: --%v", err)
	}
	return cfg, nil
}

func benchConnectConfig(c *cli.Context, t bench.Target, timeout time.Duration) (bench.ConnectConfig, error) {
	cfg := bench.ConnectConfig{Target: t, Duration: c.Duration("duration"), Concurrency: c.Int("concurrency"), RequestSize: c.Int("request-size"), Timeout: timeout}
	if cfg.Duration <= 0 {
		return cfg, usageError("bench: --duration must be positive")
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > benchMaxConcurrency {
		return cfg, usageError("bench: --concurrency %d: want 1 to %d", cfg.Concurrency, benchMaxConcurrency)
	}
	if cfg.RequestSize < bench.MinRequestSize || cfg.RequestSize > bench.MaxRequestSize {
		return cfg, usageError("bench: --request-size %d: want %d to %d", cfg.RequestSize, bench.MinRequestSize, bench.MaxRequestSize)
	}
	return cfg, nil
}

func benchIdleConfig(c *cli.Context, t bench.Target, timeout time.Duration, stderr io.Writer) (bench.IdleConfig, error) {
	cfg := bench.IdleConfig{Target: t, Count: c.Int("count"), Hold: c.Duration("hold"), Concurrency: c.Int("concurrency"), Timeout: timeout}
	if cfg.Count < 1 || cfg.Count > benchMaxIdleCount {
		return cfg, usageError("bench: --count %d: want 1 to %d", cfg.Count, benchMaxIdleCount)
	}
	if cfg.Hold < 0 {
		return cfg, usageError("bench: --hold must not be negative")
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > benchMaxConcurrency {
		return cfg, usageError("bench: --concurrency %d: want 1 to %d", cfg.Concurrency, benchMaxConcurrency)
	}
	cfg.Opened = func(open, failed int) {
		fmt.Fprintf(stderr, "bench: %d connections open, %d failed; holding for %v\n", open, failed, cfg.Hold)
	}
	return cfg, nil
}

// benchLine is the human form of a result: one line whose columns align
// from run to run.
func benchLine(res any) string {
	switch r := res.(type) {
	case bench.ThroughputResult:
		line := fmt.Sprintf("%-10s %-12s %4d stream(s) %10s in %8.3f s %9.3f Gbit/s",
			r.Mode, r.Route+"/"+r.Transport, r.Streams, bench.FormatSize(r.Bytes), r.Seconds, r.BitsPerSecond/1e9)
		// Up alone keeps the line it always had.
		switch r.Direction {
		case bench.Down:
			line += "  down"
		case bench.Both:
			line += "  both: up" + benchTransfer(r.Up) + ", down" + benchTransfer(r.Down)
		}
		if r.SynData != nil && !*r.SynData {
			line += "  convert after the handshake"
		}
		if r.Subflows != nil {
			line += fmt.Sprintf("  subflows %d", *r.Subflows)
			if !r.MPTCP {
				line += " (fallback to TCP)"
			}
		}
		return line
	case bench.ConnectResult:
		return fmt.Sprintf("%-10s %-12s %8d conns in %6.2f s %9.0f conn/s %6d errors  latency µs p50 %6d p90 %6d p99 %6d",
			r.Mode, r.Route+"/"+r.Transport, r.Connections, r.Seconds, r.ConnectionsPerSecond, r.Errors,
			r.LatencyUS.P50, r.LatencyUS.P90, r.LatencyUS.P99) + benchFirstError(r.FirstError)
	case bench.IdleResult:
		return fmt.Sprintf("%-10s %-12s %8d open %6d errors %8d alive  opened in %.3f s, held %.1f s",
			r.Mode, r.Route+"/"+r.Transport, r.Connections, r.Errors, r.Alive, r.OpenSeconds, r.HoldSeconds) + benchFirstError(r.FirstError)
	}
	return fmt.Sprint(res)
}

// benchTransfer is one direction of a throughput line.
func benchTransfer(t *bench.Transfer) string {
	if t == nil {
		return " -"
	}
	return fmt.Sprintf(" %s in %.3f s %.3f Gbit/s", bench.FormatSize(t.Bytes), t.Seconds, t.BitsPerSecond/1e9)
}

func benchFirstError(s string) string {
	if s == "" {
		return ""
	}
	return "  first error: " + s
}
