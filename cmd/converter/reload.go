package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/internal/daemon"
)

// reloadCommand asks the running daemon to reload, as SIGHUP does, and
// reports the outcome: exit 0 when the new configuration is in force, 1
// when it was refused (the running one stays).
func reloadCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "reload the running converter's configuration (as SIGHUP) and report the outcome",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
			&cli.BoolFlag{Name: "json", Usage: `print {"version":...,"ok":true,"problems":[...],"needs_restart":[...]}`},
		},
		Before: noArguments,
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
			defer cancel()
			var o struct {
				daemon.ReloadOutcome
				Version string `json:"version"`
			}
			err := control.Reload(ctx, c.String("control"), &o)
			if err != nil && o.Time.IsZero() {
				return cli.Exit(fmt.Sprintf("converter: %s: %v", c.String("control"), err), 1)
			}
			if c.Bool("json") {
				b, _ := versionedJSON(o.ReloadOutcome, "")
				fmt.Fprint(io.out, string(b))
			} else if o.OK {
				fmt.Fprintln(io.out, "reloaded")
				for _, f := range o.NeedsRestart {
					fmt.Fprintf(io.out, "changed but needs a restart: %s\n", f)
				}
				if o.CookiesReload != "" {
					fmt.Fprintf(io.out, "cookie secret: %s\n", o.CookiesReload)
				}
			} else {
				fmt.Fprintln(io.out, "refused; the running configuration stays in force:")
				for _, p := range o.Problems {
					fmt.Fprintln(io.out, "  "+p)
				}
			}
			if !o.OK {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}
