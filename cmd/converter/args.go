package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// urfave/cli v2 stops reading flags at a command's first argument, so
// `converter connect 10.0.0.1:80 --via 1.2.3.4:5124` would pass --via on as
// an argument. flagsFirst moves the flags that follow the arguments of the
// command args names in front of them, as if they had been given first:
// every flag is read wherever it stands, up to a "--", after which
// everything is an argument.

// valueFlag is what urfave/cli flags that take a value implement.
type valueFlag interface {
	TakesValue() bool
}

// flagsFirst returns args (args[0] is the program name) with the flags of
// the command they run put before its arguments, followed by "--" when
// there are arguments. Commands with subcommands, and args that name no
// command, are returned as they are.
func flagsFirst(commands []*cli.Command, args []string) []string {
	if len(args) < 2 {
		return args
	}
	// The app's own flags (--help, --version) take no value.
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" && args[i] != "--" {
		i++
	}
	var cmd *cli.Command
	for i < len(args) {
		next := findCommand(commands, args[i])
		if next == nil {
			break
		}
		cmd, i = next, i+1
		if len(cmd.Subcommands) == 0 {
			break
		}
		// Flags of a command with subcommands come before the subcommand.
		for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-" && args[i] != "--" {
			if takesValue(cmd, args[i]) && !strings.Contains(args[i], "=") {
				i++
			}
			i++
		}
		commands, cmd = cmd.Subcommands, nil
	}
	if cmd == nil {
		return args
	}
	var flags, positional []string
	rest := args[i:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		switch {
		case a == "--":
			positional = append(positional, rest[j+1:]...)
			j = len(rest)
		case strings.HasPrefix(a, "-") && a != "-":
			flags = append(flags, a)
			if takesValue(cmd, a) && !strings.Contains(a, "=") && j+1 < len(rest) {
				j++
				flags = append(flags, rest[j])
			}
		default:
			positional = append(positional, a)
		}
	}
	out := append(append([]string{}, args[:i]...), flags...)
	if len(positional) > 0 {
		out = append(append(out, "--"), positional...)
	}
	return out
}

func findCommand(commands []*cli.Command, name string) *cli.Command {
	for _, c := range commands {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether the flag arg (-name, --name or --name=value)
// is one of cmd's flags that takes a value. An unknown flag takes none; it
// is refused when the flags are parsed.
func takesValue(cmd *cli.Command, arg string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				v, ok := f.(valueFlag)
				return ok && v.TakesValue()
			}
		}
	}
	return false
}

// refuseUnknownCommands gives the app and every command with subcommands
// an action that refuses an unknown command name with the usage exit code
// (urfave/cli exits 3, the converter's Error TLV status, after "No help
// topic"), and shows the help when no name is given.
func refuseUnknownCommands(app *cli.App) {
	app.Action = func(c *cli.Context) error {
		if c.Args().Present() {
			return usageError("unknown command %q (see converter --help)", c.Args().First())
		}
		return cli.ShowAppHelp(c)
	}
	var walk func(cmds []*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			if len(cmd.Subcommands) == 0 {
				continue
			}
			if cmd.Action == nil {
				cmd.Action = func(c *cli.Context) error {
					if c.Args().Present() {
						return usageError("%s: unknown command %q (see converter %s --help)", c.Command.Name, c.Args().First(), c.Command.Name)
					}
					return cli.ShowSubcommandHelp(c)
				}
			}
			walk(cmd.Subcommands)
		}
	}
	walk(app.Commands)
}

// helpTopicExit is the exit code urfave/cli gives `help NAME` for an
// unknown NAME.
const helpTopicExit = 3

// isUnknownHelpTopic tells urfave/cli's error for `help NAME` with an
// unknown NAME from the converter's own exit status 3.
func isUnknownHelpTopic(ec cli.ExitCoder) bool {
	return ec.ExitCode() == helpTopicExit && strings.HasPrefix(ec.Error(), "No help topic for ")
}
