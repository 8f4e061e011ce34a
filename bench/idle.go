package bench

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// IdleConfig describes an idle-session run: open Count connections that
// send nothing and hold them, e.g. to measure a converter's memory per
// session.
type IdleConfig struct {
	Target Target
	// Count is how many connections to open.
	Count int
	// Hold is how long to keep them open once they all have been tried.
	Hold time.Duration
	// Concurrency is the number of connects in flight while opening.
	Concurrency int
	// Timeout bounds one connect (and, through a converter, its reply).
	Timeout time.Duration
	// Opened, when set, is called once every connection has been tried,
	// before the hold starts, with the number open and failed.
	Opened func(open, failed int)
}

// IdleResult is the outcome of an idle run.
type IdleResult struct {
	Mode string `json:"mode"`
	// Connections is how many connections were opened.
	Connections int `json:"connections"`
	Errors      int `json:"errors"`
	// Alive is how many were still open at the end of the hold.
	Alive       int     `json:"alive"`
	OpenSeconds float64 `json:"open_seconds"`
	HoldSeconds float64 `json:"hold_seconds"`
	Route       string  `json:"route"`
	Transport   string  `json:"transport"`
	FirstError  string  `json:"first_error,omitempty"`
	// SynData is set through a converter only: whether the Convert
	// message rode in the SYN.
	SynData *bool `json:"syn_data,omitempty"`
}

// Idle opens cfg.Count connections, holds them for cfg.Hold, checks which
// are still open and closes them all.
func Idle(ctx context.Context, cfg IdleConfig) (IdleResult, error) {
	res := IdleResult{Mode: "idle", Route: cfg.Target.Route(), Transport: cfg.Target.Transport(), SynData: cfg.Target.synData()}
	if cfg.Count < 1 || cfg.Concurrency < 1 || cfg.Hold < 0 || cfg.Timeout <= 0 {
		return res, fmt.Errorf("idle: need count >= 1, concurrency >= 1, hold >= 0 and a timeout (got %d, %d, %v, %v)", cfg.Count, cfg.Concurrency, cfg.Hold, cfg.Timeout)
	}
	dial, err := cfg.Target.dialer()
	if err != nil {
		return res, err
	}
	var (
		mu       sync.Mutex
		conns    = make([]*net.TCPConn, 0, cfg.Count)
		failed   int
		firstErr error
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for range min(cfg.Concurrency, cfg.Count) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(cfg.Count) && ctx.Err() == nil {
				dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
				c, err := dial(dctx, nil)
				cancel()
				mu.Lock()
				if err != nil {
					failed++
					firstErr = cmp.Or(firstErr, err)
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.OpenSeconds = time.Since(start).Seconds()
	res.Connections, res.Errors = len(conns), failed
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if cfg.Opened != nil {
		cfg.Opened(len(conns), failed)
	}
	holdStart := time.Now()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(cfg.Hold):
	}
	res.HoldSeconds = time.Since(holdStart).Seconds()
	for _, c := range conns {
		if alive(c) {
			res.Alive++
		}
	}
	return res, nil
}

// alive reports whether c has neither received an end of stream nor
// failed, without waiting: a peek that would block means alive.
func alive(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	var b [1]byte
	rc.Control(func(fd uintptr) {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = err == unix.EAGAIN || n > 0
	})
	return ok
}
