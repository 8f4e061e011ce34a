package session

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/convert-tc/converter/internal/mptcpevents"
	"github.com/convert-tc/converter/tlv"
)

// pair returns both ends of a loopback TCP connection (MPTCP if asked and
// the kernel allows it).
func pair(t testing.TB, mptcp bool) (accepted, dialed *net.TCPConn) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(mptcp)
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var d net.Dialer
	d.SetMultipathTCP(mptcp)
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
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

// addToken puts an entry with a made-up MPTCP token in the table, as Add
// does for an MPTCP client, so that events can be tested without MPTCP.
func addToken(t *testing.T, tb *Table, id uint64, token uint32) *Entry {
	t.Helper()
	c, _ := pair(t, false)
	e := newEntry(id, Accepted{Client: c})
	e.token, e.hasToken = token, true
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := tb.insert(e); err != nil {
		t.Fatal(err)
	}
	e.subflows = []subflow{{local: e.clientLocal, remote: e.clientAddr}}
	return e
}

func TestAddLookupRemove(t *testing.T) {
	tb := NewTable(0)
	c, d := pair(t, false)
	e, err := tb.Add(Accepted{ID: 7, Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tb.Get(7); !ok || got != e {
		t.Fatalf("Get(7) = %v, %v", got, ok)
	}
	client := d.LocalAddr().(*net.TCPAddr).AddrPort()
	if got, ok := tb.ByClient(client); !ok || got != e {
		t.Fatalf("ByClient(%s) = %v, %v", client, got, ok)
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(client.Addr().As16()), client.Port())
	if got, ok := tb.ByClient(mapped); !ok || got != e {
		t.Errorf("ByClient(%s) (v4-mapped) = %v, %v", mapped, got, ok)
	}
	if _, ok := e.Token(); ok {
		t.Errorf("plain TCP client has a token")
	}
	if in, _ := tb.Lookup(7, false); !in.Fallback || len(in.Subflows) != 1 || !in.Subflows[0].Initial {
		t.Errorf("plain TCP client: %+v, want fallback with the initial subflow", in)
	}
	if !tb.Remove(e) || tb.Remove(e) {
		t.Error("Remove: want true once, then false")
	}
	if _, ok := tb.Get(7); ok {
		t.Error("entry still found after Remove")
	}
	if _, ok := tb.ByClient(client); ok {
		t.Error("entry still found by client after Remove")
	}
	if got := tb.Counts(); got.Adds != 1 || got.Removes != 1 || got.Active != 0 {
		t.Errorf("counts %+v", got)
	}
}

func TestAddAssignsIDs(t *testing.T) {
	tb := NewTable(0)
	a, _ := pair(t, false)
	b, _ := pair(t, false)
	ea, _ := tb.Add(Accepted{Client: a})
	eb, _ := tb.Add(Accepted{Client: b})
	if ea.ID() == 0 || ea.ID() == eb.ID() {
		t.Errorf("ids %d and %d", ea.ID(), eb.ID())
	}
}

func TestBoundAndRefusals(t *testing.T) {
	tb := NewTable(2)
	var entries []*Entry
	for i := range 2 {
		c, _ := pair(t, false)
		e, err := tb.Add(Accepted{ID: uint64(i + 1), Client: c})
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	c, _ := pair(t, false)
	if _, err := tb.Add(Accepted{ID: 3, Client: c}); !errors.Is(err, ErrFull) {
		t.Fatalf("Add past the limit: %v, want ErrFull", err)
	}
	tb.Remove(entries[0])
	if _, err := tb.Add(Accepted{ID: 2, Client: c}); !errors.Is(err, ErrDuplicateID) {
		t.Fatalf("Add of a live id: %v, want ErrDuplicateID", err)
	}
	if _, err := tb.Add(Accepted{ID: 3, Client: c}); err != nil {
		t.Fatalf("Add after Remove: %v", err)
	}
	want := Counts{Active: 2, Limit: 2, Adds: 3, Removes: 1, Refused: 2}
	if got := tb.Counts(); got != want {
		t.Errorf("counts %+v, want %+v", got, want)
	}
	if _, err := tb.Add(Accepted{ID: 9}); err == nil {
		t.Error("Add without a connection succeeded")
	}
}

// TestNewEntry: the record of a session the table refused works like one
// in the table, and Remove leaves the table alone.
func TestNewEntry(t *testing.T) {
	tb := NewTable(1)
	c, d := pair(t, false)
	in, err := tb.Add(Accepted{ID: 1, Client: c})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Second)
	orig := netip.MustParseAddrPort("198.51.100.1:443")
	if _, err := tb.Add(Accepted{ID: 2, Client: c}); !errors.Is(err, ErrFull) {
		t.Fatalf("Add past the limit: %v", err)
	}
	e := NewEntry(Accepted{ID: 2, Client: c, Start: start, Original: orig})
	client := d.LocalAddr().(*net.TCPAddr).AddrPort()
	if e.ID() != 2 || e.Client() != c || e.ClientAddr() != client || !e.Start().Equal(start) || e.Original() != orig {
		t.Errorf("identity: id %d client %v %s start %v original %s", e.ID(), e.Client(), e.ClientAddr(), e.Start(), e.Original())
	}
	if _, ok := e.Token(); ok {
		t.Error("a plain TCP client has a token")
	}
	up, _ := pair(t, false)
	dest := netip.MustParseAddrPort("192.0.2.1:80")
	e.SetDestination(dest)
	e.SetServer(up)
	e.SetSynAck(SynAckExact)
	e.Count(Client, 3)
	if e.Destination() != dest || e.Server() != up || e.SynAck() != SynAckExact || e.LastActive().IsZero() {
		t.Errorf("shared state: %s %v %s %v", e.Destination(), e.Server(), e.SynAck(), e.LastActive())
	}
	if tb.Remove(e) || tb.Len() != 1 {
		t.Errorf("Remove of an entry not in the table changed it (len %d)", tb.Len())
	}
	if got, _ := tb.Get(1); got != in {
		t.Error("the entry in the table is gone")
	}
}

func TestMPTCPToken(t *testing.T) {
	c, _ := pair(t, true)
	if ok, _ := c.MultipathTCP(); !ok {
		t.Skip("MPTCP not available on loopback in this namespace (net.mptcp.enabled=0?)")
	}
	tb := NewTable(0)
	e, err := tb.Add(Accepted{ID: 1, Client: c})
	if err != nil {
		t.Fatal(err)
	}
	token, ok := e.Token()
	if !ok || token == 0 {
		t.Fatalf("token %08x, %v", token, ok)
	}
	if got, ok := tb.ByToken(token); !ok || got != e {
		t.Errorf("ByToken(%08x) = %v, %v", token, got, ok)
	}
	in, _ := tb.Lookup(1, true)
	if in.Fallback || in.Token != Token(token) || in.MPTCP == nil || len(in.Subflows) != 1 {
		t.Errorf("MPTCP client: %+v", in)
	}
}

func TestEvents(t *testing.T) {
	tb := NewTable(0)
	e := addToken(t, tb, 1, 0xabcd0001)
	local := e.clientLocal
	join := netip.MustParseAddrPort("10.0.2.2:40000")
	ev := func(typ mptcpevents.Type) mptcpevents.Event {
		return mptcpevents.Event{Type: typ, Token: 0xabcd0001, Local: local, Remote: join, LocID: 0, RemID: 1}
	}
	subflows := func() []SubflowInfo { in, _ := tb.Lookup(1, false); return in.Subflows }

	tb.HandleEvent(ev(mptcpevents.Established))
	tb.HandleEvent(ev(mptcpevents.SubEstablished))
	tb.HandleEvent(ev(mptcpevents.SubEstablished)) // a repeat changes nothing
	if s := subflows(); len(s) != 2 || s[1].Remote != join || s[1].RemoteID != 1 || s[1].Backup || s[1].Initial {
		t.Fatalf("after sub_established: %+v", s)
	}
	prio := ev(mptcpevents.SubPriority)
	prio.Backup = true
	tb.HandleEvent(prio)
	if s := subflows(); !s[1].Backup || s[0].Backup {
		t.Errorf("after sub_priority: %+v", s)
	}
	ann := mptcpevents.Event{Type: mptcpevents.Announced, Token: 0xabcd0001, RemID: 3, Remote: netip.MustParseAddrPort("10.0.3.3:7777")}
	tb.HandleEvent(ann)
	if in, _ := tb.Lookup(1, false); len(in.Announced) != 1 || in.Announced[0].Addr != ann.Remote {
		t.Errorf("after announced: %+v", in.Announced)
	}
	tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.Removed, Token: 0xabcd0001, RemID: 3})
	tb.HandleEvent(ev(mptcpevents.SubClosed))
	tb.HandleEvent(ev(mptcpevents.Closed))
	in, _ := tb.Lookup(1, false)
	if len(in.Subflows) != 1 || !in.Subflows[0].Initial || len(in.Announced) != 0 {
		t.Errorf("after sub_closed and removed: %+v", in)
	}
	if m := in.MPTCP; m == nil || !m.Established || !m.Closed || m.SubflowsClosed != 1 {
		t.Errorf("mptcp %+v", in.MPTCP)
	}
	tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.SubEstablished, Token: 0x0bad})
	tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.ListenerCreated})
	if got := tb.Counts(); got.Events != 8 || got.Unmatched != 1 {
		t.Errorf("counts %+v, want 8 events applied and 1 unmatched", got)
	}
}

