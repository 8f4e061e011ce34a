package sockinfo

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// Backoff bounds of WaitEstablished: the third ACK usually arrives within
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
	delay := minWaitBackoff
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		t, err := GetTCPInfo(c)
		if err != nil {
			return err
		}
		if done, err := handshakeDone(t.State); done {
			return err
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		delay = min(2*delay, maxWaitBackoff)
	}
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
