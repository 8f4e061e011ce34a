// Command minrelay is the benchmark's floor: a minimal relay with the
// converter's socket features and none of its Convert logic, to show what
// the Go runtime and the kernel allow on the converter's path.
//
// It accepts Convert connections (MPTCP allowed, the Convert message and
// the first bytes in the SYN), reads the message only as far as its length
// byte, dials one fixed server, hands it the bytes that followed the
// message, answers with a header-only Convert reply and relays both ways.
// It has no session table, limits, policy or per-connection logging.
//
//	minrelay -listen '[::]:5125' -server 10.201.3.2:7000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

// fastOpenQueue is the listener's TFO queue length, the converter's
// (engine/listener.go).
const fastOpenQueue = 4096

// reply is the smallest Convert success reply: the fixed header alone,
// which `converter bench --via` (package client) accepts.
var reply = []byte{tlv.Version1, 1, tlv.Magic >> 8, tlv.Magic & 0xff}

// Pooled buffers: the handshake's (the largest message and the early
// bytes of a SYN fit) and the MPTCP relay's, the converter's sizes.
var (
	handshakeBufs = sync.Pool{New: func() any { return new([4096]byte) }}
	copyBufs      = sync.Pool{New: func() any { return new([256 << 10]byte) }}
)

func main() {
	listenAddr := flag.String("listen", "[::]:5125", "address to accept Convert connections on")
	server := flag.String("server", "", "the fixed destination, HOST:PORT")
	flag.Parse()
	if *server == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listenAddr, *server); err != nil {
		slog.Error("minrelay", "error", err)
		os.Exit(1)
	}
}

// run relays connections accepted on addr to server until ctx ends.
func run(ctx context.Context, addr, server string) error {
	l, err := listen(ctx, addr)
	if err != nil {
		return err
	}
	return serve(ctx, l, server)
}

// listen opens the listener as the converter does: MPTCP allowed (plain
// TCP clients fall back), TCP Fast Open without cookies so that data in a
// SYN is taken at once; SO_REUSEADDR is Go's default.
func listen(ctx context.Context, addr string) (*net.TCPListener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setsockopts(c, unix.TCP_FASTOPEN, fastOpenQueue, unix.TCP_FASTOPEN_NO_COOKIE, 1)
	}}
	lc.SetMultipathTCP(true)
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if !sockinfo.IsMPTCP(l.(*net.TCPListener)) {
		slog.Warn("the kernel gave a plain TCP listener: MPTCP clients will fall back", "listen", addr)
	}
	return l.(*net.TCPListener), nil
}

// serve accepts on l until ctx ends, then closes l and every connection
// and returns once their goroutines are done.
func serve(ctx context.Context, l *net.TCPListener, server string) error {
	raddr, err := net.ResolveTCPAddr("tcp", server)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			slog.Error("accept", "error", err) // out of fds, say: pause
			time.Sleep(10 * time.Millisecond)
			continue
		}
		wg.Go(func() { handle(ctx, c, raddr) })
	}
}

// handle runs one connection: Convert message in, server leg up with the
// early bytes, reply out, then the relay.
func handle(ctx context.Context, c *net.TCPConn, raddr *net.TCPAddr) {
	defer c.Close()
	// When ctx ends, closing the client leg ends whatever step this is in.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	buf := handshakeBufs.Get().(*[4096]byte)
	// The message's length (byte 1) counts 4-byte words, header included.
	got, msgLen := 0, 0
	for msgLen == 0 || got < msgLen {
		n, err := c.Read(buf[got:])
		got += n
		if msgLen == 0 && got >= tlv.HeaderLen {
			if buf[0] != tlv.Version1 || buf[1] == 0 {
				err = errors.New("not a Convert message")
			}
			msgLen = int(buf[1]) * tlv.WordLen
		}
		if err != nil {
			handshakeBufs.Put(buf)
			return
		}
	}
	s, err := dial(ctx, raddr, buf[msgLen:got])
	handshakeBufs.Put(buf)
	if err != nil {
		return
	}
	defer s.Close()
	// A TFO or MPTCP child can be accepted before the client's third ACK,
	// and an MPTCP one written then can stall: wait, as the converter does.
	if sockinfo.WaitEstablished(ctx, c) != nil {
		return
	}
	if _, err := c.Write(reply); err != nil {
		return
	}
	relay(c, s)
}

// dial opens the server leg as the converter does (engine/dial.go): with
// early bytes, TCP_FASTOPEN_CONNECT lets them ride in the SYN once a
// cookie is known; the connect then completes in the background, so wait
// for it: the reply says the server leg is up.
func dial(ctx context.Context, raddr *net.TCPAddr, early []byte) (*net.TCPConn, error) {
	var d net.Dialer
	if len(early) > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return setsockopts(c, unix.TCP_FASTOPEN_CONNECT, 1)
		}
	}
	d.SetMultipathTCP(false) // the bench's Connect TLV asks for no MPTCP
	conn, err := d.DialContext(ctx, "tcp", raddr.String())
	if err != nil {
		return nil, err
	}
	s := conn.(*net.TCPConn)
	if len(early) > 0 {
		if _, err := s.Write(early); err != nil && !errors.Is(err, unix.EINPROGRESS) {
			s.Close()
			return nil, err
		}
	}
	if err := sockinfo.WaitConnected(ctx, s); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// relay copies both ways until both ends finished: a clean end of one way
// is passed on as a half-close, an error closes both connections.
func relay(c, s *net.TCPConn) {
	// The converter's choice: splice (io.Copy) for a TCP client leg, a
	// plain copy through a large buffer for an MPTCP one, where splice is
	// slower on Linux (engine/copy.go).
	buffered := false
	if mp, err := c.MultipathTCP(); err == nil && mp {
		buffered = true
	}
	var abort sync.Once
	pipe := func(dst, src *net.TCPConn) {
		var err error
		if buffered {
			b := copyBufs.Get().(*[256 << 10]byte)
			// The wrappers hide ReadFrom and WriteTo, and so splice.
			_, err = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, b[:])
			copyBufs.Put(b)
		} else {
			_, err = io.Copy(dst, src)
		}
		if err != nil {
			abort.Do(func() { c.Close(); s.Close() })
			return
		}
		dst.CloseWrite()
	}
	var wg sync.WaitGroup
	wg.Go(func() { pipe(s, c) })
	pipe(c, s)
	wg.Wait()
}

// setsockopts sets IPPROTO_TCP options given as option, value pairs.
func setsockopts(c syscall.RawConn, optvals ...int) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		for i := 0; i < len(optvals) && err == nil; i += 2 {
			err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, optvals[i], optvals[i+1])
		}
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("setsockopt: %w", err)
	}
	return nil
}
