// Command converter is an RFC 8803 Transport Converter: it accepts
// Multipath TCP clients whose SYN carries a Convert message naming a server,
// reaches that server over plain TCP with no extra round trip, and relays.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr})
	stop()
	os.Exit(code)
}
