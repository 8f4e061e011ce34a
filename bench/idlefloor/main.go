// Command idlefloor measures the Go runtime's floor under an idle
// converted session: the resident memory of the two sockets a session
// holds (an accepted MPTCP client leg and a dialed TCP server leg) with no
// goroutine, no buffer and no record of the converter's own, RSS delta
// per session after the runtime returned its free memory, as `make bench`
// measures the converter. What the converter holds per idle session
// beyond this figure is its own (docs/PERFORMANCE.md).
//
//	idlefloor -sessions 4000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

func main() {
	n := flag.Int("sessions", 4000, "idle sessions to hold (4 sockets each in this process: both legs and their peers)")
	flag.Parse()
	perSession, err := measure(context.Background(), *n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlefloor:", err)
		os.Exit(1)
	}
	fmt.Printf("%d idle sessions: %.2f KiB of RSS per session for its two sockets\n", *n, perSession)
}

// measure opens n pairs of sockets as a converter's session holds them,
// with their peers in the same process, and returns the RSS delta per
// session in KiB for the session's two sockets (half of the delta: the
// peers are sockets of the same kinds).
func measure(ctx context.Context, n int) (float64, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	clientSide, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer clientSide.Close()
	serverSide, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer serverSide.Close()

	before, err := settledRSS()
	if err != nil {
		return 0, err
	}
	held := make([]net.Conn, 0, 4*n)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range n {
		var d net.Dialer
		d.SetMultipathTCP(true)
		client, err := d.DialContext(ctx, "tcp", clientSide.Addr().String())
		if err != nil {
			return 0, fmt.Errorf("client leg: %w", err)
		}
		held = append(held, client)
		accepted, err := clientSide.Accept()
		if err != nil {
			return 0, err
		}
		held = append(held, accepted)
		server, err := (&net.Dialer{}).DialContext(ctx, "tcp", serverSide.Addr().String())
		if err != nil {
			return 0, fmt.Errorf("server leg: %w", err)
		}
		held = append(held, server)
		peer, err := serverSide.Accept()
		if err != nil {
			return 0, err
		}
		held = append(held, peer)
	}
	after, err := settledRSS()
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n) / 2, nil
}

// settledRSS returns the resident set in KiB once the runtime has
// returned every free page.
func settledRSS() (int, error) {
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, errors.New("no VmRSS in /proc/self/status")
}
