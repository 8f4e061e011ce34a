package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

// version is set at build time: -ldflags "-X main.version=$(git describe)".
var version = "dev"

// Exit codes shared by every command.
const (
	exitOK      = 0
	exitRefused = 1 // the input is valid to read but the converter would refuse it
	exitUsage   = 2
	exitConvert = 3 // the converter answered with an Error TLV
)

// stdio is what a command reads and writes, so the CLI runs in tests
// without a process.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// run executes the CLI with args (args[0] is the program name) and returns
// the process exit code.
func run(ctx context.Context, args []string, io stdio) int {
	app := newApp(io)
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := err.Error(); msg != "" {
			fmt.Fprintln(io.err, msg)
		}
		return ec.ExitCode()
	}
	fmt.Fprintf(io.err, "converter: %v\n", err)
	return exitUsage
}

func newApp(io stdio) *cli.App {
	app := &cli.App{
		Name:      "converter",
		Usage:     "RFC 8803 Transport Converter: MPTCP clients to TCP servers with no extra round trip",
		Version:   version,
		Reader:    io.in,
		Writer:    io.out,
		ErrWriter: io.err,
		// Errors are printed once, by run, with their exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return cli.Exit(fmt.Sprintf("converter: %v", err), exitUsage)
		},
		Commands: []*cli.Command{
			runCommand(io),
			connectCommand(io),
			decodeCommand(io),
			sessionsCommand(io),
			bpfCommand(io),
			natCommand(io),
			benchCommand(io),
			labCommand(io),
		},
	}
	// urfave/cli applies the app's OnUsageError to the app's own flags
	// only: give every command the same exit code for a bad flag.
	for _, c := range app.Commands {
		setUsageExit(c, app.OnUsageError)
	}
	return app
}

// usageError is a CLI error with the usage exit code.
func usageError(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf("converter: "+format, a...), exitUsage)
}

func setUsageExit(c *cli.Command, f cli.OnUsageErrorFunc) {
	if c.OnUsageError == nil {
		c.OnUsageError = f
	}
	for _, sub := range c.Subcommands {
		setUsageExit(sub, f)
	}
}
