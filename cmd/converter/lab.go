package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/lab"
)

// defaultLabPrefix names the lab when --prefix is not given.
const defaultLabPrefix = "cvlab"

func labCommand(io stdio) *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "prefix", Value: defaultLabPrefix, Usage: "lab name: the namespaces are `NAME`-cli, NAME-conv and NAME-srv"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		}
	}
	return &cli.Command{
		Name:      "lab",
		Usage:     "manage the namespace lab: a client with two paths, a converter, a server (needs root)",
		UsageText: "converter lab up|down|status [--prefix NAME] [--json]\n   converter lab delay --port PORT --delay D [--iface IF]",
		Description: "The client namespace (c1 10.201.1.2, c2 10.201.2.2) reaches the converter namespace\n" +
			"(cv1 10.201.1.1, cv2 10.201.2.1), which routes to the server namespace (s1 10.201.3.2)\n" +
			"and can run a converter; IPv6 mirrors it under fd01:N::/64. Run commands in it with\n" +
			"`ip netns exec NAME-cli ...`.",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("lab: unknown command %q: want up, down, status or delay", c.Args().First())
			}
			return cli.ShowSubcommandHelp(c)
		},
		Subcommands: []*cli.Command{
			{
				Name:            "up",
				Usage:           "create the lab, or repair it (idempotent)",
				Flags:           flags(),
				Action:          func(c *cli.Context) error { return labUp(c, io) },
				HideHelpCommand: true,
				OnUsageError:    benchUsageError,
			},
			{
				Name:            "down",
				Usage:           "remove the lab's namespaces and links (a missing lab is fine)",
				Flags:           flags(),
				Action:          func(c *cli.Context) error { return labDown(c, io) },
				HideHelpCommand: true,
				OnUsageError:    benchUsageError,
			},
			{
				Name:            "status",
				Usage:           "show what exists of the lab; exit status 1 when it is incomplete",
				Flags:           flags(),
				Action:          func(c *cli.Context) error { return labStatus(c, io) },
				HideHelpCommand: true,
				OnUsageError:    benchUsageError,
			},
			labDelayCommand(io),
		},
	}
}

func labPrefix(c *cli.Context) (string, error) {
	if c.NArg() > 0 {
		return "", usageError("lab %s takes no arguments, got %q", c.Command.Name, strings.Join(c.Args().Slice(), " "))
	}
	p := c.String("prefix")
	// The lab package checks the same; checking here makes a bad name a
	// usage error rather than a failure.
	bad := func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}
	if p == "" || len(p) > 32 || strings.ContainsFunc(p, bad) {
		return "", usageError("lab: --prefix %q: want 1 to 32 letters, digits, '_' or '-'", p)
	}
	return p, nil
}

func labUp(c *cli.Context, io stdio) error {
	prefix, err := labPrefix(c)
	if err != nil {
		return err
	}
	l, err := lab.Up(c.Context, lab.Config{Prefix: prefix})
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: lab up: %v", err), 1)
	}
	if c.Bool("json") {
		return labWriteJSON(io.out, map[string]any{
			"prefix": l.Prefix,
			"namespaces": map[lab.Role]string{
				lab.RoleClient: l.Client, lab.RoleConverter: l.Converter, lab.RoleServer: l.Server,
			},
		})
	}
	fmt.Fprintf(io.out, "lab %s up: client %s, converter %s, server %s\n", l.Prefix, l.Client, l.Converter, l.Server)
	return nil
}

func labDown(c *cli.Context, io stdio) error {
	prefix, err := labPrefix(c)
	if err != nil {
		return err
	}
	if err := lab.Down(prefix); err != nil {
		return cli.Exit(fmt.Sprintf("converter: lab down: %v", err), 1)
	}
	if c.Bool("json") {
		return labWriteJSON(io.out, map[string]any{"prefix": prefix, "down": true})
	}
	fmt.Fprintf(io.out, "lab %s down\n", prefix)
	return nil
}

func labStatus(c *cli.Context, io stdio) error {
	prefix, err := labPrefix(c)
	if err != nil {
		return err
	}
	rep, err := lab.Status(prefix)
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: lab status: %v", err), 1)
	}
	if c.Bool("json") {
		if err := labWriteJSON(io.out, rep); err != nil {
			return err
		}
	} else {
		printLabStatus(io.out, rep)
	}
	if !rep.Complete {
		return cli.Exit("", 1)
	}
	return nil
}

func labWriteJSON(w io.Writer, v any) error {
	b, err := versionedJSON(v, "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func printLabStatus(w io.Writer, rep lab.StatusReport) {
	state := "complete"
	if !rep.Complete {
		state = "incomplete"
	}
	fmt.Fprintf(w, "lab %s: %s\n", rep.Prefix, state)
	for _, ns := range rep.Namespaces {
		if !ns.Exists {
			fmt.Fprintf(w, "  %-9s %-16s missing\n", ns.Role, ns.Name)
			continue
		}
		fmt.Fprintf(w, "  %-9s %s\n", ns.Role, ns.Name)
		for _, l := range ns.Links {
			fmt.Fprintf(w, "    link %-4s %-8s %s\n", l.Name, l.State, strings.Join(l.Addrs, " "))
		}
		for _, name := range ns.MissingLinks {
			fmt.Fprintf(w, "    link %-4s missing\n", name)
		}
		for _, k := range slices.Sorted(maps.Keys(ns.Sysctls)) {
			fmt.Fprintf(w, "    %s = %s\n", k, ns.Sysctls[k])
		}
		if m := ns.MPTCP; m != nil {
			fmt.Fprintf(w, "    mptcp limits: subflows %d, add_addr_accepted %d\n", m.Limits.Subflows, m.Limits.AddAddrAccepted)
			for _, ep := range m.Endpoints {
				fmt.Fprintf(w, "    mptcp endpoint %s%s\n", ep.Address, labEndpointFlags(ep))
			}
		}
	}
}

func labEndpointFlags(ep lab.MPTCPEndpoint) string {
	var s strings.Builder
	if ep.ID != 0 {
		fmt.Fprintf(&s, " id %d", ep.ID)
	}
	if ep.Dev != "" {
		s.WriteString(" dev " + ep.Dev)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"signal", ep.Signal}, {"subflow", ep.Subflow}, {"backup", ep.Backup}, {"fullmesh", ep.Fullmesh}} {
		if f.set {
			s.WriteString(" " + f.name)
		}
	}
	return s.String()
}
