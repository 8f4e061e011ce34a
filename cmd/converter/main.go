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
	// The first SIGTERM or SIGINT stops: the daemon drains. A second one
	// aborts what is left at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	stopCtx, stop := context.WithCancel(context.Background())
	abortCtx, abort := context.WithCancel(context.Background())
	go func() {
		<-sigs
		stop()
		<-sigs
		abort()
	}()
	code := run(context.WithValue(stopCtx, abortKey{}, abortCtx), os.Args, stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr})
	stop()
	abort()
	os.Exit(code)
}

type abortKey struct{}

// abortContext returns the context that ends at the second stop signal,
// or ctx itself when there is none (tests running the app in-process).
func abortContext(ctx context.Context) context.Context {
	if a, ok := ctx.Value(abortKey{}).(context.Context); ok {
		return a
	}
	return ctx
}
