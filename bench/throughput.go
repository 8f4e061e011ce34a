package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/convert-tc/converter/sockinfo"
)

// writeLen is the size of each write of a throughput stream: large writes
// keep the generator's syscall cost far below the path's.
const writeLen = 1 << 20

// earlyLen is how many of a stream's first bytes go with the connection
// request (in the SYN through a converter).
const earlyLen = 1024

// ThroughputConfig describes a throughput run.
type ThroughputConfig struct {
	Target Target
	// Streams is the number of parallel connections.
	Streams int
	// Bytes is what each stream sends, at least 1.
	Bytes int64
	// Timeout bounds each wait of a stream: the connect, one write, the
	// sink's answer.
	Timeout time.Duration
}

// ThroughputResult is the outcome of a throughput run; Bytes, Seconds and
// BitsPerSecond count every stream together.
type ThroughputResult struct {
	Mode          string  `json:"mode"`
	Bytes         int64   `json:"bytes"`
	Seconds       float64 `json:"seconds"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Route         string  `json:"route"`
	Transport     string  `json:"transport"`
	Streams       int     `json:"streams"`
	// MPTCP is true when every stream's first leg still used MPTCP at
	// the end of its transfer (false for TCP, or after a fallback).
	MPTCP bool `json:"mptcp"`
	// Subflows is the fewest subflows any stream had at the end of its
	// transfer; set only for MPTCP runs (0 after a fallback).
	Subflows *int `json:"subflows,omitempty"`
}

// Throughput runs cfg.Streams parallel streams, each sending cfg.Bytes to
// the sink, and times them from the first connect to the last byte
// acknowledged by the sink's count. Any stream's failure fails the run.
func Throughput(ctx context.Context, cfg ThroughputConfig) (ThroughputResult, error) {
	res := ThroughputResult{Mode: "throughput", Route: cfg.Target.Route(), Transport: cfg.Target.Transport(), Streams: cfg.Streams}
	if cfg.Streams < 1 || cfg.Bytes < 1 || cfg.Timeout <= 0 {
		return res, fmt.Errorf("throughput: need streams >= 1, bytes >= 1 and a timeout (got %d, %d, %v)", cfg.Streams, cfg.Bytes, cfg.Timeout)
	}
	dial, err := cfg.Target.dialer()
	if err != nil {
		return res, err
	}
	// One buffer serves every stream: it is only read.
	buf := make([]byte, min(cfg.Bytes, writeLen))
	buf[0] = opSink

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		stats   = make([]streamStats, cfg.Streams)
		lastEnd time.Time
	)
	start := time.Now()
	for i := range cfg.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := sendStream(ctx, dial, buf, cfg)
			if err != nil {
				cancel(fmt.Errorf("stream %d: %w", i+1, err))
				return
			}
			mu.Lock()
			stats[i] = st
			if st.end.After(lastEnd) {
				lastEnd = st.end
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return res, err
	}
	res.Bytes = cfg.Bytes * int64(cfg.Streams)
	res.Seconds = lastEnd.Sub(start).Seconds()
	if res.Seconds > 0 {
		res.BitsPerSecond = float64(res.Bytes) * 8 / res.Seconds
	}
	res.MPTCP = cfg.Target.MPTCP
	if cfg.Target.MPTCP {
		fewest := stats[0].subflows
		for _, st := range stats {
			res.MPTCP = res.MPTCP && st.mptcp
			fewest = min(fewest, st.subflows)
		}
		res.Subflows = &fewest
	}
	return res, nil
}

// streamStats is what one stream learnt.
type streamStats struct {
	end      time.Time // when the sink's count arrived
	mptcp    bool
	subflows int
}

// sendStream opens one connection, sends cfg.Bytes from buf (over and
// over), half-closes and checks the sink's count.
func sendStream(ctx context.Context, dial dialFunc, buf []byte, cfg ThroughputConfig) (streamStats, error) {
	var st streamStats
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	first := min(cfg.Bytes, earlyLen)
	c, err := dial(dctx, buf[:first])
	cancel()
	if err != nil {
		return st, err
	}
	defer c.Close()
	// Closing the socket is what interrupts a blocked write at once.
	defer context.AfterFunc(ctx, func() { c.Close() })()

	for left := cfg.Bytes - first; left > 0; {
		n := min(left, int64(len(buf)))
		c.SetWriteDeadline(time.Now().Add(cfg.Timeout))
		if _, err := c.Write(buf[:n]); err != nil {
			return st, fmt.Errorf("send: %w", err)
		}
		left -= n
	}
	st.mptcp, st.subflows = subflows(c)
	if err := c.CloseWrite(); err != nil {
		return st, fmt.Errorf("half-close: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(cfg.Timeout))
	var ans [countLen + 1]byte
	if _, err := io.ReadFull(c, ans[:countLen]); err != nil {
		return st, fmt.Errorf("read the sink's count: %w", err)
	}
	st.end = time.Now()
	if got := count(ans[:countLen]); got != uint64(cfg.Bytes) {
		return st, fmt.Errorf("the sink counted %d bytes, %d were sent", got, cfg.Bytes)
	}
	// The sink closes first: wait for its end of stream before closing.
	if _, err := c.Read(ans[:]); !errors.Is(err, io.EOF) {
		return st, fmt.Errorf("after the sink's count: want end of stream, got %v", err)
	}
	return st, nil
}

// subflows reports whether c is (still) an MPTCP connection and its number
// of subflows.
func subflows(c *net.TCPConn) (bool, int) {
	if ok, err := c.MultipathTCP(); err != nil || !ok {
		return false, 0
	}
	info, err := sockinfo.GetMPTCPInfo(c)
	if err != nil {
		return false, 0
	}
	return true, info.TotalSubflows()
}
