package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// errorPause is how long a connect worker waits after a failed connection,
// so that a refusing server is not hammered in a tight loop.
const errorPause = 10 * time.Millisecond

// ConnectConfig describes a connection-rate run.
type ConnectConfig struct {
	Target Target
	// Duration is how long new connections are started.
	Duration time.Duration
	// Concurrency is the number of connections in flight.
	Concurrency int
	// RequestSize is the size of the request and of the echoed response,
	// MinRequestSize to MaxRequestSize.
	RequestSize int
	// Timeout bounds one connection, from connect to the server's close.
	Timeout time.Duration
}

// Percentiles of the connection latency, in microseconds.
type Percentiles struct {
	P50 uint64 `json:"p50"`
	P90 uint64 `json:"p90"`
	P99 uint64 `json:"p99"`
	Max uint64 `json:"max"`
}

// ConnectResult is the outcome of a connection-rate run.
type ConnectResult struct {
	Mode                 string  `json:"mode"`
	Connections          int64   `json:"connections"`
	ConnectionsPerSecond float64 `json:"connections_per_second"`
	Errors               int64   `json:"errors"`
	// LatencyUS is measured from the start of the connect to the last
	// byte of the response.
	LatencyUS   Percentiles `json:"latency_us"`
	Seconds     float64     `json:"seconds"`
	Route       string      `json:"route"`
	Transport   string      `json:"transport"`
	Concurrency int         `json:"concurrency"`
	RequestSize int         `json:"request_size"`
	// FirstError is the first failure, to tell what the errors were.
	FirstError string `json:"first_error,omitempty"`
	// SynData is set through a converter only: whether the Convert
	// message and the request rode in the SYN.
	SynData *bool `json:"syn_data,omitempty"`
}

// Connect opens short connections from cfg.Concurrency workers for
// cfg.Duration. Each connection writes one request (in the SYN through a
// converter), reads the echo, waits for the server's close and closes.
// Connections still in flight when the duration ends count neither as
// connections nor as errors.
func Connect(ctx context.Context, cfg ConnectConfig) (ConnectResult, error) {
	res := ConnectResult{Mode: "connect", Route: cfg.Target.Route(), Transport: cfg.Target.Transport(), Concurrency: cfg.Concurrency, RequestSize: cfg.RequestSize,
		SynData: cfg.Target.synData()}
	if cfg.Concurrency < 1 || cfg.Duration <= 0 || cfg.Timeout <= 0 {
		return res, fmt.Errorf("connect: need concurrency >= 1, a duration and a timeout (got %d, %v, %v)", cfg.Concurrency, cfg.Duration, cfg.Timeout)
	}
	req, err := newEchoRequest(cfg.RequestSize)
	if err != nil {
		return res, err
	}
	dial, err := cfg.Target.dialer()
	if err != nil {
		return res, err
	}
	start := time.Now()
	end := start.Add(cfg.Duration)
	runCtx, cancel := context.WithDeadline(ctx, end)
	defer cancel()

	workers := make([]connectWorker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		w.dial, w.req, w.timeout, w.end = dial, req, cfg.Timeout, end
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(runCtx)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	var h histogram
	var firstAt time.Time
	for i := range workers {
		w := &workers[i]
		h.merge(&w.hist)
		res.Errors += w.errors
		if w.firstErr != nil && (firstAt.IsZero() || w.firstErrAt.Before(firstAt)) {
			firstAt, res.FirstError = w.firstErrAt, w.firstErr.Error()
		}
	}
	res.Connections = int64(h.n)
	res.ConnectionsPerSecond = float64(h.n) / cfg.Duration.Seconds()
	res.LatencyUS = Percentiles{P50: h.quantile(0.50), P90: h.quantile(0.90), P99: h.quantile(0.99), Max: h.max}
	return res, nil
}

// connectWorker runs connections one after the other; its counters are
// its own until Connect merges them.
type connectWorker struct {
	dial    dialFunc
	req     []byte
	timeout time.Duration
	end     time.Time

	resp       []byte
	hist       histogram
	errors     int64
	firstErr   error
	firstErrAt time.Time
}

func (w *connectWorker) run(ctx context.Context) {
	w.resp = make([]byte, len(w.req)+1)
	for ctx.Err() == nil {
		t0 := time.Now()
		lat, err := w.once(ctx, t0)
		if err == nil {
			w.hist.record(lat)
			continue
		}
		if !time.Now().Before(w.end) || ctx.Err() != nil {
			return // cut by the end of the run
		}
		w.errors++
		if w.firstErr == nil {
			w.firstErr, w.firstErrAt = err, time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(errorPause):
		}
	}
}

// once runs one connection and returns its latency.
func (w *connectWorker) once(ctx context.Context, t0 time.Time) (time.Duration, error) {
	deadline := t0.Add(w.timeout)
	if w.end.Before(deadline) {
		deadline = w.end
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	c, err := w.dial(dctx, w.req)
	cancel()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	resp := w.resp[:len(w.req)]
	if _, err := io.ReadFull(c, resp); err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	lat := time.Since(t0)
	if !bytes.Equal(resp, w.req) {
		return 0, errors.New("the response differs from the request")
	}
	// The server closes first; closing after its FIN keeps TIME_WAIT off
	// this side.
	if n, err := c.Read(w.resp); !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("after the response: want end of stream, got %d bytes, %v", n, err)
	}
	return lat, nil
}
