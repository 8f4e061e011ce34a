package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/dissect"
	"github.com/convert-tc/converter/tlv"
)

// firstBytesWait is how long connect waits for stdin before sending a SYN
// that carries only the Convert message.
const firstBytesWait = 50 * time.Millisecond

// maxEarly bounds the application bytes put in the SYN with the message.
const maxEarly = 1200

func connectCommand(io stdio) *cli.Command {
	return &cli.Command{
		Name:      "connect",
		Usage:     "open a connection through a converter and relay stdin/stdout (a Convert client)",
		ArgsUsage: "HOST:PORT",
		Description: "Sends one SYN carrying the Convert message and the first stdin bytes (TCP Fast Open,\n" +
			"no cookie) to the converter, then copies stdin to the connection and the connection to\n" +
			"stdout. On an Error TLV it prints 'converter error N (Name)' and exits 3.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "via", Usage: "converter `ADDR:PORT` (explicit mode)"},
			&cli.BoolFlag{Name: "transparent", Usage: "send the Convert SYN to HOST:PORT itself, for a converter on the path (transparent mode)"},
			&cli.BoolFlag{Name: "mptcp", Value: true, Usage: "use Multipath TCP toward the converter"},
			&cli.StringFlag{Name: "cookie", Usage: "Cookie TLV value, `HEX`"},
			&cli.BoolFlag{Name: "info", Usage: "ask for the converter's supported TCP extensions and print them"},
			&cli.StringFlag{Name: "options", Usage: "TCP options to request in an Extended Connect, `HEX` (e.g. 1e02 for MPTCP)"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Second, Usage: "time allowed for the converter's reply"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print the decoded reply on stderr"},
		},
		Action: func(c *cli.Context) error { return runConnect(c, io) },
	}
}

func runConnect(c *cli.Context, io stdio) error {
	opts, err := connectOptions(c)
	if err != nil {
		return err
	}
	stdin := startReading(io.in)
	early := stdin.first(firstBytesWait, maxEarly)

	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	conn, err := client.Dial(ctx, opts, early)
	cancel()
	var ce *client.Error
	if errors.As(err, &ce) {
		if c.Bool("verbose") {
			printReply(io.err, ce.Reply)
		}
		return cli.Exit(ce.Error(), exitConvert)
	}
	if err != nil {
		return cli.Exit(fmt.Sprintf("converter: %v", err), 1)
	}
	defer conn.Close()
	if c.Bool("verbose") {
		printReply(io.err, conn.Reply)
	}
	if opts.Info {
		kinds, _ := conn.Message.SupportedTCPExtensions()
		fmt.Fprintln(io.out, "supported TCP extensions:", kindNames(kinds))
	}
	if !opts.Dest.IsValid() {
		return nil // Info only: the converter closes
	}
	return relayStdio(conn.TCPConn, stdin, io.out)
}

func connectOptions(c *cli.Context) (client.Options, error) {
	o := client.Options{MPTCP: c.Bool("mptcp"), Info: c.Bool("info")}
	var err error
	switch {
	case c.Bool("transparent") && c.IsSet("via"):
		return o, usageError("--via and --transparent exclude each other")
	case !c.Bool("transparent") && !c.IsSet("via"):
		return o, usageError("connect needs --via ADDR:PORT (or --transparent)")
	case !c.Bool("transparent"):
		if o.Via, err = netip.ParseAddrPort(c.String("via")); err != nil {
			return o, usageError("--via %q: %v", c.String("via"), err)
		}
	}
	switch c.NArg() {
	case 0:
		if !o.Info {
			return o, usageError("connect needs HOST:PORT (or --info)")
		}
	case 1:
		if o.Dest, err = netip.ParseAddrPort(c.Args().First()); err != nil {
			return o, usageError("destination %q: %v", c.Args().First(), err)
		}
	default:
		return o, usageError("connect takes one HOST:PORT, got %d arguments", c.NArg())
	}
	if c.Bool("transparent") {
		if !o.Dest.IsValid() {
			return o, usageError("--transparent needs HOST:PORT")
		}
		o.Via = o.Dest // the converter on the path takes the SYN
	}
	if o.Cookie, err = hexFlag(c, "cookie"); err != nil {
		return o, err
	}
	if o.TCPOptions, err = hexFlag(c, "options"); err != nil {
		return o, err
	}
	return o, nil
}

func hexFlag(c *cli.Context, name string) ([]byte, error) {
	s := c.String(name)
	if s == "" {
		return nil, nil
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
	if err != nil {
		return nil, usageError("--%s: %v", name, err)
	}
	return b, nil
}

// relayStdio copies stdin to the connection (half-closing on EOF) and the
// connection to stdout until the server's side ends.
func relayStdio(conn *net.TCPConn, stdin *chunkReader, out io.Writer) error {
	upErr := make(chan error, 1)
	go func() {
		err := stdin.copyTo(conn)
		if err == nil {
			err = conn.CloseWrite()
		}
		upErr <- err
	}()
	if _, err := io.Copy(out, conn); err != nil {
		return cli.Exit(fmt.Sprintf("converter: receive: %v", err), 1)
	}
	select {
	case err := <-upErr:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return cli.Exit(fmt.Sprintf("converter: send: %v", err), 1)
		}
	default:
		// The server closed while stdin still had data: done all the same.
	}
	return nil
}

func kindNames(kinds []byte) string {
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s(%d)", tlv.OptionName(k), k))
	}
	return strings.Join(parts, " ")
}

// chunkReader reads stdin in the background so that the first bytes can go
// in the SYN when they are there at once, without waiting for more.
type chunkReader struct {
	chunks  chan []byte
	err     error // set before chunks is closed
	pending []byte
}

func startReading(r io.Reader) *chunkReader {
	cr := &chunkReader{chunks: make(chan []byte, 4)}
	go func() {
		defer close(cr.chunks)
		for {
			buf := make([]byte, 64<<10)
			n, err := r.Read(buf)
			if n > 0 {
				cr.chunks <- buf[:n]
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					cr.err = err
				}
				return
			}
		}
	}()
	return cr
}

// first returns up to max bytes that arrive within wait.
func (cr *chunkReader) first(wait time.Duration, max int) []byte {
	select {
	case b, ok := <-cr.chunks:
		if !ok {
			return nil
		}
		if len(b) > max {
			cr.pending = b[max:]
			return b[:max]
		}
		return b
	case <-time.After(wait):
		return nil
	}
}

func (cr *chunkReader) copyTo(w io.Writer) error {
	if len(cr.pending) > 0 {
		if _, err := w.Write(cr.pending); err != nil {
			return err
		}
		cr.pending = nil
	}
	for b := range cr.chunks {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return cr.err
}

// printReply shows the converter's reply for -v.
func printReply(w io.Writer, reply []byte) {
	fmt.Fprint(w, dissect.Decode(reply, dissect.Reply).Text())
}