func TestOverflowResyncs(t *testing.T) {
	tb := NewTable(0)
	e := addToken(t, tb, 1, 0xabcd0002)
	// A subflow the sockets do not have: the resync must drop it.
	tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.SubEstablished, Token: 0xabcd0002,
		Local: e.clientLocal, Remote: netip.MustParseAddrPort("10.9.9.9:1")})
	tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.Overflow})
	deadline := time.Now().Add(5 * time.Second)
	for tb.Counts().Resyncs == 0 || tb.resyncing.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("no resync after an overflow: %+v", tb.Counts())
		}
		time.Sleep(time.Millisecond)
	}
	in, _ := tb.Lookup(1, false)
	if len(in.Subflows) != 1 || !in.Subflows[0].Initial || !in.Fallback {
		t.Errorf("after resync (plain TCP socket): %+v", in)
	}
	if got := tb.Counts(); got.Overflows != 1 {
		t.Errorf("counts %+v", got)
	}
}

func TestStateAndCounters(t *testing.T) {
	tb := NewTable(0)
	c, _ := pair(t, false)
	e, err := tb.Add(Accepted{ID: 1, Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if e.State() != StateConnecting {
		t.Errorf("initial state %s", e.State())
	}
	e.SetState(StateEstablished)
	e.HalfClosed(Server)
	if e.State() != StateHalfClosedServer {
		t.Errorf("after the server's FIN: %s", e.State())
	}
	e.HalfClosed(Server)
	e.HalfClosed(Client)
	if e.State() != StateClosing {
		t.Errorf("after both FINs: %s", e.State())
	}
	if in, _ := tb.Lookup(1, false); !in.LastActivity.IsZero() || !e.LastActive().IsZero() {
		t.Errorf("active before any byte: %+v", in)
	}
	before := time.Now()
	e.Count(Client, 100)
	e.Count(Server, 200)
	in, _ := tb.Lookup(1, false)
	if in.BytesToServer != 100 || in.BytesToClient != 200 || in.LastActivity.Before(before) || !in.LastActivity.Equal(e.LastActive()) {
		t.Errorf("counters: %+v", in)
	}
	if up, down := e.Bytes(); up != 100 || down != 200 {
		t.Errorf("Bytes() = %d, %d", up, down)
	}

	c2, _ := pair(t, false)
	e2, _ := tb.Add(Accepted{ID: 2, Client: c2})
	e2.SetRefused(tlv.CodeNotAuthorized)
	in, _ = tb.Lookup(2, false)
	if in.State != StateRefused || in.ErrorCode == nil || *in.ErrorCode != 32 || in.Error != "Not Authorized" {
		t.Errorf("refusal: %+v", in)
	}
}

func TestRefreshReadsSockets(t *testing.T) {
	tb := NewTable(0)
	c, d := pair(t, false)
	e, _ := tb.Add(Accepted{ID: 1, Client: c})
	up, upPeer := pair(t, false)
	e.SetDestination(netip.MustParseAddrPort("192.0.2.1:80"))
	e.SetServer(up)
	e.SetSynAck(SynAckSynthesized)
	const n = 1 << 20
	go io.Copy(io.Discard, c)
	if _, err := d.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, upPeer)
	if _, err := up.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		in := tb.Snapshot(true).Sessions[0]
		if len(in.Subflows) == 1 && in.Subflows[0].BytesReceived == n && in.ServerTCP != nil && in.ServerTCP.BytesAcked == 1000 {
			if in.Upstream.Local != unmapped(up.LocalAddr()) || in.SynAckOptions != "synthesized" || in.RefreshError != "" {
				t.Errorf("server leg: %+v", in)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refresh did not see the bytes: %+v", in)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A closed socket keeps its last values and reports no error.
	c.Close()
	up.Close()
	if in := tb.Snapshot(true).Sessions[0]; in.RefreshError != "" || in.Subflows[0].BytesReceived != n {
		t.Errorf("after close: %+v", in)
	}
}

// TestConcurrent runs adds, removes, events, snapshots and updates at once
// (meaningful under -race).
func TestConcurrent(t *testing.T) {
	tb := NewTable(64)
	const workers, rounds = 8, 50
	conns := make([]*net.TCPConn, workers)
	for i := range conns {
		conns[i], _ = pair(t, false)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				e, err := tb.Add(Accepted{ID: uint64(w*rounds + r + 1), Client: conns[w]})
				if err != nil {
					t.Error(err)
					return
				}
				e.SetState(StateEstablished)
				e.Count(Client, 10)
				e.SetDestination(netip.MustParseAddrPort("192.0.2.1:443"))
				e.HalfClosed(Client)
				tb.Remove(e)
			}
		}()
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				tb.Snapshot(true)
				tb.Counts()
			}
		}
	}()
	go func() {
		defer readers.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.SubEstablished, Token: uint32(i % 16)})
				if i%100 == 0 {
					tb.HandleEvent(mptcpevents.Event{Type: mptcpevents.Overflow})
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
	if got := tb.Counts(); got.Active != 0 || got.Adds != workers*rounds || got.Removes != workers*rounds {
		t.Errorf("counts %+v", got)
	}
}

