package netns

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/sockinfo"
)

const bigTransfer = 64 << 20

// TestBytesIntactBothWays pushes 64 MiB each way at the same time through
// the converter over an MPTCP client leg with two subflows, and checks the
// SHA-256 of each direction and that both subflows carried data.
//
// The client sends its Convert message in the SYN, as real clients do:
// that path once stalled for seconds on the kernel's inflated window
// (README, known kernel issues) until the converter clamped SYN windows.
func TestBytesIntactBothWays(t *testing.T) {
	e := newEnv(t)
	e.startConverter()
	l := e.listen(e.serverNS(), "10.201.3.2:8000", false)
	srv := serveExchange(l, 2, bigTransfer)

	before := e.clientNetstat(t)
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	waitSubflows(t, c.TCPConn, 2) // the join follows the converter's reply
	sampler := sampleSubflows(c.TCPConn)
	got := exchange(c.TCPConn, 1, bigTransfer)
	s := <-srv
	if got.err != nil || s.err != nil {
		t.Fatalf("exchange: client %v, server %v", got.err, s.err)
	}
	if s.got != bigTransfer || s.gotDigest != streamDigest(1, bigTransfer) {
		t.Errorf("server received %d bytes, digest mismatch=%v", s.got, s.gotDigest != streamDigest(1, bigTransfer))
	}
	if got.got != bigTransfer || got.gotDigest != streamDigest(2, bigTransfer) {
		t.Errorf("client received %d bytes, digest mismatch=%v", got.got, got.gotDigest != streamDigest(2, bigTransfer))
	}
	checkTwoSubflowsMoved(t, sampler(), 16<<10)
	// A few out-of-window drops happen under bulk traffic both ways at
	// once with or without SYN data (README, known kernel issues): they
	// are logged, not failed; the download test holds the line at 0.
	after := e.clientNetstat(t)
	t.Logf("client MPTcpExtNoDSSInWindow delta %d", after["MPTcpExtNoDSSInWindow"]-before["MPTcpExtNoDSSInWindow"])
}

// sampleSubflows reads the client's subflows from the kernel every few
// milliseconds while the connection lives (the converter closes it at the
// end, and closed subflows leave the list) and returns a function that
// stops sampling and gives the last reading of each subflow.
func sampleSubflows(c *net.TCPConn) func() []sockinfo.Subflow {
	stop, done := make(chan struct{}), make(chan []sockinfo.Subflow)
	go func() {
		last := map[netip.AddrPort]sockinfo.Subflow{}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if sfs, err := sockinfo.GetSubflows(c); err == nil {
				for _, sf := range sfs {
					if sf.Remote.Port() == 0 {
						continue // a subflow being torn down
					}
					if sf.TCP.BytesAcked+sf.TCP.BytesReceived >= last[sf.Local].TCP.BytesAcked+last[sf.Local].TCP.BytesReceived {
						last[sf.Local] = sf
					}
				}
			}
			select {
			case <-stop:
				var out []sockinfo.Subflow
				for _, sf := range last {
					out = append(out, sf)
				}
				done <- out
				return
			case <-tick.C:
			}
		}
	}()
	return func() []sockinfo.Subflow {
		close(stop)
		return <-done
	}
}

// checkTwoSubflowsMoved checks subflow readings from the kernel: the
// connection had two, on two paths, and each moved at least least bytes.
func checkTwoSubflowsMoved(t *testing.T, sfs []sockinfo.Subflow, least uint64) {
	t.Helper()
	if len(sfs) < 2 {
		t.Fatalf("%d subflow(s), want 2: %+v", len(sfs), sfs)
	}
	paths := map[netip.Addr]bool{}
	for _, sf := range sfs {
		moved := sf.TCP.BytesAcked + sf.TCP.BytesReceived
		t.Logf("subflow %v -> %v: %d bytes acked, %d received", sf.Local, sf.Remote, sf.TCP.BytesAcked, sf.TCP.BytesReceived)
		if moved < least {
			t.Errorf("subflow %v -> %v moved only %d bytes", sf.Local, sf.Remote, moved)
		}
		paths[sf.Local.Addr()] = true
	}
	if len(paths) < 2 {
		t.Errorf("subflows share one local address: %v", paths)
	}
}

