package session

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/convert-tc/converter/internal/mptcpevents"
	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

// Entry is one converted connection: the record of its identity and the
// state the engine shares with operators. Its methods are safe for
// concurrent use; the engine updates it while the control server reads it.
type Entry struct {
	// Set at creation, then read-only.
	id                      uint64
	start                   int64                       // Unix nanoseconds (8 bytes where a time.Time takes 24)
	client                  atomic.Pointer[net.TCPConn] // replaced only when an idle session is attached again
	clientAddr, clientLocal netip.AddrPort              // the initial subflow
	original                netip.AddrPort
	token                   uint32
	hasToken                bool

	// Guarded by mu; small fields packed beside the token (every idle
	// session holds an entry).
	fallback bool
	synAck   SynAckSource
	source   ServerSource
	synHold  SynHold

	// Atomics: the relay updates them per chunk, without the lock.
	state atomic.Uint32

	// Guarded by mu.
	errCode int16  // -1 until refused
	seen    uint16 // subflows the session had over its life (saturating)

	toServer, toClient, lastActive atomic.Int64 // lastActive in Unix nanoseconds

	mu         sync.Mutex
	server     *net.TCPConn
	dest       netip.AddrPort
	mptcp      MPTCPInfo
	subflows   []subflow
	announced  []AnnouncedAddr
	serverTCP  *TCPSummary
	refreshErr string

	olderSameClient  *Entry    // guarded by the table's lock (Table.byClient)
	detachedUpstream *Upstream // the server leg's addresses while the legs are let go (SetLegs)
}

// subflow is what the table knows of one subflow: identity and priority
// from path-manager events, counters from the last socket refresh.
type subflow struct {
	local, remote netip.AddrPort
	locID, remID  uint8
	backup        bool
	ifIndex       int32
	tcp           TCPSummary
}

func newEntry(id uint64, a Accepted) *Entry {
	start := a.Start
	if start.IsZero() {
		start = time.Now()
	}
	e := &Entry{id: id, start: start.UnixNano(), original: a.Original, errCode: -1}
	e.client.Store(a.Client)
	if a.Client != nil {
		e.clientAddr = unmapped(a.Client.RemoteAddr())
		e.clientLocal = unmapped(a.Client.LocalAddr())
	}
	return e
}

// NewEntry returns an entry that is in no table, for a session the table
// refused (full): the engine keeps one record per connection either way.
// Its token is read as Add does, so that joins can still be steered.
func NewEntry(a Accepted) *Entry {
	e := newEntry(a.ID, a)
	if a.Client != nil {
		e.readToken() // an error leaves it without a token, like a plain client
	}
	return e
}

// readToken reads the client leg's local MPTCP token (MPTCP_INFO); a
// client that is not MPTCP is marked fallback. Called before the entry is
// shared.
func (e *Entry) readToken() (sockinfo.MPTCPInfo, error) {
	info, err := sockinfo.GetMPTCPInfo(e.client.Load())
	switch {
	case errors.Is(err, sockinfo.ErrNotMPTCP):
		e.fallback = true
	case err != nil:
		return info, err
	default:
		e.token, e.hasToken, e.fallback = info.Token, true, info.Fallback
	}
	return info, nil
}

// ID returns the session id.
func (e *Entry) ID() uint64 { return e.id }

// Token returns the local MPTCP token; ok is false for a client that was
// not MPTCP at accept.
func (e *Entry) Token() (token uint32, ok bool) { return e.token, e.hasToken }

// Multipath reports whether the client leg is MPTCP and has not fallen
// back to TCP, as far as the entry knows (at accept, and at each refresh).
func (e *Entry) Multipath() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.hasToken && !e.fallback
}

// ClientAddr returns the client's address and port on the initial subflow.
func (e *Entry) ClientAddr() netip.AddrPort { return e.clientAddr }

// Client returns the client leg.
func (e *Entry) Client() *net.TCPConn { return e.client.Load() }

// SetLegs replaces both legs: nil while an idle session has let go of its
// connections (the entry keeps the server leg's addresses), then new
// connections over the same sockets.
func (e *Entry) SetLegs(client, server *net.TCPConn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if server == nil && e.server != nil {
		up := upstreamOf(e.server)
		e.detachedUpstream = &up
	} else if server != nil {
		e.detachedUpstream = nil
	}
	e.client.Store(client)
	e.server = server
}

// Start returns the accept time.
func (e *Entry) Start() time.Time { return time.Unix(0, e.start) }

// Original returns where the client's SYN was addressed, in transparent
// mode; zero otherwise.
func (e *Entry) Original() netip.AddrPort { return e.original }

// State returns the current state.
func (e *Entry) State() State { return State(e.state.Load()) }

// SetState records the session's state.
func (e *Entry) SetState(s State) { e.state.Store(uint32(s)) }

// HalfClosed records that side ended its direction: the session becomes
// half-closed, or closing once both sides have ended.
func (e *Entry) HalfClosed(by Side) {
	mine, other := StateHalfClosedClient, StateHalfClosedServer
	if by == Server {
		mine, other = other, mine
	}
	for {
		cur := State(e.state.Load())
		next := mine
		switch cur {
		case other:
			next = StateClosing
		case mine, StateClosing, StateRefused:
			return
		}
		if e.state.CompareAndSwap(uint32(cur), uint32(next)) {
			return
		}
	}
}

// Count adds n bytes relayed from side and marks the session active. It
// is the relay's per-chunk call: two atomic operations, no lock.
func (e *Entry) Count(from Side, n int64) {
	if from == Client {
		e.toServer.Add(n)
	} else {
		e.toClient.Add(n)
	}
	e.lastActive.Store(time.Now().UnixNano())
}

