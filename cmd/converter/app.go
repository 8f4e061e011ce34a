package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is set at build time: -ldflags "-X main.version=$(git describe)";
// without it, from the build information (version.go).
var version = devVersion

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

// argsKey carries the command line the CLI was run with.
type argsKey struct{}

// run executes the CLI with args (args[0] is the program name) and returns
// the process exit code.
func run(ctx context.Context, args []string, io stdio) int {
	app := newApp(io)
	args = flagsFirst(app.Commands, args)
	// The daemon reloads by evaluating its own command line again.
	err := app.RunContext(context.WithValue(ctx, argsKey{}, args), args)
	if err == nil {
		return exitOK
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) && isUnknownHelpTopic(ec) {
		fmt.Fprintf(io.err, "converter: %v\n", err)
		return exitUsage
	}
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
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			if name := commandName(c); name != "" {
				return usageError("%s: %s (see converter %s --help)", name, flagErrorText(err), name)
			}
			return usageError("%s (see converter --help)", flagErrorText(err))
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
			statusCommand(io),
			reloadCommand(io),
			upgradeCommand(io),
			docsCommand(),
		},
	}
	// urfave/cli applies the app's OnUsageError to the app's own flags
	// only: give every command the same exit code for a bad flag.
	for _, c := range app.Commands {
		setUsageExit(c, app.OnUsageError)
	}
	refuseUnknownCommands(app)
	// run takes flags only: an argument is a mistake, not something to
	// ignore.
	if c := findCommand(app.Commands, "run"); c != nil && c.Before == nil {
		c.Before = noArguments
	}
	return app
}

// noArguments refuses the arguments of a command that takes none.
func noArguments(c *cli.Context) error {
	if c.Args().Present() {
		return usageError("%s takes no arguments, got %q", commandName(c), strings.Join(c.Args().Slice(), " "))
	}
	return nil
}

// commandName is the command c runs, with its parents ("bpf status"), or
// "" for the app itself.
func commandName(c *cli.Context) string {
	var names []string
	for _, cc := range c.Lineage() {
		if cc.Command != nil && cc.Command.Name != "" && (cc.App == nil || cc.Command.Name != cc.App.Name) {
			names = append([]string{cc.Command.Name}, names...)
		}
	}
	return strings.Join(names, " ")
}

// flagErrorText words a flag parsing error: the flag package says
// "flag provided but not defined: -name" whatever the dashes given.
func flagErrorText(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		if len(name) > 1 {
			return "unknown flag --" + name
		}
		return "unknown flag -" + name
	}
	return msg
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
