package control

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/convert-tc/converter/session"
)

// POST /handover switches the connection to the raw protocol: the bytes
// that follow the 101 reach the handler untouched, both ways.
func TestHandoverUpgrade(t *testing.T) {
	got := make(chan string, 1)
	path, _ := serve(t, session.NewTable(0), func(s *Server) {
		s.SetHandover(func(c *net.UnixConn) {
			defer c.Close()
			c.Write([]byte("offer"))
			b := make([]byte, 5)
			io.ReadFull(c, b)
			got <- string(b)
		})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Handover(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "offer" {
		t.Fatalf("read %q, %v", b, err)
	}
	c.Write([]byte("ready"))
	if s := <-got; s != "ready" {
		t.Fatalf("handler read %q", s)
	}
}

func TestHandoverNoDaemon(t *testing.T) {
	_, err := Handover(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	if !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("err %v, want ErrNoDaemon", err)
	}
	// A daemon without hand-over says so: 501.
	path, _ := serve(t, session.NewTable(0), nil)
	if _, err := Handover(context.Background(), path); err == nil || errors.Is(err, ErrNoDaemon) {
		t.Fatalf("err %v, want a refusal", err)
	}
}

// A successor takes the socket path over from a live daemon; the old one,
// stopping later, leaves the successor's socket in place.
func TestReplaceLive(t *testing.T) {
	path, stopOld := serve(t, session.NewTable(0), nil)
	if _, err := Listen(path); err == nil {
		t.Fatal("Listen took a live daemon's socket")
	}
	s := New(session.NewTable(0), nil)
	s.ReplaceLive()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	old, _ := os.Stat(path)
	go func() { errc <- s.Serve(ctx, path) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if now, err := os.Stat(path); err == nil && !os.SameFile(old, now) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("socket not replaced")
		}
		time.Sleep(time.Millisecond)
	}
	if err := stopOld(); err != nil {
		t.Fatal(err)
	}
	if _, err := FetchReady(context.Background(), path); err != nil {
		t.Fatalf("the successor's socket: %v", err)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// A socket replaced before its own Serve even started is still known as
// replaced: Serve remembers its file from before it was in place, so
// stopping leaves the successor's socket (this raced in TestReplaceLive).
func TestReplacedBeforeServe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	old := New(session.NewTable(0), nil)
	if err := old.Bind(path); err != nil {
		t.Fatal(err)
	}
	successor := New(session.NewTable(0), nil)
	successor.ReplaceLive()
	if err := successor.Bind(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- old.Serve(ctx, path) }()
	time.Sleep(20 * time.Millisecond) // let it start
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go successor.Serve(ctx2, path)
	if _, err := FetchReady(context.Background(), path); err != nil {
		t.Fatalf("the successor's socket after the old server stopped: %v", err)
	}
}
