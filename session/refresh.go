package session

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/convert-tc/converter/sockinfo"
)

// refresh reads the kernel's view of both legs into the entry.
func (e *Entry) refresh() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.refreshLocked()
}

// refreshLocked reads MPTCP_INFO, the subflows and their tcp_info, and
// the server leg's tcp_info. A closed socket keeps its last values: the
// session is ending and its entry about to go.
func (e *Entry) refreshLocked() {
	var errs []string
	if client := e.client.Load(); client != nil {
		if err := e.refreshClient(client); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err.Error())
		}
	}
	if e.server != nil {
		t, err := sockinfo.GetTCPInfo(e.server)
		switch {
		case err == nil:
			s := summarize(t)
			e.serverTCP = &s
		case !errors.Is(err, net.ErrClosed):
			errs = append(errs, fmt.Sprintf("read TCP_INFO of the server leg: %v", err))
		}
	}
	e.refreshErr = strings.Join(errs, "; ")
}

func (e *Entry) refreshClient(client *net.TCPConn) error {
	if !e.fallback {
		info, err := sockinfo.GetMPTCPInfo(client)
		switch {
		case errors.Is(err, sockinfo.ErrNotMPTCP):
			e.fallback = true // MPTCP can fall back after accept
		case err != nil:
			return fmt.Errorf("read MPTCP_INFO of the client leg: %w", err)
		default:
			e.mptcp.update(info)
			e.fallback = info.Fallback
		}
	}
	if e.fallback {
		// One plain TCP connection: report it as the only subflow.
		t, err := sockinfo.GetTCPInfo(client)
		if err != nil {
			return fmt.Errorf("read TCP_INFO of the client leg: %w", err)
		}
		e.subflows = []subflow{{local: e.clientLocal, remote: e.clientAddr, tcp: summarize(t)}}
		return nil
	}
	subs, err := sockinfo.GetSubflows(client)
	if err != nil {
		return fmt.Errorf("read the client leg's subflows: %w", err)
	}
	// The sockets are the truth for which subflows exist; events add what
	// sockets do not tell (ids, backup, interface).
	next := make([]subflow, 0, len(subs))
	for _, s := range subs {
		sf := subflow{local: s.Local, remote: s.Remote}
		if old := e.subflow(s.Local, s.Remote); old != nil {
			sf = *old
		} else if s.Local != e.clientLocal || s.Remote != e.clientAddr {
			e.seen = addSeen(e.seen) // joined without an event seen (yet)
		}
		sf.tcp = summarize(s.TCP)
		next = append(next, sf)
	}
	e.subflows = next
	return nil
}

func summarize(t sockinfo.TCPInfo) TCPSummary {
	return TCPSummary{
		State:         sockinfo.StateName(t.State),
		RTTMicros:     t.RTT,
		Retransmits:   t.TotalRetrans,
		BytesSent:     t.BytesSent,
		BytesReceived: t.BytesReceived,
		BytesAcked:    t.BytesAcked,
	}
}

// update takes MPTCP_INFO's counters. The established event usually
// comes before accept returns, so before the entry exists: the peer's key
// having arrived says the same.
func (m *MPTCPInfo) update(info sockinfo.MPTCPInfo) {
	m.Established = m.Established || info.RemoteKeyReceived()
	m.SubflowsTotal = info.TotalSubflows()
	m.BytesSent = info.BytesSent
	m.BytesReceived = info.BytesReceived
	m.BytesRetrans = info.BytesRetrans
}
