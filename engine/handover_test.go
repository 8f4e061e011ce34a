package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// TestHandOver: a second Server takes the first one's listening socket
// while a client opens connections every few milliseconds. None is
// refused or reset; a download running on the first Server goes on to its
// end, intact; the first Server then stops.
func TestHandOver(t *testing.T) {
	old := newLoop(t, func(c *Config) { c.ShutdownDrain = 20 * time.Second })
	echo := old.server("203.0.113.1:80", echoConn)
	big := bytes.Repeat([]byte("handed over? never. "), 1<<18) // 5 MiB
	slow := old.server("203.0.113.9:80", func(c *net.TCPConn) {
		for b := big; len(b) > 0; b = b[min(len(b), 256<<10):] {
			c.Write(b[:min(len(b), 256<<10)])
			time.Sleep(40 * time.Millisecond) // about 0.8 s in all
		}
		c.CloseWrite()
	})

	dl, err := old.convert(client.Options{Dest: slow}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dlDone := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(dl); dl.Close(); dlDone <- b }()

	var opened, failed atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var failures sync.Map
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(3 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				opened.Add(1)
				msg := []byte(fmt.Sprintf("ping %d", i))
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				c, err := client.Dial(ctx, client.Options{Via: old.via, Dest: echo}, msg)
				if err == nil {
					c.CloseWrite()
					var got []byte
					got, err = io.ReadAll(c)
					c.Close()
					if err == nil && !bytes.Equal(got, msg) {
						err = fmt.Errorf("echo %q", got)
					}
				}
				if err != nil {
					failed.Add(1)
					failures.Store(i, err.Error())
				}
			}()
		}
	}()
	time.Sleep(150 * time.Millisecond)

	// The hand-over, as the daemon does it.
	handed, err := old.srv.HandOverListeners()
	if err != nil {
		t.Fatal(err)
	}
	oldGone := make(chan struct{})
	cfg := old.srv.cfg
	cfg.Listeners = nil
	cfg.Listen = []string{old.via.String()}
	cfg.Inherited = handed
	cfg.PredecessorDone = oldGone
	next, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Listen(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, h := range handed {
		h.File.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- next.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("successor: %v", err)
		}
	}()
	for ok, _ := next.Readiness(); !ok; ok, _ = next.Readiness() {
		time.Sleep(time.Millisecond)
	}
	old.srv.HandedOver()
	begun := time.Now()
	oldStopped := make(chan error, 1)
	go func() { oldStopped <- old.stop() }()

	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		failures.Range(func(k, v any) bool { t.Errorf("connection %v: %v", k, v); return true })
		t.Fatalf("%d of %d connections failed across the hand-over", n, opened.Load())
	}
	got := <-dlDone
	if sha256.Sum256(got) != sha256.Sum256(big) {
		t.Fatalf("download across the hand-over: %d of %d bytes", len(got), len(big))
	}
	select {
	case err := <-oldStopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old Server did not stop once its download ended")
	}
	close(oldGone)
	before, after := old.srv.Stats().Accepted, next.Stats().Accepted
	t.Logf("%d connections, %d accepted before the hand-over, %d after; old Server stopped %v after it", opened.Load(), before, after, time.Since(begun).Round(time.Millisecond))
	if after == 0 {
		t.Fatal("the successor accepted nothing")
	}
	if ok, state := old.srv.Readiness(); ok || state != "handed over" {
		t.Errorf("old Server readiness %v %q", ok, state)
	}
	// The successor has the address to itself now.
	c, err := client.Dial(t.Context(), client.Options{Via: old.via, Dest: echo}, []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