// echo serves every connection on l by sending back what it reads.
func echo(l *net.TCPListener) {
	serveEach(l, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
}

// serveEach accepts every connection on l until it closes and runs fn on
// each in a goroutine of its own, closing the connection after.
func serveEach(l *net.TCPListener, fn func(*net.TCPConn)) {
	go func() {
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
}

// TestConcurrentSessions runs 32 sessions at once, each echoing 2 MiB.
func TestConcurrentSessions(t *testing.T) {
	e := newEnv(t)
	conv := e.startConverter()
	echo(e.listen(e.serverNS(), "[fd01:3::2]:8001", false))
	const sessions, size = 32, 2 << 20
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- echoSession(e, e.via6(), netip.MustParseAddrPort("[fd01:3::2]:8001"), uint64(100+i), size, true)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if ends := conv.waitRecords(t, "session end", sessions); len(ends) != sessions {
		t.Errorf("%d session end records, want %d", len(ends), sessions)
	}
}

// echoSession sends size bytes through the converter to an echo server and
// checks that exactly the same bytes come back.
func echoSession(e *env, via, dest netip.AddrPort, seed uint64, size int64, mptcp bool) error {
	if err := echoSessionWith(e, client.Options{Via: via, Dest: dest, MPTCP: mptcp}, seed, size); err != nil {
		return fmt.Errorf("session %d: %w", seed, err)
	}
	return nil
}

// TestFamilies: IPv6 on both legs, an IPv4 client to an IPv6 server and the
// reverse, a plain TCP client, and a client whose Convert message comes
// after the handshake.
func TestFamilies(t *testing.T) {
	e := newEnv(t)
	conv := e.startConverter()
	echo(e.listen(e.serverNS(), "[::]:8002", false))
	v4 := netip.MustParseAddrPort("10.201.3.2:8002")
	v6 := netip.MustParseAddrPort("[fd01:3::2]:8002")
	cases := []struct {
		name     string
		via, dst netip.AddrPort
		mptcp    bool
	}{
		{"v6-v6", e.via6(), v6, true},
		{"v4-v6", e.via4(), v6, true},
		{"v6-v4", e.via6(), v4, true},
		{"plain-tcp-client", e.via4(), v4, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := echoSession(e, tc.via, tc.dst, uint64(200+i), 1<<20, tc.mptcp); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("message-after-handshake", func(t *testing.T) {
		req, _ := client.Options{Dest: v4}.Request()
		var c *net.TCPConn
		err := e.inClient(func() error {
			d := net.Dialer{} // no TFO: the handshake completes, then data flows
			d.SetMultipathTCP(true)
			nc, err := d.Dial("tcp", e.via4().String())
			if err == nil {
				c = nc.(*net.TCPConn)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		time.Sleep(50 * time.Millisecond) // the converter waits for the message
		if _, err := c.Write(append(req, "after handshake"...)); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		reply := make([]byte, 28)
		if _, err := io.ReadFull(c, reply); err != nil || reply[4] != 0x14 {
			t.Fatalf("reply %x: %v", reply, err)
		}
		rest, _ := io.ReadAll(c)
		if string(rest) != "after handshake" {
			t.Fatalf("echo = %q", rest)
		}
	})
	plain := 0
	for _, r := range conv.waitRecords(t, "session end", 5) {
		if r["mptcp"] == false {
			plain++
		}
	}
	if plain != 1 {
		t.Errorf("%d plain TCP sessions logged, want 1", plain)
	}
}

// TestHalfClose: each side's FIN reaches the other while the opposite
// direction keeps flowing.
func TestHalfClose(t *testing.T) {
	e := newEnv(t)
	e.startConverter()
	l := e.listen(e.serverNS(), "10.201.3.2:8003", false)
	dest := netip.MustParseAddrPort("10.201.3.2:8003")

	t.Run("client-first", func(t *testing.T) {
		srv := serveOne(l, func(c *net.TCPConn) error {
			b, err := io.ReadAll(c) // ends only on the client's FIN
			if err == nil && string(b) != "question" {
				err = fmt.Errorf("server read %q", b)
			}
			if err == nil {
				_, err = c.Write([]byte("answer after your FIN"))
			}
			return err
		})
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, []byte("question"))
		if err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "answer after your FIN" {
			t.Fatalf("client read %q, %v", b, err)
		}
		if err := <-srv; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("server-first", func(t *testing.T) {
		srv := serveOne(l, func(c *net.TCPConn) error {
			c.Write([]byte("server done"))
			c.CloseWrite()
			b, err := io.ReadAll(c)
			if err == nil && string(b) != "client still talking" {
				err = fmt.Errorf("server read %q", b)
			}
			return err
		})
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c) // the server's FIN arrives as EOF
		if err != nil || string(b) != "server done" {
			t.Fatalf("client read %q, %v", b, err)
		}
		c.Write([]byte("client still talking"))
		c.CloseWrite()
		if err := <-srv; err != nil {
			t.Fatal(err)
		}
	})
}

// TestResets: a server RST mid-stream resets the client, and a client
// abort resets the server leg.
func TestResets(t *testing.T) {
	e := newEnv(t)
	e.startConverter()
	l := e.listen(e.serverNS(), "10.201.3.2:8004", false)
	dest := netip.MustParseAddrPort("10.201.3.2:8004")

	t.Run("server-rst", func(t *testing.T) {
		go func() {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			io.CopyN(c, stream(9, 1<<20), 1<<20)
			c.SetLinger(0)
			c.Close()
		}()
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client read ended with %v, want connection reset", err)
		}
	})
	t.Run("client-abort", func(t *testing.T) {
		srv := serveDrain(l)
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, []byte("some data"))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		c.SetLinger(0) // MP_FASTCLOSE on MPTCP
		c.Close()
		if err := <-srv; !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("server read ended with %v, want connection reset", err)
		}
	})
}

// serveDrain accepts one connection and reads it to its end (or 10 s),
// reporting how the read ended.
func serveDrain(l *net.TCPListener) <-chan error {
	return serveOne(l, func(c *net.TCPConn) error {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		return err
	})
}

// serveOne accepts one connection on l, runs fn on it, closes it and
// reports fn's error (or the accept's).
func serveOne(l *net.TCPListener, fn func(*net.TCPConn) error) <-chan error {
	out := make(chan error, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			out <- err
			return
		}
		defer c.Close()
		out <- fn(c)
	}()
	return out
}

// TestIdleTimeout: a session in which nothing moves is closed after
// --idle-timeout, both legs reset.
func TestIdleTimeout(t *testing.T) {
	e := newEnv(t)
	conv := e.startConverter("--idle-timeout", "1s")
	l := e.listen(e.serverNS(), "10.201.3.2:8005", false)
	srv := serveDrain(l)
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8005"), MPTCP: true}, []byte("then silence"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read ended with %v, want a reset", err)
	}
	if el := time.Since(start); el < 800*time.Millisecond || el > 5*time.Second {
		t.Errorf("closed after %v, want about 1 s", el)
	}
	if err := <-srv; !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("server read ended with %v, want a reset", err)
	}
	if ends := conv.waitRecords(t, "session end", 1); len(ends) != 1 || !strings.Contains(fmt.Sprint(ends[0]["end"]), "idle") {
		t.Errorf("session end records: %v", ends)
	}
}

