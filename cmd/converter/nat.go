package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/tproxy"
	"github.com/convert-tc/converter/nat"
)

func natFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "nat", Value: "own", Usage: "server-leg source: own (the converter's address), preserve (the client's, needs --server-iface), share (a pool, like a CGN) or mixed (preserve when the families match, else share)"},
		&cli.StringSliceFlag{Name: "pool", Usage: "shared pool `CIDR`, IPv4 or IPv6 (repeatable; --nat share)"},
		&cli.IntFlag{Name: "port-block", Value: 512, Usage: "ports per block handed to one client (--nat share)"},
		&cli.IntFlag{Name: "max-blocks-per-client", Value: 4, Usage: "blocks one client may hold (--nat share)"},
		&cli.DurationFlag{Name: "port-hold", Value: 120 * time.Second, Usage: "a released port is not reused for this long (--nat share)"},
		&cli.BoolFlag{Name: "hairpin", Usage: "allow destinations that are addresses of the shared pool (refused with Not Authorized otherwise)"},
		&cli.StringFlag{Name: "nat-log", Usage: "mapping log `FILE`: one JSON line per port-block allocation and release; reopened on SIGHUP"},
	}
}

// addressing is the server-leg source setup of the daemon.
type addressing struct {
	pool   *nat.Pool
	log    *nat.MappingLog
	routes *tproxy.LocalPrefixes
}

// setupAddressing builds the shared pool when --nat share asks for it,
// makes the pool's addresses local, and keeps the pool swept and the log
// reopened on SIGHUP until ctx ends.
func setupAddressing(ctx context.Context, c *cli.Context, cfg *engine.Config, log *slog.Logger) (*addressing, error) {
	a := &addressing{}
	switch c.String("nat") {
	case "own":
		return a, nil
	case "preserve":
		cfg.Preserve = true
		return a, nil
	case "mixed":
		cfg.Preserve = true
	case "share":
	default:
		return nil, usageError("--nat %q: want own, preserve, share or mixed", c.String("nat"))
	}
	prefixes, err := prefixes(c.StringSlice("pool"))
	if err != nil || len(prefixes) == 0 {
		return nil, usageError("--nat %s needs --pool CIDR (%v)", c.String("nat"), err)
	}
	if path := c.String("nat-log"); path != "" {
		if a.log, err = nat.OpenMappingLog(path); err != nil {
			return nil, fmt.Errorf("open mapping log: %w", err)
		}
	}
	a.pool, err = nat.NewPool(nat.PoolConfig{
		Prefixes: prefixes, BlockSize: c.Int("port-block"), MaxBlocksPerClient: c.Int("max-blocks-per-client"),
		Hold: c.Duration("port-hold"), Log: a.log,
	})
	if err != nil {
		a.close(log)
		return nil, usageError("address pool: %v", err)
	}
	if a.routes, err = tproxy.InstallLocalPrefixes(prefixes); err != nil {
		a.close(log)
		return nil, err
	}
	cfg.NAT = a.pool
	cfg.Hairpin = c.Bool("hairpin")
	go a.maintain(ctx, log)
	return a, nil
}

// maintain hands back idle blocks (and logs their release) and reopens
// the log on SIGHUP, for rotation.
func (a *addressing) maintain(ctx context.Context, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			a.pool.Sweep()
		case <-hup:
			if a.log != nil {
				// Opening may be slow (a network file system): never
				// in the way of the sweep.
				go func() {
					if err := a.log.Reopen(); err != nil {
						log.Error("reopen mapping log", "error", err.Error())
					}
				}()
			}
		}
	}
}

func (a *addressing) close(log *slog.Logger) {
	if a.routes != nil {
		if err := a.routes.Remove(); err != nil {
			log.Warn("remove pool routes", "error", err.Error())
		}
	}
	if a.log != nil {
		a.log.Close()
	}
}

func (a *addressing) stats() any {
	if a.pool == nil {
		return map[string]string{"mode": "own"}
	}
	return a.pool.Stats()
}

func natCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "nat",
		Usage: "show the shared address pool: blocks in use per client, free ports, refusals",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
			&cli.BoolFlag{Name: "json", Usage: "print the pool as JSON"},
		},
		Before: noArguments,
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
			defer cancel()
			stats, err := control.FetchStats(ctx, c.String("control"))
			if err != nil {
				return cli.Exit(fmt.Sprintf("converter: read %s: %v", c.String("control"), err), 1)
			}
			raw := stats["nat"]
			if c.Bool("json") {
				if raw == nil {
					raw = json.RawMessage("{}") // a daemon that does not report its pool
				}
				b, err := versionedRaw(raw, "")
				if err != nil {
					return cli.Exit(fmt.Sprintf("converter: nat: %v", err), 1)
				}
				_, err = io.out.Write(b)
				return err
			}
			if raw == nil {
				fmt.Fprintln(io.out)
				return nil
			}
			var pretty any
			json.Unmarshal(raw, &pretty)
			b, _ := json.MarshalIndent(pretty, "", "  ")
			fmt.Fprintln(io.out, string(b))
			return nil
		},
	}
}
