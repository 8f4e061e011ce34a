// Package session keeps the table of converted connections for operators:
// who is connected, through which subflows, to which server, and how many
// bytes moved. The engine registers a session at accept and updates it
// cheaply; MPTCP path-manager events keep the subflow list live; a
// snapshot can refresh counters from the sockets themselves.
package session

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultLimit is the table size when NewTable is given 0; it matches the
// engine's default session cap.
const DefaultLimit = 100000

var (
	// ErrFull is returned by Add when the table holds its limit.
	ErrFull = errors.New("session table full")
	// ErrDuplicateID is returned by Add for an id already in the table.
	ErrDuplicateID = errors.New("session id already in the table")
)

// Accepted describes a session at accept time.
type Accepted struct {
	// ID identifies the session; 0 lets the table number it. An engine
	// that numbers its sessions should always pass its own, so that logs
	// and the table agree (mixing both can collide: ErrDuplicateID).
	ID uint64
	// Client is the accepted client leg.
	Client *net.TCPConn
	// Original is the destination the client's SYN was addressed to, in
	// transparent mode; zero otherwise.
	Original netip.AddrPort
	// Start is the accept time; zero means now.
	Start time.Time
}

// Table holds the sessions in progress. It is safe for concurrent use.
type Table struct {
	limit  int
	nextID atomic.Uint64

	mu      sync.RWMutex
	byID    map[uint64]*Entry
	byToken map[uint32]*Entry
	// byClient holds the newest entry of each client ip:port; older ones
	// with the same ip:port (it may reach two of our addresses) follow
	// through Entry.olderSameClient: no slice per client.
	byClient map[netip.AddrPort]*Entry

	adds, removes, refused     atomic.Uint64
	events, unmatched, resyncs atomic.Uint64
	overflows                  atomic.Uint64
	resyncing, resyncWanted    atomic.Bool
}

// NewTable returns an empty table holding at most limit sessions (0 means
// DefaultLimit).
func NewTable(limit int) *Table {
	if limit <= 0 {
		limit = DefaultLimit
	}
	return &Table{
		limit:    limit,
		byID:     make(map[uint64]*Entry),
		byToken:  make(map[uint32]*Entry),
		byClient: make(map[netip.AddrPort]*Entry),
	}
}

// Add registers a session just accepted. It reads the client leg's local
// MPTCP token (MPTCP_INFO) to index the entry for path-manager events; a
// client that is not MPTCP is marked fallback. It fails with ErrFull past
// the limit, which it counts.
func (t *Table) Add(a Accepted) (*Entry, error) {
	if a.Client == nil {
		return nil, errors.New("add session: no client connection")
	}
	id := a.ID
	if id == 0 {
		id = t.nextID.Add(1)
	}
	e := newEntry(id, a)
	info, err := e.readToken()
	if err != nil {
		return nil, fmt.Errorf("add session %d: read the client's MPTCP token: %w", id, err)
	}

	// Hold e.mu until seeded: events for the token wait, then apply on top.
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := t.insert(e); err != nil {
		return nil, err
	}
	e.seed(info) // the token's MPTCP_INFO read, not a second one
	return e, nil
}

func (t *Table) insert(e *Entry) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, dup := t.byID[e.id]; dup {
		t.refused.Add(1)
		return fmt.Errorf("add session %d: %w", e.id, ErrDuplicateID)
	}
	if len(t.byID) >= t.limit {
		t.refused.Add(1)
		return fmt.Errorf("add session %d: %w (%d sessions)", e.id, ErrFull, t.limit)
	}
	t.byID[e.id] = e
	if e.hasToken {
		t.byToken[e.token] = e // a token is unique among live connections
	}
	e.olderSameClient = t.byClient[e.clientAddr]
	t.byClient[e.clientAddr] = e
	t.adds.Add(1)
	return nil
}

// Remove takes e out of the table when its session ends. It reports
// whether e was there.
func (t *Table) Remove(e *Entry) bool {
	if e == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byID[e.id] != e {
		return false
	}
	delete(t.byID, e.id)
	if e.hasToken && t.byToken[e.token] == e {
		delete(t.byToken, e.token)
	}
	if head := t.byClient[e.clientAddr]; head == e {
		if e.olderSameClient == nil {
			delete(t.byClient, e.clientAddr)
		} else {
			t.byClient[e.clientAddr] = e.olderSameClient
		}
	} else {
		for x := head; x != nil; x = x.olderSameClient {
			if x.olderSameClient == e {
				x.olderSameClient = e.olderSameClient
				break
			}
		}
	}
	e.olderSameClient = nil
	t.removes.Add(1)
	return true
}

