package engine

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fakeDial counts attempts; an attempt waits for ctx unless connect is
// closed first, which makes it succeed.
type fakeDial struct {
	attempts atomic.Int32
	connect  chan struct{}
}

func (f *fakeDial) dial(ctx context.Context) (*net.TCPConn, error) {
	f.attempts.Add(1)
	select {
	case <-f.connect:
		return &net.TCPConn{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// watchAfter is a handshake that ends after d with err.
func watchAfter(d time.Duration, err error) *handshakeWatch {
	at := time.Now().Add(d)
	return &handshakeWatch{
		check: func() (bool, error) {
			if time.Now().Before(at) {
				return false, nil
			}
			return true, err
		},
		deadline: time.Now().Add(time.Hour),
	}
}

const testWindow = 50 * time.Millisecond

func TestDialVerifiedSpoofedClient(t *testing.T) {
	f := &fakeDial{connect: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := dialVerified(ctx, watchAfter(200*time.Millisecond, context.DeadlineExceeded), testWindow, f.dial)
	if !errors.Is(err, errUnverified) {
		t.Fatalf("err %v, want errUnverified", err)
	}
	if n := f.attempts.Load(); n != 1 {
		t.Errorf("%d attempts for a client that never completed its handshake, want 1 (one SYN)", n)
	}
}

func TestDialVerifiedLateClient(t *testing.T) {
	f := &fakeDial{connect: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	w := watchAfter(2*testWindow, nil)
	time.AfterFunc(2*testWindow+10*time.Millisecond, func() { close(f.connect) })
	c, err := dialVerified(ctx, w, testWindow, f.dial)
	if err != nil || c == nil {
		t.Fatalf("late but verified client: %v", err)
	}
	if n := f.attempts.Load(); n != 2 {
		t.Errorf("%d attempts, want 2: the first abandoned before its retransmission, one after the client proved itself", n)
	}
}

func TestDialVerifiedSlowServer(t *testing.T) {
	f := &fakeDial{connect: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	time.AfterFunc(3*testWindow, func() { close(f.connect) }) // the server answers late
	c, err := dialVerified(ctx, watchAfter(testWindow/5, nil), testWindow, f.dial)
	if err != nil || c == nil {
		t.Fatalf("verified client, slow server: %v", err)
	}
	if n := f.attempts.Load(); n != 1 {
		t.Errorf("%d attempts, want 1: a verified client's connect runs its course", n)
	}
}

func TestDialVerifiedZeroRTT(t *testing.T) {
	f := &fakeDial{connect: make(chan struct{})}
	close(f.connect) // the server answers before the client's third ACK
	c, err := dialVerified(context.Background(), watchAfter(time.Hour, nil), testWindow, f.dial)
	if err != nil || c == nil || f.attempts.Load() != 1 {
		t.Fatalf("0-RTT connect: %v, %d attempts", err, f.attempts.Load())
	}
}

// A handshake that never ends is a timeout at the watch's deadline.
func TestHandshakeWatchDeadline(t *testing.T) {
	w := &handshakeWatch{check: func() (bool, error) { return false, nil }, deadline: time.Now().Add(30 * time.Millisecond)}
	if w.verified() {
		t.Fatal("verified before the handshake ended")
	}
	if err := w.wait(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait: %v, want the deadline", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w2 := &handshakeWatch{check: func() (bool, error) { return false, nil }, deadline: time.Now().Add(time.Hour)}
	if err := w2.wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with a canceled context: %v", err)
	}
}