// TestSIGHUPKeepsSessions: SIGHUP reloads, it never stops the daemon (in
// the default mode it used to kill it and every session).
func TestSIGHUPKeepsSessions(t *testing.T) {
	e := newEnv(t)
	conv := e.startConverter()
	echo(e.listen(e.serverNS(), "10.201.3.2:8075", false))
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8075"), MPTCP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := conv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	conv.waitRecords(t, "SIGHUP received", 1)
	got := exchange(c.TCPConn, 9, 1<<20)
	if got.err != nil || got.got != 1<<20 || got.gotDigest != streamDigest(9, 1<<20) {
		t.Fatalf("session after SIGHUP: %d bytes, %v", got.got, got.err)
	}
}

// TestDrain: SIGTERM stops accepting, lets a running session finish (its
// bytes intact), and the daemon exits once it ended; a session that does
// not end is aborted at --drain-timeout; a second SIGTERM aborts at once.
func TestDrain(t *testing.T) {
	e := newEnv(t)
	serveDownloads(e.listen(e.serverNS(), "10.201.3.2:8000", false))
	const size = 64 << 20

	t.Run("finishes", func(t *testing.T) {
		conv := e.startConverter("--drain-timeout", "20s", "--listen", "[::]:5124")
		c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// A slow reader keeps the session running across the SIGTERM.
		fmt.Fprintf(c, "%d %d\n", 5, size)
		got := make(chan result, 1)
		go func() {
			c.SetReadBuffer(256 << 10)
			d, n, err := digest(&slowReader{r: c, every: 4 << 20, pause: 20 * time.Millisecond})
			got <- result{gotDigest: d, got: n, err: err}
		}()
		time.Sleep(100 * time.Millisecond)
		start := time.Now()
		conv.cmd.Process.Signal(syscall.SIGTERM)
		conv.waitRecords(t, "draining", 1)
		if _, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil); err == nil {
			t.Errorf("a new session was accepted during the drain")
		}
		r := <-got
		if r.err != nil || r.got != size || r.gotDigest != streamDigest(5, size) {
			t.Fatalf("the session across the drain: %d of %d bytes, %v", r.got, size, r.err)
		}
		c.Close() // the session ends when both directions have
		exited := waitExit(t, conv, 10*time.Second)
		t.Logf("session finished %v after SIGTERM; daemon exited %v after it", time.Since(start).Round(time.Millisecond), exited.Round(time.Millisecond))
		if len(conv.records("drained")) != 1 {
			t.Errorf("no drained record")
		}
	})
	t.Run("times out", func(t *testing.T) {
		conv := e.startConverter("--drain-timeout", "1s", "--listen", "[::]:5124")
		c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close() // an idle session: it would never end by itself
		start := time.Now()
		conv.cmd.Process.Signal(syscall.SIGTERM)
		waitExit(t, conv, 10*time.Second)
		if d := time.Since(start); d < time.Second || d > 5*time.Second {
			t.Errorf("exited %v after SIGTERM, want about the 1 s drain timeout", d)
		}
		if len(conv.records("drain timed out: aborting the sessions left")) != 1 {
			t.Errorf("no drain time-out record")
		}
	})
	t.Run("second signal", func(t *testing.T) {
		conv := e.startConverter("--drain-timeout", "60s", "--listen", "[::]:5124")
		c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		conv.cmd.Process.Signal(syscall.SIGTERM)
		conv.waitRecords(t, "draining", 1)
		conv.cmd.Process.Signal(syscall.SIGTERM)
		waitExit(t, conv, 10*time.Second)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("exited %v after two SIGTERMs, want at once", d)
		}
	})
}

