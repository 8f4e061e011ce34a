package engine

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
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

// handshakeWatch learns whether the client completed its handshake (its
// third ACK proves the source address). It has no goroutine: it looks at
// the socket when asked, and remembers the answer once there is one.
type handshakeWatch struct {
	// check looks once, without waiting: still running (false, nil),
	// completed (true, nil) or failed (true, an error).
	check    func() (bool, error)
	deadline time.Time // the handshake timeout

	mu    sync.Mutex
	known bool
	err   error
}

// watchHandshake watches c's handshake, bounded by the handshake timeout.
func (s *Server) watchHandshake(c *net.TCPConn) *handshakeWatch {
	return &handshakeWatch{
		check:    func() (bool, error) { return sockinfo.Established(c) },
		deadline: time.Now().Add(s.cfg.HandshakeTimeout),
	}
}

// result looks at the handshake unless its outcome is known: known is
// false while it runs.
func (w *handshakeWatch) result() (known bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.known {
		if done, err := w.check(); done {
			w.known, w.err = true, err
		} else if !time.Now().Before(w.deadline) {
			w.known, w.err = true, context.DeadlineExceeded
		}
	}
	return w.known, w.err
}

// verified reports whether the client completed its handshake, without
// waiting.
func (w *handshakeWatch) verified() bool {
	known, err := w.result()
	return known && err == nil
}

// wait returns the handshake's outcome once known: nil, its error, or
// context.DeadlineExceeded at the handshake timeout; ctx.Err() if ctx
// ends first. A passive socket gives no wake-up at its handshake's end
// (a Fast Open child is writable in SYN_RECV), so this polls.
func (w *handshakeWatch) wait(ctx context.Context) error {
	return sockinfo.Poll(ctx, w.result)
}

// dialVerified runs dial so that the server sees no more SYNs than the
// client has sent: the first attempt goes at once (0-RTT), but if the
// client has not completed its handshake within window the attempt is
// abandoned before the kernel retransmits its SYN; a second attempt
// follows only once the client has completed it (it then sent its SYN
// again, or its third ACK came late). A client that never does ends the
// session with errUnverified. The attempts run in the caller's goroutine.
func dialVerified(ctx context.Context, w *handshakeWatch, window time.Duration, dial func(context.Context) (*net.TCPConn, error)) (*net.TCPConn, error) {
	first, abandon := context.WithCancel(ctx)
	defer abandon()
	var abandoned atomic.Bool
	timer := time.AfterFunc(window, func() {
		if !w.verified() {
			abandoned.Store(true)
			abandon()
		}
	})
	c, err := dial(first)
	timer.Stop()
	if !abandoned.Load() || err == nil { // done in time, or connected in the same instant
		return c, err
	}
	if werr := w.wait(ctx); werr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errUnverified
	}
	return dial(ctx)
}