func TestGauges(t *testing.T) {
	tb := NewTable(0)
	a, _ := pair(t, false)
	b, _ := pair(t, false)
	ea, err := tb.Add(Accepted{Client: a})
	if err != nil {
		t.Fatal(err)
	}
	eb, err := tb.Add(Accepted{Client: b})
	if err != nil {
		t.Fatal(err)
	}
	ea.SetState(StateEstablished)
	g := tb.Gauges()
	if g.ByState[StateEstablished] != 1 || g.ByState[StateConnecting] != 1 || g.Subflows != 2 {
		t.Errorf("gauges %+v", g)
	}
	if n := eb.SubflowsSeen(); n != 1 {
		t.Errorf("plain TCP client leg: %d subflows seen", n)
	}
	tb.Remove(ea)
	if g := tb.Gauges(); g.ByState[StateEstablished] != 0 || g.Subflows != 1 {
		t.Errorf("after remove: %+v", g)
	}
}

// Entries of one client ip:port (it reached two of our addresses): the
// newest is found, and removing any one leaves the others findable.
func TestByClientSameAddress(t *testing.T) {
	tb := NewTable(0)
	c, _ := pair(t, false)
	client := unmapped(c.RemoteAddr())
	var es []*Entry
	for id := uint64(1); id <= 3; id++ {
		e := newEntry(id, Accepted{Client: c})
		if err := tb.insert(e); err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	newest := func() *Entry {
		e, _ := tb.ByClient(client)
		return e
	}
	if newest() != es[2] {
		t.Fatal("ByClient does not return the newest entry")
	}
	tb.Remove(es[1]) // the middle one
	if newest() != es[2] {
		t.Fatal("removing an older entry changed the newest")
	}
	tb.Remove(es[2]) // the newest: the oldest is next
	if newest() != es[0] {
		t.Fatalf("after removing the newest: %v, want the oldest", newest())
	}
	tb.Remove(es[0])
	if _, ok := tb.ByClient(client); ok {
		t.Fatal("an entry is still found after all were removed")
	}
}
