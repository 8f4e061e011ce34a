package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/internal/daemon"
)

// upgradeCommand asks the running daemon to run its binary again (as
// SIGUSR2): the new process takes the listening sockets and BPF programs
// over and the old one drains. Exit 0 once the new process serves, 1 when
// the upgrade failed (the old one serves on).
func upgradeCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "upgrade",
		Usage: "start the converter's binary again (as on disk now) and hand the running daemon's sockets and programs over to it (as SIGUSR2)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
			&cli.BoolFlag{Name: "json", Usage: `print {"version":...,"ok":true,"pid":...,"binary":...,"took_ms":...}`},
		},
		Before: noArguments,
		Action: func(c *cli.Context) error {
			ctx, cancel := context.WithTimeout(c.Context, 3*time.Minute)
			defer cancel()
			var o daemon.UpgradeOutcome
			err := control.Upgrade(ctx, c.String("control"), &o)
			if err != nil && o.Error == "" && !o.OK {
				return cli.Exit(fmt.Sprintf("converter: %s: %v", c.String("control"), err), 1)
			}
			if c.Bool("json") {
				b, _ := versionedJSON(o, "")
				fmt.Fprint(io.out, string(b))
			} else if o.OK {
				fmt.Fprintf(io.out, "upgraded: pid %d (%s) serves, took %d ms; the old process drains\n", o.PID, o.Binary, o.TookMS)
			} else {
				fmt.Fprintf(io.out, "upgrade failed, the running daemon serves on: %s\n", o.Error)
			}
			if !o.OK {
				return cli.Exit("", 1)
			}
			return nil
		},
	}
}
