package main

import (
	"fmt"
	"log/slog"
	"net"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/synhold"
)

// labDelayCommand runs a Delayer in the calling network namespace: a
// server whose answers to SYNs (SYN+ACK or RST) come late, without netem.
func labDelayCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "delay",
		Usage: "delay this namespace's SYN+ACKs and RSTs from --port by --delay until stopped (run it in a server's namespace: ip netns exec NS converter lab delay ...; needs root)",
		Flags: []cli.Flag{
			&cli.UintSliceFlag{Name: "port", Usage: "source `PORT` whose SYN+ACKs and RSTs are delayed (repeatable, required)"},
			&cli.DurationFlag{Name: "delay", Usage: "how long each is held (required)"},
			&cli.StringSliceFlag{Name: "iface", Usage: "interface `IF` they leave by (repeatable; default: every interface that is up but loopback)"},
		},
		HideHelpCommand: true,
		OnUsageError:    benchUsageError,
		Action:          func(c *cli.Context) error { return labDelay(c, io) },
	}
}

func labDelay(c *cli.Context, io stdio) error {
	if c.NArg() > 0 {
		return usageError("lab delay takes no arguments")
	}
	var ports []uint16
	for _, p := range c.UintSlice("port") {
		if p == 0 || p > 65535 {
			return usageError("lab delay: --port %d: want 1 to 65535", p)
		}
		ports = append(ports, uint16(p))
	}
	d := c.Duration("delay")
	if len(ports) == 0 || d <= 0 {
		return usageError("lab delay: --port and a positive --delay are required")
	}
	names := c.StringSlice("iface")
	if len(names) == 0 {
		ifs, err := net.Interfaces()
		if err != nil {
			return cli.Exit(fmt.Sprintf("converter: lab delay: %v", err), 1)
		}
		for _, i := range ifs {
			if i.Flags&net.FlagUp != 0 && i.Flags&net.FlagLoopback == 0 {
				names = append(names, i.Name)
			}
		}
	}
	log := slog.New(slog.NewJSONHandler(io.err, nil))
	dl, err := synhold.NewDelayer(ports, d, log)
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: lab delay: %v", err), 1)
	}
	defer dl.Close()
	for _, n := range names {
		ifc, err := net.InterfaceByName(n)
		if err == nil {
			err = dl.Attach(ifc.Index)
		}
		if err != nil {
			return cli.Exit(fmt.Sprintf("converter: lab delay: %s: %v", n, err), 1)
		}
	}
	fmt.Fprintf(io.out, "delaying SYN+ACKs and RSTs from ports %v by %v on %v\n", ports, d, names)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	fmt.Fprintf(io.out, "delayed %d frames\n", dl.Delayed())
	return nil
}
