package bench

import (
	"cmp"
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

// Direction says which way the bytes of a throughput run go.
type Direction string

// The directions of a throughput run.
const (
	// Up sends from the client to the server's sink.
	Up Direction = "up"
	// Down sends from the server's source to the client.
	Down Direction = "down"
	// Both sends both ways at once on each stream.
	Both Direction = "both"
)

// ParseDirection parses "up", "down" or "both".
func ParseDirection(s string) (Direction, error) {
	switch d := Direction(s); d {
	case Up, Down, Both:
		return d, nil
	}
	return "", fmt.Errorf("direction %q: want up, down or both", s)
}

func (d Direction) up() bool   { return d == Up || d == Both }
func (d Direction) down() bool { return d == Down || d == Both }

// ThroughputConfig describes a throughput run.
type ThroughputConfig struct {
	Target Target
	// Direction is which way the bytes go; empty means Up.
	Direction Direction
	// Streams is the number of parallel connections.
	Streams int
	// Bytes is what each stream sends in each direction, at least 1.
	Bytes int64
	// Timeout bounds each wait of a stream: the connect, one write, one
	// read, the sink's answer.
	Timeout time.Duration
}

// ThroughputResult is the outcome of a throughput run; Bytes, Seconds and
// BitsPerSecond count every stream and every direction together, from the
// first connect to the last byte confirmed either way.
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
	// Direction is up, down or both.
	Direction Direction `json:"direction"`
	// Up and Down time each direction on its own; nil for a direction
	// that did not run.
	Up   *Transfer `json:"up,omitempty"`
	Down *Transfer `json:"down,omitempty"`
	// SynData is set through a converter only: whether the Convert
	// message and the first bytes rode in the SYN.
	SynData *bool `json:"syn_data,omitempty"`
}

// Transfer is what went one way: every stream's bytes, from the first
// connect to the last byte confirmed that way (up: the sink's count of the
// last stream; down: the last stream's last byte, or its end of stream).
// In both directions at once the sink's count follows the server's own
// bytes, so the up time is never shorter than the down time.
type Transfer struct {
	Bytes         int64   `json:"bytes"`
	Seconds       float64 `json:"seconds"`
	BitsPerSecond float64 `json:"bits_per_second"`
}

func newTransfer(bytes int64, d time.Duration) *Transfer {
	t := &Transfer{Bytes: bytes, Seconds: d.Seconds()}
	if t.Seconds > 0 {
		t.BitsPerSecond = float64(bytes) * 8 / t.Seconds
	}
	return t
}

// Throughput runs cfg.Streams parallel streams, each moving cfg.Bytes in
// cfg.Direction, and times each direction from the first connect to the
// last byte confirmed that way. Any stream's failure fails the run.
func Throughput(ctx context.Context, cfg ThroughputConfig) (ThroughputResult, error) {
	dir := cmp.Or(cfg.Direction, Up)
	res := ThroughputResult{Mode: "throughput", Route: cfg.Target.Route(), Transport: cfg.Target.Transport(), Streams: cfg.Streams,
		Direction: dir, SynData: cfg.Target.synData()}
	if cfg.Streams < 1 || cfg.Bytes < 1 || cfg.Timeout <= 0 {
		return res, fmt.Errorf("throughput: need streams >= 1, bytes >= 1 and a timeout (got %d, %d, %v)", cfg.Streams, cfg.Bytes, cfg.Timeout)
	}
	if _, err := ParseDirection(string(dir)); err != nil {
		return res, fmt.Errorf("throughput: %w", err)
	}
	dial, err := cfg.Target.dialer()
	if err != nil {
		return res, err
	}
	s := &stream{dial: dial, dir: dir, bytes: cfg.Bytes, timeout: cfg.Timeout}
	// One buffer serves every stream: it is only read.
	s.buf = make([]byte, min(cfg.Bytes, writeLen))
	s.buf[0] = opSink

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg    sync.WaitGroup
		stats = make([]streamStats, cfg.Streams)
	)
	start := time.Now()
	for i := range cfg.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := s.run(ctx)
			if err != nil {
				cancel(fmt.Errorf("stream %d: %w", i+1, err))
				return
			}
			stats[i] = st // each goroutine writes its own element
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return res, err
	}
	res.summarize(cfg, start, stats)
	return res, nil
}