// Touch marks the session active without counting bytes.
func (e *Entry) Touch() { e.lastActive.Store(time.Now().UnixNano()) }

// LastActive returns when the last byte was relayed (or Touch called),
// the zero time before.
func (e *Entry) LastActive() time.Time {
	ns := e.lastActive.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// Bytes returns the bytes relayed toward the server and toward the client.
func (e *Entry) Bytes() (toServer, toClient int64) {
	return e.toServer.Load(), e.toClient.Load()
}

// SetDestination records the Connect TLV's destination.
func (e *Entry) SetDestination(dest netip.AddrPort) {
	e.mu.Lock()
	e.dest = unmap(dest)
	e.mu.Unlock()
}

// Destination returns the Connect TLV's destination, zero until known.
func (e *Entry) Destination() netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dest
}

// Server returns the server leg, nil until connected.
func (e *Entry) Server() *net.TCPConn {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.server
}

// SetServer records the server leg once it is connected.
func (e *Entry) SetServer(c *net.TCPConn) {
	e.mu.Lock()
	e.server = c
	e.mu.Unlock()
}

// upstreamOf is the server leg's addresses (the connection keeps them
// after it is closed); zero before the leg is connected.
func upstreamOf(c *net.TCPConn) Upstream {
	if c == nil {
		return Upstream{}
	}
	return Upstream{Local: unmapped(c.LocalAddr()), Remote: unmapped(c.RemoteAddr())}
}

// SetSynAck records how the Extended TCP Header sent to the client was made.
func (e *Entry) SetSynAck(src SynAckSource) {
	e.mu.Lock()
	e.synAck = src
	e.mu.Unlock()
}

// SetSynHold records how the client's SYN+ACK was timed.
func (e *Entry) SetSynHold(h SynHold) {
	e.mu.Lock()
	e.synHold = h
	e.mu.Unlock()
}

// SynAck returns how the Extended TCP Header was made.
func (e *Entry) SynAck() SynAckSource {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.synAck
}

// SetSource records how the server leg's source address was chosen.
func (e *Entry) SetSource(how ServerSource) {
	e.mu.Lock()
	e.source = how
	e.mu.Unlock()
}

// SetRefused records the Error TLV sent to the client.
func (e *Entry) SetRefused(code tlv.ErrorCode) {
	e.mu.Lock()
	e.errCode = int16(code)
	e.mu.Unlock()
	e.SetState(StateRefused)
}

// seed sets the subflows known at accept. A second MPTCP_INFO read after
// the entry became findable by token tells whether a subflow joined
// before: its event went unmatched, so the sockets are read instead.
// Called with e.mu held, so events wait until the seed is in place.
func (e *Entry) seed(info sockinfo.MPTCPInfo) {
	e.seen = 1
	if e.fallback || !e.hasToken {
		e.subflows = []subflow{{local: e.clientLocal, remote: e.clientAddr}}
		return
	}
	if info.TotalSubflows() <= 1 {
		e.mptcp.update(info)
		// Room for the join that MPTCP clients mostly open next.
		e.subflows = append(make([]subflow, 0, 2), subflow{local: e.clientLocal, remote: e.clientAddr})
		return
	}
	e.refreshLocked()
}

// apply updates the entry from a path-manager event of its token.
func (e *Entry) apply(ev mptcpevents.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch ev.Type {
	case mptcpevents.Established:
		e.mptcp.Established = true
	case mptcpevents.Closed:
		e.mptcp.Closed = true
	case mptcpevents.Announced:
		e.announced = slices.DeleteFunc(e.announced, func(a AnnouncedAddr) bool { return a.ID == ev.RemID })
		e.announced = append(e.announced, AnnouncedAddr{ID: ev.RemID, Addr: ev.Remote})
	case mptcpevents.Removed:
		e.announced = slices.DeleteFunc(e.announced, func(a AnnouncedAddr) bool { return a.ID == ev.RemID })
	case mptcpevents.SubEstablished:
		sf := e.subflow(ev.Local, ev.Remote)
		if sf == nil {
			e.subflows = append(e.subflows, subflow{local: ev.Local, remote: ev.Remote})
			sf = &e.subflows[len(e.subflows)-1]
			e.seen = addSeen(e.seen)
		}
		sf.locID, sf.remID, sf.backup, sf.ifIndex = ev.LocID, ev.RemID, ev.Backup, ev.IfIndex
	case mptcpevents.SubClosed:
		e.subflows = slices.DeleteFunc(e.subflows, func(s subflow) bool { return s.local == ev.Local && s.remote == ev.Remote })
		e.mptcp.SubflowsClosed++
	case mptcpevents.SubPriority:
		if sf := e.subflow(ev.Local, ev.Remote); sf != nil {
			sf.backup = ev.Backup
		}
	}
}

// SubflowsSeen returns how many subflows the client leg had over its
// life, as path-manager events and socket reads told (at least the
// initial one).
func (e *Entry) SubflowsSeen() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return int(max(e.seen, 1))
}

// addSeen counts one more subflow, saturating.
func addSeen(n uint16) uint16 {
	if n == ^uint16(0) {
		return n
	}
	return n + 1
}

// subflowsOpen returns how many subflows the client leg has now.
func (e *Entry) subflowsOpen() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.subflows)
}

func (e *Entry) subflow(local, remote netip.AddrPort) *subflow {
	for i := range e.subflows {
		if e.subflows[i].local == local && e.subflows[i].remote == remote {
			return &e.subflows[i]
		}
	}
	return nil
}

func unmapped(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return netip.AddrPort{}
	}
	return unmap(ta.AddrPort())
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	if !ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