// slowReader reads from r and pauses after every `every` bytes.
type slowReader struct {
	r     io.Reader
	every int64
	pause time.Duration
	n     int64
}

func (s *slowReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	before := s.n
	s.n += int64(n)
	if s.n/s.every != before/s.every {
		time.Sleep(s.pause)
	}
	return n, err
}

// waitExit waits for the converter process to exit and returns how long
// that took.
func waitExit(t *testing.T, p *converterProc, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("the converter did not exit within %v", limit)
	}
	return time.Since(start)
}

// TestSystemdNotify: with NOTIFY_SOCKET set the daemon says READY=1 once
// it serves, RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 when
// the drain begins; GET /ready and `converter status` follow: serving,
// then draining (exit 1) while a session keeps the drain going.
func TestSystemdNotify(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	sockPath, next := fakeNotifySocket(t, dir)
	control := filepath.Join(dir, "control.sock")
	conv := e.startConverterEnv([]string{"NOTIFY_SOCKET=" + sockPath}, "--control", control, "--drain-timeout", "20s")
	next("READY=1")
	status := func() (int, string) {
		out, err := exec.Command(converterBin, "status", "--control", control, "--json").Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return code, string(out)
	}
	if code, out := status(); code != 0 || !strings.Contains(out, `"state":"serving"`) {
		t.Errorf("status while serving: exit %d, %s", code, out)
	}
	conv.cmd.Process.Signal(syscall.SIGHUP)
	next("RELOADING=1")
	next("READY=1")
	// A session keeps the drain going while status is asked.
	echo(e.listen(e.serverNS(), "10.201.3.2:8076", false))
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8076"), MPTCP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conv.cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	conv.waitRecords(t, "draining", 1)
	if code, out := status(); code != 1 || !strings.Contains(out, `"state":"draining"`) {
		t.Errorf("status while draining: exit %d, %s", code, out)
	}
	c.Close()
	waitExit(t, conv, 10*time.Second)
}

// fakeNotifySocket stands in for systemd's NOTIFY_SOCKET; next waits for
// the next message and fails the test unless it contains want.
func fakeNotifySocket(t *testing.T, dir string) (string, func(want string)) {
	t.Helper()
	sockPath := filepath.Join(dir, "notify.sock")
	ns, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := ns.ReadFromUnix(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return sockPath, func(want string) {
		t.Helper()
		select {
		case m := <-msgs:
			if !strings.Contains(m, want) {
				t.Fatalf("notify message %q, want %s", m, want)
			}
			t.Logf("notify: %q", m)
		case <-time.After(10 * time.Second):
			t.Fatalf("no notify message, want %s", want)
		}
	}
}
