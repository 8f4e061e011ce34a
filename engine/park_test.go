package engine

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/client"
)

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An idle session parks both directions (no goroutine of its own) and
// resumes with the next byte from either side.
func TestParkedSessionResumes(t *testing.T) {
	lp := newLoop(t, nil)
	dest := lp.server("203.0.113.1:80", echoConn)
	c, err := lp.convert(client.Options{Dest: dest}, []byte("first "))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "first " {
		t.Fatalf("echo %q, %v", got, err)
	}
	waitFor(t, "both directions parked", func() bool { return lp.srv.parker.parkedCount() == 2 })
	// The session itself holds no goroutine, and no connection: it
	// detached (detach.go) and watches duplicates of its sockets.
	if n := relayGoroutines(); n != 0 {
		t.Errorf("%d relay goroutines while parked", n)
	}
	waitFor(t, "the session detached", func() bool { return detachedSessions(lp.srv) == 1 })
	// The table still shows the session's legs (refreshing keeps the last
	// socket figures).
	before := lp.srv.Table().Snapshot(false).Sessions
	snap := lp.srv.Table().Snapshot(true).Sessions
	if len(snap) != 1 || !snap[0].Upstream.Remote.IsValid() || snap[0].Upstream != before[0].Upstream || snap[0].Client != before[0].Client {
		t.Fatalf("detached session in the table: %+v (before the refresh: %+v)", snap, before)
	}
	if snap[0].RefreshError != "" {
		t.Errorf("refreshing a detached session: %q", snap[0].RefreshError)
	}
	for i := range 3 {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 100<<10)
		go c.Write(msg)
		back := make([]byte, len(msg))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, msg) {
			t.Fatalf("round %d after parking: %v", i, err)
		}
		waitFor(t, "parked again", func() bool { return lp.srv.parker.parkedCount() == 2 && detachedSessions(lp.srv) == 1 })
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("end: %q, %v", rest, err)
	}
	waitFor(t, "the session's end", func() bool { return lp.srv.Stats().Active == 0 && lp.srv.parker.parkedCount() == 0 })
}

// A parked session still ends by the idle timeout, and its end undoes
// everything (the table entry, the client's count).
func TestParkedSessionIdleTimeout(t *testing.T) {
	lp := newLoop(t, func(c *Config) { c.IdleTimeout = 2500 * time.Millisecond })
	dest := lp.server("203.0.113.1:80", echoConn)
	c, err := lp.convert(client.Options{Dest: dest}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "parked", func() bool { return lp.srv.parker.parkedCount() == 2 })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(c) // "x", then the abort
	waitFor(t, "the session's end", func() bool {
		return lp.srv.Stats().Active == 0 && lp.srv.parker.parkedCount() == 0 && lp.srv.Table().Counts().Active == 0
	})
}

// Stopping the Server ends parked sessions at once.
func TestServeStopsParkedSessions(t *testing.T) {
	lp := newLoop(t, nil)
	dest := lp.server("203.0.113.1:80", echoConn)
	var conns []*client.Conn
	for range 5 {
		c, err := lp.convert(client.Options{Dest: dest}, []byte("y"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(t, "parked", func() bool { return lp.srv.parker.parkedCount() == 10 })
	start := time.Now()
	if err := lp.stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Serve took %v to stop with parked sessions", d)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !isReset(err) {
			t.Errorf("a parked session at the stop: %v", err)
		}
	}
	if n := lp.srv.Stats().Active; n != 0 {
		t.Errorf("%d sessions active after Serve returned", n)
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// relayGoroutines counts the goroutines running a relay direction.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("engine.(*direction).run"))
}

// detachedSessions counts the sessions that let go of their connections.
func detachedSessions(srv *Server) int {
	srv.mu.Lock()
	all := make([]*session, 0, len(srv.sessions))
	for sess := range srv.sessions {
		all = append(all, sess)
	}
	srv.mu.Unlock()
	n := 0
	for _, sess := range all {
		sess.relayMu.Lock()
		if sess.detached {
			n++
		}
		sess.relayMu.Unlock()
	}
	return n
}

// Unparking twice touches nothing else: the second time, the direction's
// old descriptor number may already name another parked socket.
func TestUnparkTwice(t *testing.T) {
	p, err := newParker()
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	pair := func() (int, int) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fds[0], fds[1]
	}
	a, aPeer := pair()
	defer unix.Close(aPeer)
	var da, db direction
	if err := p.parkFD(&da, a); err != nil {
		t.Fatal(err)
	}
	p.unpark(&da)
	unix.Close(a)
	b, bPeer := pair() // b most likely takes a's number
	defer unix.Close(b)
	defer unix.Close(bPeer)
	if err := p.parkFD(&db, b); err != nil {
		t.Fatal(err)
	}
	p.unpark(&da) // again: must not take b out
	unix.Write(bPeer, []byte("x"))
	events := make([]unix.EpollEvent, 4)
	n, err := unix.EpollWait(p.epfd, events, 1000)
	if err != nil || n != 1 {
		t.Fatalf("epoll_wait: %d events, %v: the second unpark took the other socket out", n, err)
	}
	if p.parkedCount() != 1 {
		t.Fatalf("%d parked, want 1", p.parkedCount())
	}
}
