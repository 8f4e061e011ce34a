package main

import (
	"github.com/urfave/cli/v2"
)

func transparentFlags() []cli.Flag {
	d := defaults
	return []cli.Flag{
		&cli.BoolFlag{Name: "transparent", Value: d.Transparent, Usage: "steer Convert SYNs addressed to the real servers to this converter with eBPF (needs --client-iface)"},
		&cli.StringSliceFlag{Name: "client-iface", Value: stringSlice(d.ClientIfaces), Usage: "client-facing interface `IF` for the steering program (repeatable)"},
		&cli.StringSliceFlag{Name: "server-iface", Value: stringSlice(d.ServerIfaces), Usage: "server-facing interface `IF` whose SYN+ACKs are captured for an exact Extended TCP Header (repeatable; any mode)"},
		&cli.StringSliceFlag{Name: "announce", Value: stringSlice(d.Announce), Usage: "announce `ADDR[:PORT]` to MPTCP clients (ADD_ADDR) through the kernel path manager, so their extra subflows join it (repeatable)"},
		&cli.StringSliceFlag{Name: "cluster-vip", Value: stringSlice(d.ClusterVIPs), Usage: "scale-out: anycast service `ADDR` of the cluster (repeatable, IPv4 and IPv6): listened on, and put on the node's device cvclusterN for its BGP speaker while the node is ready (withdrawn on drain, gone with the process)"},
		&cli.StringSliceFlag{Name: "node-address", Value: stringSlice(d.NodeAddresses), Usage: "scale-out: this node's unique `ADDR` (one per family): listened on, announced to MPTCP clients (ADD_ADDR, the C flag set) so that their extra subflows reach this node"},
		&cli.StringFlag{Name: "tfo-key", Value: d.TFOKey, Usage: "scale-out: `FILE` with the TCP Fast Open server key every node shares (32 hex digits; a second line: the backup key during a rotation)"},
		&cli.UintFlag{Name: "mark", Value: uint(d.Mark), Usage: "fwmark of steered packets (transparent mode)"},
		&cli.IntFlag{Name: "route-table", Value: d.RouteTable, Usage: "routing table of the local route for marked packets (transparent mode)"},
		&cli.IntFlag{Name: "max-transparent-ports", Value: d.MaxTransparentPorts, Usage: "per-port listeners for the joins of steered connections, at most (one per destination port in use; transparent mode)"},
	}
}
