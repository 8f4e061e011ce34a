// Package reuseport opens the daemon's plain TCP listeners for people and
// scrapers (metrics, the live page) with SO_REUSEPORT, so that the
// successor of an upgrade binds the same address while its predecessor
// still serves its drain (both answer until it exits).
package reuseport

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Listen listens on addr over plain TCP (a browser or Prometheus is no
// MPTCP client to convert).
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("setsockopt(SOL_SOCKET, SO_REUSEPORT): %w", serr)
		}
		return nil
	}}
	lc.SetMultipathTCP(false)
	return lc.Listen(ctx, "tcp", addr)
}
