package session

import "github.com/convert-tc/converter/internal/mptcpevents"

// HandleEvent applies an MPTCP path-manager event to the session of its
// token: sub_established adds a subflow, sub_closed removes it,
// sub_priority sets its backup flag, announced/removed track the client's
// addresses, established/closed mark the connection. An Overflow event
// (events were lost) starts a resynchronisation of every session from its
// sockets, in the background. Pass it to mptcpevents.Listener.Run.
func (t *Table) HandleEvent(ev mptcpevents.Event) {
	switch ev.Type {
	case mptcpevents.Overflow:
		t.overflows.Add(1)
		t.requestResync()
		return
	case mptcpevents.ListenerCreated, mptcpevents.ListenerClosed:
		return // not about a connection
	}
	e, ok := t.ByToken(ev.Token)
	if !ok {
		t.unmatched.Add(1)
		return
	}
	t.events.Add(1)
	e.apply(ev)
}

// Resync re-reads every session's subflows from its sockets, replacing
// what events said. It is what HandleEvent runs after an Overflow.
func (t *Table) Resync() {
	t.resyncs.Add(1)
	for _, e := range t.entries() {
		e.refresh()
	}
}

// requestResync runs Resync in one background goroutine at a time; a
// request made while it runs makes it run once more, since the running
// pass may have read sockets before the lost events.
func (t *Table) requestResync() {
	t.resyncWanted.Store(true)
	if t.resyncing.CompareAndSwap(false, true) {
		go t.resyncLoop()
	}
}

func (t *Table) resyncLoop() {
	for {
		for t.resyncWanted.Swap(false) {
			t.Resync()
		}
		t.resyncing.Store(false)
		// A request between the last Swap and the Store found resyncing
		// set and left: take it unless another goroutine did.
		if !t.resyncWanted.Load() || !t.resyncing.CompareAndSwap(false, true) {
			return
		}
	}
}
