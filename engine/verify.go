package engine

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/convert-tc/converter/sockinfo"
)

// unverifiedSynWindow is how long a server-leg connect may run before the
// client has completed its handshake: below the kernel's initial SYN
// retransmission timeout (1 s), so that a client that never proves its
// address (a spoofed SYN) costs the server exactly one SYN. RFC 8803 §9.3:
// do not retransmit the server-leg SYN more than the client retransmits
// its own.
const unverifiedSynWindow = 900 * time.Millisecond

// errUnverified ends a session whose client never completed its
// handshake: its source address was never proven.
var errUnverified = errors.New("unverified: the client never completed its handshake")

// handshakeWatch learns, once, whether the client completed its
// handshake (its third ACK proves the source address).
type handshakeWatch struct {
	done chan struct{}
	err  error // set before done closes
}

// watchHandshake starts watching the client's handshake, bounded by the
// handshake timeout.
func (s *Server) watchHandshake(ctx context.Context, c *net.TCPConn) *handshakeWatch {
	w := &handshakeWatch{done: make(chan struct{})}
	go func() {
		wctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
		defer cancel()
		w.err = sockinfo.WaitEstablished(wctx, c)
		close(w.done)
	}()
	return w
}

// verified reports whether the client completed its handshake, without
// waiting.
func (w *handshakeWatch) verified() bool {
	select {
	case <-w.done:
		return w.err == nil
	default:
		return false
	}
}

// dialVerified runs dial so that the server sees no more SYNs than the
// client has sent: the first attempt goes at once (0-RTT), but if the
// client has not completed its handshake within window the
// attempt is abandoned before the kernel retransmits its SYN; a second
// attempt follows only once the client has completed it (it then sent
// its SYN again, or its third ACK came late). A client that never does
// ends the session with errUnverified.
func dialVerified(ctx context.Context, w *handshakeWatch, window time.Duration, dial func(context.Context) (*net.TCPConn, error)) (*net.TCPConn, error) {
	type result struct {
		c   *net.TCPConn
		err error
	}
	first, abandon := context.WithCancel(ctx)
	defer abandon()
	res := make(chan result, 1)
	go func() {
		c, err := dial(first)
		res <- result{c, err}
	}()
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case r := <-res:
		return r.c, r.err
	case <-w.done:
		if w.err != nil {
			abandon()
			r := <-res
			if r.c != nil {
				r.c.Close()
			}
			return nil, errUnverified
		}
		r := <-res // verified: the attempt runs its course
		return r.c, r.err
	case <-timer.C:
	}
	if w.verified() {
		r := <-res
		return r.c, r.err
	}
	abandon()
	if r := <-res; r.err == nil {
		return r.c, nil // connected in the same instant
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if w.err != nil {
		return nil, errUnverified
	}
	return dial(ctx)
}
