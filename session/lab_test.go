package session

import (
	"context"
	"github.com/convert-tc/converter/internal/labtest"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/convert-tc/converter/internal/mptcpevents"
	"github.com/convert-tc/converter/lab"
)

// eventLog keeps the events the table was fed.
type eventLog struct {
	mu  sync.Mutex
	evs []mptcpevents.Event
}

func (l *eventLog) add(ev mptcpevents.Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

func (l *eventLog) all() []mptcpevents.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]mptcpevents.Event(nil), l.evs...)
}

func (l *eventLog) count(typ mptcpevents.Type, token uint32) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.evs {
		if ev.Type == typ && ev.Token == token {
			n++
		}
	}
	return n
}

// eventually polls cond every 10 ms for up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLabSessionSubflows follows one MPTCP client with two subflows
// through the table: events from the converter namespace keep its subflow
// list, a refresh fills per-subflow counters, and closing brings the
// closed event.
func TestLabSessionSubflows(t *testing.T) {
	labtest.Require(t)
	l, err := lab.Up(t.Context(), lab.Config{Prefix: lab.UniquePrefix()})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	defer l.Close()

	// The event socket must be made inside the converter's namespace.
	tb := NewTable(0)
	var events *mptcpevents.Listener
	if err := lab.RunIn(l.Converter, func() (err error) { events, err = mptcpevents.Listen(nil); return err }); err != nil {
		t.Fatalf("listen for MPTCP events in %s: %v", l.Converter, err)
	}
	defer events.Close()
	var log eventLog
	ctx, cancel := context.WithCancel(t.Context())
	runErr := make(chan error, 1)
	go func() {
		runErr <- events.Run(ctx, func(ev mptcpevents.Event) {
			log.add(ev)
			tb.HandleEvent(ev)
		})
	}()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("event listener: %v", err)
		}
	}()

	conv, client := acceptMPTCP(t, l)
	e, err := tb.Add(Accepted{ID: 1, Client: conv})
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	defer tb.Remove(e)
	token, ok := e.Token()
	if !ok {
		t.Fatal("the accepted MPTCP connection has no token")
	}
	upstream, dest := dialServer(t, l)
	e.SetDestination(dest)
	e.SetServer(upstream)
	e.SetState(StateEstablished)

	// The client opens its second subflow once the MPTCP connection is
	// fully established, which takes data: start with a little.
	const size = 4 << 20
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, conv)
		e.Count(Client, n)
		done <- n
	}()
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	// The client's second-path endpoint joins: the entry gets its second
	// subflow from the sub_established event.
	eventually(t, "two subflows in the table", func() bool {
		in, _ := tb.Lookup(1, false)
		return len(in.Subflows) == 2
	})
	if log.count(mptcpevents.Created, token) != 1 || log.count(mptcpevents.Established, token) != 1 ||
		log.count(mptcpevents.SubEstablished, token) != 1 {
		t.Errorf("events for %08x: want created, established and one sub_established; got %+v", token, log.all())
	}

	if _, err := client.Write(make([]byte, size-5)); err != nil {
		t.Fatalf("client write: %v", err)
	}
	client.CloseWrite()
	if n := <-done; n != size {
		t.Fatalf("converter read %d bytes, want %d", n, size)
	}

	in, _ := tb.Lookup(1, true)
	var total uint64
	for _, sf := range in.Subflows {
		total += sf.BytesReceived
		if sf.BytesReceived == 0 || sf.RTTMicros == 0 {
			t.Errorf("subflow %s <- %s: %d bytes received, rtt %d us; want both > 0", sf.Local, sf.Remote, sf.BytesReceived, sf.RTTMicros)
		}
	}
	if len(in.Subflows) != 2 || total < size || in.BytesToServer != size || in.Fallback || in.RefreshError != "" {
		t.Errorf("after %d bytes: %+v", size, in)
	}
	if in.MPTCP == nil || !in.MPTCP.Established || in.MPTCP.SubflowsTotal != 2 || in.MPTCP.BytesReceived < size {
		t.Errorf("MPTCP level: %+v", in.MPTCP)
	}
	if in.Upstream.Remote != dest || in.ServerTCP == nil || in.Destination != dest {
		t.Errorf("server leg: %+v", in)
	}
	t.Logf("subflows: %+v", in.Subflows)
	t.Logf("table counts: %+v", tb.Counts())

	client.Close()
	conv.Close()
	eventually(t, "the closed event", func() bool { return log.count(mptcpevents.Closed, token) == 1 })
	if in, _ := tb.Lookup(1, false); in.MPTCP == nil || !in.MPTCP.Closed {
		t.Errorf("entry not marked closed: %+v", in.MPTCP)
	}
	if !tb.Remove(e) || tb.Len() != 0 {
		t.Error("entry not removed")
	}
}

// acceptMPTCP connects the client to an MPTCP listener in the converter
// namespace over path 1. The listener stays open: joins go through it.
func acceptMPTCP(t *testing.T, l *lab.Lab) (conv, client *net.TCPConn) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	var ln net.Listener
	err := lab.RunIn(l.Converter, func() (err error) {
		ln, err = lc.Listen(t.Context(), "tcp", netip.AddrPortFrom(l.Addr.ConvPath1V4, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", l.Converter, err)
	}
	t.Cleanup(func() { ln.Close() })
	var d net.Dialer
	d.SetMultipathTCP(true)
	var c net.Conn
	if err := lab.RunIn(l.Client, func() (err error) { c, err = d.DialContext(t.Context(), "tcp", ln.Addr().String()); return err }); err != nil {
		t.Fatalf("dial %s from %s: %v", ln.Addr(), l.Client, err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

// dialServer opens a plain TCP server leg from the converter namespace to
// a listener in the server namespace.
func dialServer(t *testing.T, l *lab.Lab) (*net.TCPConn, netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	err := lab.RunIn(l.Server, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(l.Addr.ServerV4, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", l.Server, err)
	}
	defer ln.Close()
	dest := ln.Addr().(*net.TCPAddr).AddrPort()
	var c net.Conn
	if err := lab.RunIn(l.Converter, func() (err error) { c, err = net.Dial("tcp", dest.String()); return err }); err != nil {
		t.Fatalf("dial %s from %s: %v", dest, l.Converter, err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept in %s: %v", l.Server, err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), dest
}
