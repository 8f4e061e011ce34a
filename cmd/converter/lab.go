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
		Usage:     "manage the namespace lab: a client with two paths, a converter (or N converter nodes behind a BGP router), a server (needs root)",
		UsageText: "converter lab up [--nodes N] [--bfd] [--prefix NAME] [--json]\n   converter lab down|status [--prefix NAME] [--json]\n   converter lab delay --port PORT --delay D [--iface IF]",
		Description: "The client namespace (c1 10.201.1.2, c2 10.201.2.2) reaches the converter namespace\n" +
			"(cv1 10.201.1.1, cv2 10.201.2.1), which routes to the server namespace (s1 10.201.3.2)\n" +
			"and can run a converter; IPv6 mirrors it under fd01:N::/64. Run commands in it with\n" +
			"`ip netns exec NAME-cli ...`.\n\n" +
			"With --nodes N (2 to 16) the client's two paths lead to a router (NAME-rt) instead, which\n" +
			"reaches N converter nodes (NAME-n1 ...) and the server over 10.202.0.0/16 and fd02::/16.\n" +
			"The router and every node run BIRD 2 (eBGP, router AS 65000, nodes AS 65100, hold 3 s,\n" +
			"keepalive 1 s; --bfd: BFD 100 ms x 3): a node announces the addresses of its converter's\n" +
			"device cvclusterN, the router merges the nodes' paths to the VIP (10.202.100.1,\n" +
			"fd02:100::1) into ECMP, which a watcher turns into a resilient nexthop group. Start\n" +
			"`converter run --cluster-vip VIP --node-address ADDR` in each node (status --json lists\n" +
			"them); `lab status` shows the BGP sessions and the VIP's next hops.",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError("lab: unknown command %q: want up, down, status or delay", c.Args().First())
			}
			return cli.ShowSubcommandHelp(c)
		},
		Subcommands: []*cli.Command{
			{
				Name:  "up",
				Usage: "create the lab, or repair it (idempotent)",
				Flags: append(flags(),
					&cli.IntFlag{Name: "nodes", Value: 1, Usage: "converter namespaces: 1 is the one-converter lab, 2 to 16 the cluster lab (a BGP router, N nodes; needs BIRD 2)"},
					&cli.BoolFlag{Name: "bfd", Usage: "cluster lab: BFD (100 ms x 3) on the BGP sessions, so that a silent node is withdrawn within 0.3 s instead of the 3 s hold time"},
				),
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
				Usage:           "show what exists of the lab (a cluster lab: the BGP sessions and the VIP's next hops); exit status 1 when it is incomplete",
				Flags:           flags(),
				Action:          func(c *cli.Context) error { return labStatus(c, io) },
				HideHelpCommand: true,
				OnUsageError:    benchUsageError,
			},
			labDelayCommand(io),
			labNHSyncCommand(io),
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
	nodes := c.Int("nodes")
	if nodes < 1 || nodes > lab.MaxNodes {
		return usageError("lab up: --nodes %d: want 1 to %d", nodes, lab.MaxNodes)
	}
	if c.Bool("bfd") && nodes < 2 {
		return usageError("lab up: --bfd needs --nodes 2 or more (the cluster lab)")
	}
	l, err := lab.Up(c.Context, lab.Config{Prefix: prefix, Nodes: nodes, BFD: c.Bool("bfd")})
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: lab up: %v", err), 1)
	}
	if l.IsCluster() {
		return labUpClusterOutput(c, io, l)
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

func labUpClusterOutput(c *cli.Context, io stdio, l *lab.Lab) error {
	nodes := make([]string, 0, len(l.Nodes))
	for _, n := range l.Nodes {
		nodes = append(nodes, n.NS)
	}
	if c.Bool("json") {
		ns := map[string]any{string(lab.RoleClient): l.Client, string(lab.RoleRouter): l.Router, string(lab.RoleServer): l.Server, "nodes": nodes}
		return labWriteJSON(io.out, map[string]any{"prefix": l.Prefix, "namespaces": ns, "vip": l.VIPs, "run_dir": l.RunDir})
	}
	fmt.Fprintf(io.out, "lab %s up: client %s, router %s, nodes %s, server %s\n", l.Prefix, l.Client, l.Router, strings.Join(nodes, " "), l.Server)
	fmt.Fprintf(io.out, "VIP %s; BGP sessions established; start a converter in each node:\n", labJoin(l.VIPs))
	for _, n := range l.Nodes {
		fmt.Fprintf(io.out, "  ip netns exec %s converter run", n.NS)
		for _, v := range l.VIPs {
			fmt.Fprintf(io.out, " --cluster-vip %s", v)
		}
		for _, a := range n.Addrs {
			fmt.Fprintf(io.out, " --node-address %s", a)
		}
		fmt.Fprintf(io.out, " --allow-destinations 10.202.0.0/16 --allow-destinations fd02::/16 --control /run/converter-%s.sock\n", n.NS)
	}
	return nil
}

func labJoin[T fmt.Stringer](xs []T) string {
	s := make([]string, 0, len(xs))
	for _, x := range xs {
		s = append(s, x.String())
	}
	return strings.Join(s, " ")
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
	if rep.Cluster != nil {
		printClusterStatus(w, rep)
	}
}

func printClusterStatus(w io.Writer, rep lab.StatusReport) {
	cl := rep.Cluster
	bfd := "off"
	if cl.BFD {
		bfd = fmt.Sprintf("%d ms x %d", cl.BFDIntervalMS, cl.BFDMultiplier)
	}
	fmt.Fprintf(w, "  vip %s\n", strings.Join(rep.VIP, " "))
	for _, n := range rep.Nodes {
		conv := "no converter"
		if n.Device != "" {
			conv = fmt.Sprintf("converter: %s announces %s", n.Device, strings.Join(n.Announced, " "))
			if len(n.Announced) == 0 {
				conv = fmt.Sprintf("converter: %s announces nothing", n.Device)
			}
		}
		fmt.Fprintf(w, "  node %s: %s (%s)\n", n.Namespace, strings.Join(n.Addresses, " "), conv)
	}
	fmt.Fprintf(w, "  bgp: router AS %d, nodes AS %d, hold %d s, keepalive %d s, BFD %s\n", cl.RouterAS, cl.NodeAS, cl.HoldSeconds, cl.KeepaliveSeconds, bfd)
	for _, b := range rep.BGP {
		fmt.Fprintf(w, "    %-6s %-16s %-12s since %s", b.Session, b.Node, b.State, b.Since)
		if b.Info != "" && b.Info != b.State {
			fmt.Fprintf(w, " (%s)", b.Info)
		}
		fmt.Fprintln(w)
	}
	for _, r := range rep.VIPNextHops {
		switch {
		case r.Group != 0:
			kind := "group"
			if r.Resilient {
				kind = "resilient group"
			}
			route := "route installed"
			if !r.Installed {
				route = "no route to it"
			}
			fmt.Fprintf(w, "  vip %s: %s %d (%s, %d buckets, idle %d s):\n", r.VIP, kind, r.Group, route, cl.Buckets, cl.IdleSeconds)
			for _, m := range r.Members {
				fmt.Fprintf(w, "    %-16s via %s dev %s, nexthop %d, %d buckets\n", m.Node, m.Via, m.Dev, m.ID, m.Buckets)
			}
		case len(r.BIRD) > 0:
			fmt.Fprintf(w, "  vip %s: no resilient group (is the watcher running?); BIRD's multipath route forwards\n", r.VIP)
		default:
			fmt.Fprintf(w, "  vip %s: no next hop (no node announces it)\n", r.VIP)
		}
		var paths []string
		for _, p := range r.BIRD {
			paths = append(paths, fmt.Sprintf("%s via %s", p.Node, p.Via))
		}
		if len(paths) > 0 {
			fmt.Fprintf(w, "    BIRD's route (metric 32): %s\n", strings.Join(paths, ", "))
		}
	}
	for _, p := range rep.Processes {
		state := "not running"
		if p.Running {
			state = fmt.Sprintf("pid %d", p.PID)
		}
		fmt.Fprintf(w, "  %-6s %-16s %-12s log %s\n", p.Name, p.Namespace, state, p.Log)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
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
