package bench

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"time"
)

// readBufLen is the read size of the sink and of a downloading client:
// large reads keep the per-byte cost low, which matters most for MPTCP
// sockets.
const readBufLen = 1 << 20

var readBufs = sync.Pool{New: func() any { return new([readBufLen]byte) }}

// Listen opens the bench server's listener on addr (HOST:PORT): Multipath
// TCP, so that it accepts MPTCP and plain TCP clients alike. The socket
// belongs to the network namespace of the calling thread.
func Listen(ctx context.Context, addr string) (*net.TCPListener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return l.(*net.TCPListener), nil
}

// Serve runs the bench server on l until ctx ends; then it closes l and
// every connection and returns nil once their goroutines are gone. See the
// package documentation for what a connection may ask.
func Serve(ctx context.Context, l net.Listener) error {
	var (
		wg    sync.WaitGroup
		conns = connSet{m: make(map[net.Conn]struct{})}
	)
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		conns.closeAll()
	})
	defer func() {
		stop()
		l.Close()
		conns.closeAll()
		wg.Wait()
	}()
	// What the source writes; only read, so every connection shares it.
	src := make([]byte, writeLen)
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors or memory: let connections end.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		if !conns.add(c) {
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conns.remove(c)
			serveConn(c, src)
		}()
	}
}

// serveConn answers one connection and closes it; src is what the source
// writes.
func serveConn(c net.Conn, src []byte) {
	defer c.Close()
	var op [echoHeaderLen]byte
	if _, err := io.ReadFull(c, op[:1]); err != nil {
		return
	}
	switch op[0] {
	case opSink:
		sink(c)
	case opSource:
		source(c, src)
	case opBoth:
		sinkAndSource(c, src)
	case opEcho:
		echo(c, op)
	}
}

// sink counts bytes up to the client's half-close and answers the count.
func sink(c net.Conn) {
	n, err := drain(c)
	if err != nil {
		return
	}
	answerCount(c, n+1) // the operation byte counts
}

// source writes the number of bytes the client asked for, half-closes and
// waits for the client's end of stream, so that its close resets nothing.
func source(c net.Conn, src []byte) {
	n, ok := readRequestCount(c)
	if !ok || writeN(c, src, n, 0) != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		return
	}
	drain(c)
}

// sinkAndSource writes the number of bytes the client asked for while it
// counts the client's bytes, then answers the count.
func sinkAndSource(c net.Conn, src []byte) {
	n, ok := readRequestCount(c)
	if !ok {
		return
	}
	type result struct {
		n   uint64
		err error
	}
	got := make(chan result, 1)
	go func() {
		k, err := drain(c)
		got <- result{k, err}
	}()
	if err := writeN(c, src, n, 0); err != nil {
		c.Close() // ends the drain
		<-got
		return
	}
	if r := <-got; r.err == nil {
		answerCount(c, r.n)
	}
}

// readRequestCount reads the count that follows 'S' and 'B'.
func readRequestCount(c net.Conn) (int64, bool) {
	var b [countLen]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, false
	}
	n := count(b[:])
	return int64(n), n <= math.MaxInt64
}

// drain reads and counts bytes up to the end of stream.
func drain(c net.Conn) (uint64, error) {
	buf := readBufs.Get().(*[readBufLen]byte)
	defer readBufs.Put(buf)
	var n uint64
	for {
		k, err := c.Read(buf[:])
		n += uint64(k)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func answerCount(c net.Conn, n uint64) {
	var b [countLen]byte
	putCount(b[:], n)
	c.Write(b[:])
}

// echo reads one request whose header starts in hdr and writes it back.
func echo(c net.Conn, hdr [echoHeaderLen]byte) {
	if _, err := io.ReadFull(c, hdr[1:]); err != nil {
		return
	}
	size := int(uint24(hdr[1:]))
	if size < MinRequestSize || size > MaxRequestSize {
		return
	}
	req := make([]byte, size)
	copy(req, hdr[:])
	if _, err := io.ReadFull(c, req[echoHeaderLen:]); err != nil {
		return
	}
	c.Write(req)
}

// connSet tracks open connections so that Serve can close them.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// add records c; false means the set is closed and c must be dropped.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
}
