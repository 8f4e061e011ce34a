// Package mptcpevents receives the events of the kernel's MPTCP path
// manager: the generic netlink family "mptcp_pm" and its multicast group
// "mptcp_pm_events" (include/uapi/linux/mptcp_pm.h).
//
// The kernel multicasts these events per network namespace, and a netlink
// socket belongs to the network namespace of the thread that creates it.
// Open a Listener on a thread that is in the converter's namespace (or pass
// that namespace in Config.NetNS); a Listener opened elsewhere silently sees
// the events of the wrong namespace. Joining the group needs CAP_NET_ADMIN.
package mptcpevents

import (
	"fmt"
	"net/netip"
)

// Type is an MPTCP path-manager event (enum mptcp_event_type), carried as
// the generic netlink command of each event message.
type Type uint8

// Event types of Linux 6.18. Overflow is not a kernel event: it reports that
// the kernel dropped events because the socket's receive buffer was full.
const (
	Created         Type = 1  // MPTCP_EVENT_CREATED: a new MPTCP connection
	Established     Type = 2  // MPTCP_EVENT_ESTABLISHED: it may open subflows
	Closed          Type = 3  // MPTCP_EVENT_CLOSED: the connection stopped
	Announced       Type = 6  // MPTCP_EVENT_ANNOUNCED: the peer announced an address
	Removed         Type = 7  // MPTCP_EVENT_REMOVED: the peer removed an address
	SubEstablished  Type = 10 // MPTCP_EVENT_SUB_ESTABLISHED: a subflow joined
	SubClosed       Type = 11 // MPTCP_EVENT_SUB_CLOSED: a subflow ended
	SubPriority     Type = 13 // MPTCP_EVENT_SUB_PRIORITY: a subflow's backup flag changed
	ListenerCreated Type = 15 // MPTCP_EVENT_LISTENER_CREATED: a path-manager listener
	ListenerClosed  Type = 16 // MPTCP_EVENT_LISTENER_CLOSED

	// Overflow means events were lost (ENOBUFS): state kept from events must
	// be resynchronised from the sockets.
	Overflow Type = 255
)

var typeNames = map[Type]string{
	Created: "created", Established: "established", Closed: "closed",
	Announced: "announced", Removed: "removed",
	SubEstablished: "sub_established", SubClosed: "sub_closed", SubPriority: "sub_priority",
	ListenerCreated: "listener_created", ListenerClosed: "listener_closed",
	Overflow: "overflow",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Bits of Event.Flags (MPTCP_PM_EV_FLAG_* in include/uapi/linux/mptcp.h).
const (
	FlagDenyJoinID0 uint16 = 0x1 // the peer refuses joins to its initial address
	FlagServerSide  uint16 = 0x2 // we accepted the connection (Linux 6.18+)
)

// Event is one path-manager event. Which fields are set depends on Type
// (see the comments of enum mptcp_event_type); absent ones are zero.
//
// Addresses are from this host's point of view: Local is the kernel's
// saddr/sport, Remote its daddr/dport. IPv4-mapped IPv6 addresses are
// unmapped so that they compare equal to the addresses of package sockinfo.
type Event struct {
	Type  Type
	Token uint32 // the local token, as in MPTCP_INFO's mptcpi_token
	// Family is AF_INET or AF_INET6 as the kernel reports it.
	Family        uint16
	Local, Remote netip.AddrPort
	LocID, RemID  uint8
	Backup        bool
	// Error is a copy of the subflow's sk_err on sub_closed (0: none).
	Error uint32
	Flags uint16
	// ServerSide is true when this host accepted the connection; Linux 6.18
	// reports it both as an attribute and as FlagServerSide.
	ServerSide  bool
	Timeout     uint32
	IfIndex     int32
	ResetReason uint32
	ResetFlags  uint32
}

// String formats e for logs and test output.
func (e Event) String() string {
	s := fmt.Sprintf("%s token=%08x", e.Type, e.Token)
	if e.Local.IsValid() || e.Remote.IsValid() {
		s += fmt.Sprintf(" local=%s remote=%s", e.Local, e.Remote)
	}
	if e.Type == SubEstablished || e.Type == SubClosed || e.Type == SubPriority {
		s += fmt.Sprintf(" loc_id=%d rem_id=%d backup=%t if=%d", e.LocID, e.RemID, e.Backup, e.IfIndex)
	}
	if e.Error != 0 {
		s += fmt.Sprintf(" error=%d", e.Error)
	}
	if e.ServerSide {
		s += " server_side"
	}
	return s
}
