package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/session"
)

func sessionsCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:  "sessions",
		Usage: "show the converted connections and their MPTCP subflows (like ss)",
		Description: "One line per session (client, destination, state, bytes, age) with its subflows\n" +
			"indented beneath: addresses, bytes, RTT, backup. Reads the control socket of `converter run`.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "control", Value: control.DefaultSocket, Usage: "control socket of the daemon"},
			&cli.BoolFlag{Name: "json", Usage: `print the table as JSON: {"version":...,"sessions":[...]}, one document per line with --watch`},
			&cli.BoolFlag{Name: "watch", Usage: "print the table again every --interval until interrupted"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh interval of --watch"},
		},
		Action: func(c *cli.Context) error {
			if err := noArguments(c); err != nil {
				return err
			}
			for {
				if err := printSessions(c.Context, c.String("control"), c.Bool("json"), io.out); err != nil {
					return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
				}
				if !c.Bool("watch") {
					return nil
				}
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(c.Duration("interval")):
				}
			}
		},
	}
}

func printSessions(ctx context.Context, path string, asJSON bool, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	snap, err := control.FetchSessions(ctx, path)
	if err != nil {
		return fmt.Errorf("read sessions from %s: %w", path, err)
	}
	if asJSON {
		if snap.Sessions == nil {
			snap.Sessions = []session.Info{}
		}
		b, err := versionedJSON(snap, "")
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	}
	writeSessionTable(out, snap, time.Now())
	return nil
}

// writeSessionTable prints aligned columns, subflows indented under their
// session.
func writeSessionTable(out io.Writer, snap session.Snapshot, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTOKEN\tCLIENT\tDESTINATION\tSTATE\tTO-SERVER\tTO-CLIENT\tAGE\tSOURCE\t")
	for _, s := range snap.Sessions {
		token := s.Token.String()
		if s.Fallback {
			token += " (tcp)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", s.ID, token, s.Client, orDash(s.Destination),
			s.State, humanBytes(s.BytesToServer), humanBytes(s.BytesToClient), now.Sub(s.Started).Round(time.Second),
			sourceText(s))
		for _, sf := range s.Subflows {
			backup := ""
			if sf.Backup {
				backup = " backup"
			}
			fmt.Fprintf(tw, "  subflow\t\t%s\t%s\tsent %s\trecv %s\trtt %dus%s\t\t\n", sf.Remote, sf.Local,
				humanBytes(int64(sf.BytesSent)), humanBytes(int64(sf.BytesReceived)), sf.RTTMicros, backup)
		}
	}
	tw.Flush()
	fmt.Fprintf(out, "%d session(s)\n", len(snap.Sessions))
}

func orDash(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// sourceText is the server leg's source address and how it was chosen.
func sourceText(s session.Info) string {
	if !s.Upstream.Local.IsValid() {
		return "-"
	}
	if s.ServerSource == "" {
		return s.Upstream.Local.String()
	}
	return s.Upstream.Local.String() + " (" + s.ServerSource + ")"
}