// Get returns the session with id.
func (t *Table) Get(id uint64) (*Entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.byID[id]
	return e, ok
}

// ByToken returns the session whose client leg has the local MPTCP token.
func (t *Table) ByToken(token uint32) (*Entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.byToken[token]
	return e, ok
}

// ByClient returns the newest session whose initial subflow came from
// client (IPv4-mapped addresses match their IPv4 form).
func (t *Table) ByClient(client netip.AddrPort) (*Entry, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e := t.byClient[unmap(client)]
	return e, e != nil
}

// Len returns the number of sessions in the table.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byID)
}

// Counts are the table's counters since it was made.
type Counts struct {
	Active  int    `json:"active"`
	Limit   int    `json:"limit"`
	Adds    uint64 `json:"adds"`
	Removes uint64 `json:"removes"`
	// Refused counts Adds refused (full table or duplicate id).
	Refused uint64 `json:"refused"`
	// Events counts path-manager events applied to an entry; Unmatched
	// those for tokens not in the table (other sockets, or sessions not
	// added yet).
	Events    uint64 `json:"events"`
	Unmatched uint64 `json:"events_unmatched"`
	// Overflows counts lost-event reports; Resyncs the full socket reads
	// they caused.
	Overflows uint64 `json:"event_overflows"`
	Resyncs   uint64 `json:"resyncs"`
}

// Counts returns the counters.
func (t *Table) Counts() Counts {
	return Counts{
		Active: t.Len(), Limit: t.limit,
		Adds: t.adds.Load(), Removes: t.removes.Load(), Refused: t.refused.Load(),
		Events: t.events.Load(), Unmatched: t.unmatched.Load(),
		Overflows: t.overflows.Load(), Resyncs: t.resyncs.Load(),
	}
}

// Gauges are what the table holds now, for a metrics collector.
type Gauges struct {
	// ByState counts the sessions in each state.
	ByState [NumStates]int
	// Subflows counts the client legs' subflows open, as the entries
	// know them (path-manager events and the last socket read; a plain
	// TCP client leg is one).
	Subflows int
}

// Gauges counts the sessions by state and their subflows: one pass over
// the table, no system call.
func (t *Table) Gauges() Gauges {
	t.mu.RLock()
	list := make([]*Entry, 0, len(t.byID))
	for _, e := range t.byID {
		list = append(list, e)
	}
	t.mu.RUnlock()
	var g Gauges
	for _, e := range list {
		if st := e.State(); st < NumStates {
			g.ByState[st]++
		}
		g.Subflows += e.subflowsOpen()
	}
	return g
}

// entries returns the sessions ordered by id.
func (t *Table) entries() []*Entry {
	t.mu.RLock()
	list := make([]*Entry, 0, len(t.byID))
	for _, e := range t.byID {
		list = append(list, e)
	}
	t.mu.RUnlock()
	slices.SortFunc(list, func(a, b *Entry) int {
		switch {
		case a.id < b.id:
			return -1
		case a.id > b.id:
			return 1
		}
		return 0
	})
	return list
}

// Snapshot returns every session as plain values, ordered by id. With
// refresh, it first reads each session's sockets (MPTCP_INFO, subflows,
// tcp_info): a few system calls per session.
func (t *Table) Snapshot(refresh bool) Snapshot {
	list := t.entries()
	s := Snapshot{Sessions: make([]Info, 0, len(list))}
	for _, e := range list {
		if refresh {
			e.refresh()
		}
		s.Sessions = append(s.Sessions, e.info())
	}
	return s
}

// Lookup returns one session as plain values, refreshed from its sockets
// if asked.
func (t *Table) Lookup(id uint64, refresh bool) (Info, bool) {
	e, ok := t.Get(id)
	if !ok {
		return Info{}, false
	}
	if refresh {
		e.refresh()
	}
	return e.info(), true
}
