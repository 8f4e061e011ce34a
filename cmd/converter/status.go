package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
)

// statusCommand is the health check of a running daemon: exit 0 while it
// takes new sessions, 1 otherwise (draining, starting, unreachable).
func statusCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "whether the running converter takes new sessions (exit 0) or not (exit 1), and its session counts",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
			&cli.BoolFlag{Name: "json", Usage: `print {"version":...,"ready":true,"state":"serving","active":N,"converted":N}`},
		},
		Before: noArguments,
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
			defer cancel()
			path := c.String("control")
			r, err := control.FetchReady(ctx, path)
			if err != nil {
				return cli.Exit(fmt.Sprintf("converter: %s: %v", path, err), 1)
			}
			var counts struct {
				Active    int64  `json:"active"`
				Converted uint64 `json:"converted"`
			}
			if stats, err := control.FetchStats(ctx, path); err == nil {
				json.Unmarshal(stats["converter"], &counts)
			}
			if c.Bool("json") {
				b, err := versionedJSON(struct {
					control.Readiness
					Active    int64  `json:"active"`
					Converted uint64 `json:"converted"`
				}{r, counts.Active, counts.Converted}, "")
				if err != nil {
					return err
				}
				fmt.Fprint(io.out, string(b))
			} else {
				fmt.Fprintf(io.out, "%s: %d session(s) in progress, %d converted\n", r.State, counts.Active, counts.Converted)
			}
			if !r.Ready {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}
