package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/lab"
)

// labNHSyncCommand is the cluster lab's nexthop watcher, which `lab up`
// starts in the router's namespace: it mirrors BIRD's multipath route of
// each --route into a resilient nexthop group (see lab.RunNHSync).
func labNHSyncCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:   "nhsync",
		Hidden: true,
		Usage:  "mirror BIRD's multipath routes of --route into resilient nexthop groups in this namespace until stopped (started by lab up)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "prefix", Usage: "the lab's `NAME` (for ps)"},
			&cli.StringSliceFlag{Name: "route", Usage: "`PREFIX` to mirror (repeatable, required)"},
			&cli.StringFlag{Name: "pid-file", Usage: "write the pid to `FILE` once the routes are in sync"},
		},
		HideHelpCommand: true,
		OnUsageError:    benchUsageError,
		Action:          func(c *cli.Context) error { return labNHSync(c, io) },
	}
}

func labNHSync(c *cli.Context, io stdio) error {
	if c.NArg() > 0 {
		return usageError("lab nhsync takes no arguments")
	}
	var routes []netip.Prefix
	for _, r := range c.StringSlice("route") {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return usageError("lab nhsync: --route %q: %v", r, err)
		}
		routes = append(routes, p.Masked())
	}
	if len(routes) == 0 {
		return usageError("lab nhsync: --route is required")
	}
	log := slog.New(slog.NewTextHandler(io.err, nil))
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg := lab.DefaultNHSyncConfig(routes)
	pidFile := c.String("pid-file")
	var pidErr error
	cfg.Ready = func() {
		if pidFile != "" {
			if pidErr = lab.WritePIDFile(pidFile); pidErr != nil {
				stop()
			}
		}
	}
	err := lab.RunNHSync(ctx, cfg, log)
	if pidFile != "" {
		os.Remove(pidFile)
	}
	if err == nil {
		err = pidErr
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: lab nhsync: %v", err), 1)
	}
	log.Info("nhsync: stopped; the groups and routes stay")
	return nil
}
