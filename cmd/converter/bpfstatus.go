package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
)

func bpfCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "bpf",
		Usage: "the eBPF programs of the running converter",
		Subcommands: []*cli.Command{{
			Name:  "status",
			Usage: "attached interfaces, program ids, map sizes and the decision counters",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
				&cli.BoolFlag{Name: "json", Usage: `print {"version":...,"counters":{"steered":N,...},...}`},
			},
			Before: noArguments,
			Action: func(c *cli.Context) error {
				ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
				defer cancel()
				stats, err := control.FetchStats(ctx, c.String("control"))
				if err != nil {
					return cli.Exit(fmt.Sprintf("converter: read %s: %v", c.String("control"), err), 1)
				}
				raw, ok := stats["bpf"]
				if !ok {
					raw = json.RawMessage("{}")
				}
				if c.Bool("json") {
					b, err := versionedRaw(raw, "")
					if err != nil {
						return cli.Exit(fmt.Sprintf("converter: bpf status: %v", err), 1)
					}
					_, err = io.out.Write(b)
					return err
				}
				return printBPFStatus(io.out, raw)
			},
		}},
	}
}

type bpfStatusView struct {
	Counters       map[string]uint64 `json:"counters"`
	SynAckCounters map[string]uint64 `json:"synack_counters"`
	Steering       *programView      `json:"steering"`
	SynAckCapture  *programView      `json:"synack_capture"`
	SynwinCounters map[string]uint64 `json:"synwin_counters"`
	Synwin         *programView      `json:"synwin"`
	SynHold        *programView      `json:"syn_hold"`
	SynHoldCounts  map[string]uint64 `json:"syn_hold_counters"`
	SynHoldPending *int              `json:"syn_hold_pending"`
}

type programView struct {
	ProgramID uint32
	Links     []struct {
		Hook      string
		Interface string
		Ifindex   int
		LinkID    uint32
	}
	Maps []struct {
		Name       string
		Entries    int
		MaxEntries uint32
	}
}

func printBPFStatus(out io.Writer, raw json.RawMessage) error {
	var v bpfStatusView
	if err := json.Unmarshal(raw, &v); err != nil {
		return cli.Exit(fmt.Sprintf("converter: bpf status: %v", err), 1)
	}
	if v.Steering == nil && v.SynAckCapture == nil && v.Synwin == nil && v.SynHold == nil {
		fmt.Fprintln(out, "no eBPF program loaded (run the converter with --transparent, --server-iface or --syn-hold, or on a kernel that needs the TFO window clamp)")
		return nil
	}
	for _, p := range []struct {
		name     string
		prog     *programView
		counters map[string]uint64
	}{{"tfo window clamp", v.Synwin, v.SynwinCounters}, {"steering", v.Steering, v.Counters}, {"synack capture", v.SynAckCapture, v.SynAckCounters}, {"syn hold", v.SynHold, v.SynHoldCounts}} {
		if p.prog == nil {
			continue
		}
		fmt.Fprintf(out, "%s: program %d\n", p.name, p.prog.ProgramID)
		for _, l := range p.prog.Links {
			hook := l.Hook
			if hook == "" { // a predecessor's answer during an upgrade
				hook = "tcx ingress"
			}
			fmt.Fprintf(out, "  %s %s (ifindex %d) link %d\n", hook, l.Interface, l.Ifindex, l.LinkID)
		}
		for _, m := range p.prog.Maps {
			fmt.Fprintf(out, "  map %s: %d of %d entries\n", m.Name, m.Entries, m.MaxEntries)
		}
		names := make([]string, 0, len(p.counters))
		for n := range p.counters {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(out, "  %-19s %d\n", n, p.counters[n])
		}
	}
	if v.SynHoldPending != nil {
		fmt.Fprintf(out, "  %-19s %d\n", "held now", *v.SynHoldPending)
	}
	return nil
}
