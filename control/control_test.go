package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/session"
)

// serve starts a Server on a temporary socket and returns its path and a
// function that stops it and returns Serve's error.
func serve(t *testing.T, tb *session.Table, register func(*Server)) (string, func() error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	s := New(tb, nil)
	if register != nil {
		register(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, path) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		select {
		case err := <-errc:
			t.Fatalf("Serve: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("socket not created")
		}
		time.Sleep(time.Millisecond)
	}
	var stopped bool
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-errc
	}
	t.Cleanup(func() { stop() })
	return path, stop
}

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

func TestServeSessions(t *testing.T) {
	tb := session.NewTable(0)
	c, d := tcpPair(t)
	e, err := tb.Add(session.Accepted{ID: 5, Client: c})
	if err != nil {
		t.Fatal(err)
	}
	e.SetState(session.StateEstablished)
	path, stop := serve(t, tb, func(s *Server) {
		s.Register("converter", func() any { return map[string]int{"accepted": 1} })
	})

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".control-*")); len(leftovers) != 0 {
		t.Errorf("temporary directories left: %v", leftovers)
	}

	ctx := t.Context()
	snap, err := FetchSessions(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Sessions) != 1 || snap.Sessions[0].ID != 5 || snap.Sessions[0].State != session.StateEstablished ||
		snap.Sessions[0].Client.String() != d.LocalAddr().String() {
		t.Errorf("sessions: %+v", snap)
	}
	one, err := FetchSession(ctx, path, 5)
	if err != nil || one.ID != 5 {
		t.Errorf("session 5: %+v, %v", one, err)
	}
	if _, err := FetchSession(ctx, path, 6); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("missing session: %v, want a 404", err)
	}
	stats, err := FetchStats(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var counts session.Counts
	if err := json.Unmarshal(stats["session_table"], &counts); err != nil || counts.Adds != 1 {
		t.Errorf("session_table stats %s: %v", stats["session_table"], err)
	}
	if string(stats["converter"]) != `{"accepted":1}` {
		t.Errorf("converter stats %s", stats["converter"])
	}

	// Raw JSON over the socket: the contract's top-level shape.
	var raw map[string]any
	if err := get(ctx, path, "/sessions?refresh=0", &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw["sessions"].([]any); !ok || len(raw) != 1 {
		t.Errorf("GET /sessions: %v", raw)
	}
	if err := get(ctx, path, "/sessions/x", &raw); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("bad id: %v, want a 400", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown (stat: %v)", err)
	}
	if _, err := FetchSessions(ctx, path); err == nil {
		t.Error("fetch after shutdown succeeded")
	}
}

func TestListenStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.sock")

	// A socket nobody listens on any more is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()

	// A live one is not.
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Listen over a live socket: %v", err)
	}

	// Nor is a file that is not a socket.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil {
		t.Error("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("regular file changed")
	}
}

func TestServeMetrics(t *testing.T) {
	tb := session.NewTable(0)
	var srv *Server
	path, _ := serve(t, tb, func(s *Server) { srv = s })
	ctx := t.Context()
	if _, err := FetchMetrics(ctx, path); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("GET /metrics before SetMetrics: %v, want a 503", err)
	}
	srv.SetMetrics(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "converter_control_socket_clients %d\n", srv.Clients())
	}))
	waitClients := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for srv.Clients() != n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if got := srv.Clients(); got != n {
			t.Fatalf("%d clients, want %d", got, n)
		}
	}
	// The first request's connection closes asynchronously on the
	// server's side.
	waitClients(0)
	body, err := FetchMetrics(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// The request's own connection is open while it is served.
	if string(body) != "converter_control_socket_clients 1\n" {
		t.Errorf("GET /metrics: %q", body)
	}
	waitClients(0)
	if n := srv.Clients(); n != 0 {
		t.Errorf("%d clients after the requests closed", n)
	}
}