// summarize fills res from the streams' stats.
func (res *ThroughputResult) summarize(cfg ThroughputConfig, start time.Time, stats []streamStats) {
	var upEnd, downEnd time.Time
	for _, st := range stats {
		upEnd, downEnd = later(upEnd, st.upEnd), later(downEnd, st.downEnd)
	}
	perDir := cfg.Bytes * int64(cfg.Streams)
	if res.Direction.up() {
		res.Up = newTransfer(perDir, upEnd.Sub(start))
		res.Bytes += perDir
	}
	if res.Direction.down() {
		res.Down = newTransfer(perDir, downEnd.Sub(start))
		res.Bytes += perDir
	}
	total := newTransfer(res.Bytes, later(upEnd, downEnd).Sub(start))
	res.Seconds, res.BitsPerSecond = total.Seconds, total.BitsPerSecond

	res.MPTCP = cfg.Target.MPTCP
	if cfg.Target.MPTCP {
		fewest := stats[0].subflows
		for _, st := range stats {
			res.MPTCP = res.MPTCP && st.mptcp
			fewest = min(fewest, st.subflows)
		}
		res.Subflows = &fewest
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// streamStats is what one stream learnt.
type streamStats struct {
	upEnd    time.Time // when the sink's count arrived
	downEnd  time.Time // when the server's last byte (down: its end of stream) arrived
	mptcp    bool
	subflows int
}

// stream is what every stream of a run shares; it is only read.
type stream struct {
	dial    dialFunc
	dir     Direction
	bytes   int64
	timeout time.Duration
	buf     []byte // what streams send; it starts with the sink's op byte
}

// run opens one connection and moves s.bytes in s.dir over it.
func (s *stream) run(ctx context.Context) (streamStats, error) {
	early, sent := s.early()
	dctx, cancel := context.WithTimeout(ctx, s.timeout)
	c, err := s.dial(dctx, early)
	cancel()
	if err != nil {
		return streamStats{}, err
	}
	defer c.Close()
	// Closing the socket is what interrupts a blocked write or read at once.
	defer context.AfterFunc(ctx, func() { c.Close() })()
	switch s.dir {
	case Down:
		return s.download(c)
	case Both:
		return s.both(c, sent)
	default:
		return s.upload(c, sent)
	}
}

// early returns a stream's first bytes, which go with the connection
// request, and how many of them are upload payload.
func (s *stream) early() ([]byte, int64) {
	switch s.dir {
	case Down:
		return newCountHeader(opSource, uint64(s.bytes)), 0
	case Both:
		n := min(s.bytes, earlyLen-countHeaderLen)
		return append(newCountHeader(opBoth, uint64(s.bytes)), s.buf[:n]...), n
	default:
		n := min(s.bytes, earlyLen)
		return s.buf[:n], n
	}
}

// upload sends the rest of the stream's bytes and checks the sink's count.
func (s *stream) upload(c *net.TCPConn, sent int64) (streamStats, error) {
	var st streamStats
	up := s.send(c, sent)
	if up.err != nil {
		return st, up.err
	}
	st.mptcp, st.subflows = up.mptcp, up.subflows
	if err := s.checkCount(c, &st); err != nil {
		return st, err
	}
	return st, s.waitEOF(c, "the sink's count")
}

// download reads the server's bytes up to its end of stream.
func (s *stream) download(c *net.TCPConn) (streamStats, error) {
	var st streamStats
	if err := s.receive(c); err != nil {
		return st, err
	}
	// Before the end of stream, while the connection is surely whole.
	st.mptcp, st.subflows = subflows(c)
	if err := s.waitEOF(c, fmt.Sprintf("%d bytes from the server", s.bytes)); err != nil {
		return st, err
	}
	st.downEnd = time.Now()
	return st, nil
}

// both sends and receives at once, then checks the server's count of what
// it received.
func (s *stream) both(c *net.TCPConn, sent int64) (streamStats, error) {
	var st streamStats
	ups := make(chan sendResult, 1)
	go func() { ups <- s.send(c, sent) }()
	err := s.receive(c)
	st.downEnd = time.Now()
	if err != nil {
		c.Close() // ends the send
		<-ups
		return st, err
	}
	up := <-ups
	if up.err != nil {
		return st, up.err
	}
	st.mptcp, st.subflows = up.mptcp, up.subflows
	if err := s.checkCount(c, &st); err != nil {
		return st, err
	}
	return st, s.waitEOF(c, "the server's count")
}

// sendResult is what send learnt.
type sendResult struct {
	mptcp    bool
	subflows int
	err      error
}

// send writes the stream's bytes past the first sent ones from s.buf (over
// and over) and half-closes.
func (s *stream) send(c *net.TCPConn, sent int64) sendResult {
	if err := writeN(c, s.buf, s.bytes-sent, s.timeout); err != nil {
		return sendResult{err: fmt.Errorf("send: %w", err)}
	}
	// Before the half-close: the server closes soon after it.
	r := sendResult{}
	r.mptcp, r.subflows = subflows(c)
	if err := c.CloseWrite(); err != nil {
		r.err = fmt.Errorf("half-close: %w", err)
	}
	return r
}

// receive reads exactly s.bytes from the server.
func (s *stream) receive(c *net.TCPConn) error {
	buf := readBufs.Get().(*[readBufLen]byte)
	defer readBufs.Put(buf)
	var got int64
	for got < s.bytes {
		c.SetReadDeadline(time.Now().Add(s.timeout))
		n, err := c.Read(buf[:min(s.bytes-got, readBufLen)])
		got += int64(n)
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the server sent %d bytes, %d were asked for", got, s.bytes)
		}
		if err != nil {
			return fmt.Errorf("receive after %d bytes: %w", got, err)
		}
	}
	return nil
}

// checkCount reads the server's count of the bytes it received, records
// when it came and checks it.
func (s *stream) checkCount(c *net.TCPConn, st *streamStats) error {
	c.SetReadDeadline(time.Now().Add(s.timeout))
	var b [countLen]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read the sink's count: %w", err)
	}
	st.upEnd = time.Now()
	if got := count(b[:]); got != uint64(s.bytes) {
		return fmt.Errorf("the sink counted %d bytes, %d were sent", got, s.bytes)
	}
	return nil
}

// waitEOF waits for the server's end of stream after what: the server
// closes first, so that TIME_WAIT stays on its side.
func (s *stream) waitEOF(c *net.TCPConn, what string) error {
	c.SetReadDeadline(time.Now().Add(s.timeout))
	var b [1]byte
	n, err := c.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("after %s: more bytes, want end of stream", what)
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("after %s: want end of stream: %w", what, err)
	}
	return nil
}

// writeN writes n bytes from buf, over and over; a positive timeout bounds
// each write.
func writeN(c net.Conn, buf []byte, n int64, timeout time.Duration) error {
	for n > 0 {
		k := min(n, int64(len(buf)))
		if timeout > 0 {
			c.SetWriteDeadline(time.Now().Add(timeout))
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
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
