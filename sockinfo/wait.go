package sockinfo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// Backoff bounds of Poll: the third ACK usually arrives within
// an RTT, so start fast, but do not spin on a slow or lossy path.
const (
	minWaitBackoff = 50 * time.Microsecond
	maxWaitBackoff = 5 * time.Millisecond
)

// WaitEstablished polls TCP_INFO until c has completed its handshake.
//
// accept can return a socket still in SYN_RECV (an MPTCP or TCP Fast Open
// child before the client's third ACK), and writing to an MPTCP one then
// can stall forever; call this before the first write. It returns nil in ESTABLISHED and in CLOSE_WAIT
// (the peer already sent data and FIN, which it can only do once
// established), an error matching ErrConnClosed in any closing or closed
// state, and ctx.Err() when ctx is done first.
func WaitEstablished(ctx context.Context, c syscall.Conn) error {
	return Poll(ctx, func() (bool, error) { return Established(c) })
}

// Poll calls check until it says done, from minWaitBackoff apart up to
// maxWaitBackoff, and returns its error; ctx.Err() if ctx ends first. For
// states that give no wake-up, such as a passive socket's handshake.
func Poll(ctx context.Context, check func() (done bool, err error)) error {
	delay := minWaitBackoff
	var timer *time.Timer
	for {
		if done, err := check(); done {
			if timer != nil {
				timer.Stop()
			}
			return err
		}
		if timer == nil {
			timer = time.NewTimer(delay)
		} else {
			timer.Reset(delay)
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		delay = min(2*delay, maxWaitBackoff)
	}
}

// Established looks once at c's handshake: still running (false, nil),
// completed (true, nil), or the connection is dead (true, an error).
func Established(c syscall.Conn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return true, err
	}
	var done bool
	var serr error
	if err := rc.Control(func(fd uintptr) { done, serr = establishedFD(int(fd)) }); err != nil {
		return true, err
	}
	return done, serr
}

// WaitConnected waits for c's active open to complete without polling:
// an established socket wakes its writers (the SYN+ACK's state change),
// so the wait is one netpoller round. It is for active plain TCP opens,
// such as a connect whose data rode in the SYN (TCP_FASTOPEN_CONNECT),
// which return before the handshake ends; passive and MPTCP sockets need
// WaitEstablished (a passive Fast Open child is writable in SYN_RECV).
func WaitConnected(ctx context.Context, c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	d, _ := ctx.Deadline() // zero: none, and no earlier wait's either
	c.SetWriteDeadline(d)
	// A cancel sets a past deadline; once it may have run, the socket's
	// deadline is not ours to restore: the caller gets ctx's error and
	// closes the socket.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.SetWriteDeadline(aLongTimeAgo)
		close(fired)
	})
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		var done bool
		done, serr = establishedFD(int(fd))
		return done
	})
	if !stop() {
		// The cancel runs in a goroutine of its own: let it finish here,
		// or it could set its deadline during the caller's next wait.
		<-fired
		return ctx.Err()
	}
	if werr != nil && errors.Is(werr, os.ErrDeadlineExceeded) && !d.IsZero() && !time.Now().Before(d) {
		return context.DeadlineExceeded // the socket's deadline, ctx's: ctx's error
	}
	c.SetWriteDeadline(time.Time{})
	if werr != nil {
		return werr
	}
	return serr
}

// aLongTimeAgo is a deadline in the past: it wakes a blocked wait at once.
var aLongTimeAgo = time.Unix(1, 0)

// establishedFD reads the state alone (the head of struct tcp_info).
func establishedFD(fd int) (bool, error) {
	h, err := readTCPHead(fd)
	if err != nil {
		return true, err
	}
	return handshakeDone(h.State)
}

// handshakeDone classifies a TCP state for WaitEstablished: still
// handshaking (false), writable (true, nil) or dead (true, error).
func handshakeDone(state uint8) (bool, error) {
	switch state {
	case StateSynSent, StateSynRecv, StateNewSynRecv:
		return false, nil
	case StateEstablished, StateCloseWait:
		return true, nil
	}
	return true, fmt.Errorf("sockinfo: socket is %s: %w", StateName(state), ErrConnClosed)
}
