package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
)

func natFlags() []cli.Flag {
	d := defaults
	return []cli.Flag{
		&cli.StringFlag{Name: "nat", Value: string(d.NAT), Usage: "server-leg source: own (the converter's address), preserve (the client's, needs --server-iface), share (a pool, like a CGN) or mixed (preserve when the families match, else share)"},
		&cli.StringSliceFlag{Name: "pool", Value: stringSlice(d.Pool), Usage: "shared pool `CIDR`, IPv4 or IPv6 (repeatable; --nat share)"},
		&cli.IntFlag{Name: "port-block", Value: d.PortBlock, Usage: "ports per block handed to one client (--nat share)"},
		&cli.IntFlag{Name: "max-blocks-per-client", Value: d.MaxBlocksPerClient, Usage: "blocks one client may hold (--nat share)"},
		&cli.DurationFlag{Name: "port-hold", Value: d.PortHold, Usage: "a released port is not reused for this long (--nat share)"},
		&cli.BoolFlag{Name: "hairpin", Value: d.Hairpin, Usage: "allow destinations that are addresses of the shared pool (refused with Not Authorized otherwise)"},
		&cli.StringFlag{Name: "nat-log", Value: d.NATLog, Usage: "mapping log `FILE`: one JSON line per port-block allocation and release; reopened on SIGHUP"},
	}
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
