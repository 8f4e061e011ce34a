package session

import (
	"net/netip"
	"time"

	"github.com/convert-tc/converter/tlv"
)

// Snapshot is the table as `converter sessions --json` prints it.
type Snapshot struct {
	Sessions []Info `json:"sessions"`
}

// Info is one session in a Snapshot. Addresses encode as "ip:port"
// ("[ip6]:port"), or "" while unknown.
type Info struct {
	ID          uint64         `json:"id"`
	Token       Token          `json:"token"` // 00000000 when not MPTCP at accept
	Client      netip.AddrPort `json:"client"`
	Destination netip.AddrPort `json:"destination"`
	Upstream    Upstream       `json:"upstream"`
	State       State          `json:"state"`
	// Bytes relayed, as the engine counts them.
	BytesToServer int64         `json:"bytes_to_server"`
	BytesToClient int64         `json:"bytes_to_client"`
	Fallback      bool          `json:"fallback"`
	Subflows      []SubflowInfo `json:"subflows"`

	// ClientLocal is the converter's end of the initial subflow.
	ClientLocal netip.AddrPort `json:"client_local"`
	// OriginalDestination is where the client's SYN was addressed, in
	// transparent mode.
	OriginalDestination netip.AddrPort `json:"original_destination,omitzero"`
	SynAckOptions       string         `json:"syn_ack_options,omitempty"` // "exact", "synthesized" or "missing"
	// SynHold says how the client's SYN+ACK was timed (converter run
	// --syn-hold): "held" (sent once the server had answered),
	// "released_at_cap" (sent at --syn-hold-max); empty when not held.
	SynHold string `json:"syn_hold,omitempty"`
	// ServerSource says how the upstream local address was chosen: "own",
	// "preserved" (the client's address) or "shared" (the pool).
	ServerSource string    `json:"server_source,omitempty"`
	Started      time.Time `json:"started"`
	LastActivity time.Time `json:"last_activity,omitzero"`
	// ErrorCode and Error name the Error TLV sent to a refused client.
	ErrorCode    *uint8          `json:"error_code,omitempty"`
	Error        string          `json:"error,omitempty"`
	MPTCP        *MPTCPInfo      `json:"mptcp,omitempty"`
	ServerTCP    *TCPSummary     `json:"server_tcp,omitempty"`
	Announced    []AnnouncedAddr `json:"announced,omitempty"`
	RefreshError string          `json:"refresh_error,omitempty"`
}

// Upstream is the server leg's 4-tuple.
type Upstream struct {
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
}

// SubflowInfo is one subflow of the client leg. The counters come from
// the subflow's tcp_info at the last refresh.
type SubflowInfo struct {
	Local         netip.AddrPort `json:"local"`
	Remote        netip.AddrPort `json:"remote"`
	BytesSent     uint64         `json:"bytes_sent"`
	BytesReceived uint64         `json:"bytes_received"`
	RTTMicros     uint32         `json:"rtt_us"`
	Backup        bool           `json:"backup"`
	Retransmits   uint32         `json:"retransmits"`
	Initial       bool           `json:"initial"`
	LocalID       uint8          `json:"local_id"`
	RemoteID      uint8          `json:"remote_id"`
	IfIndex       int32          `json:"if_index,omitempty"`
}

// TCPSummary is the part of a tcp_info an operator looks at.
type TCPSummary struct {
	State         string `json:"state"`
	RTTMicros     uint32 `json:"rtt_us"`
	Retransmits   uint32 `json:"retransmits"` // segments, over the connection's life
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
	BytesAcked    uint64 `json:"bytes_acked"`
}

// MPTCPInfo is the connection-level MPTCP state: flags from path-manager
// events, counters from MPTCP_INFO at the last refresh.
type MPTCPInfo struct {
	Established    bool   `json:"established"`
	Closed         bool   `json:"closed"`
	SubflowsTotal  int    `json:"subflows_total"`
	SubflowsClosed int    `json:"subflows_closed"`
	BytesSent      uint64 `json:"bytes_sent"`
	BytesReceived  uint64 `json:"bytes_received"`
	BytesRetrans   uint64 `json:"bytes_retrans"`
}

// AnnouncedAddr is an address the client announced (ADD_ADDR).
type AnnouncedAddr struct {
	ID   uint8          `json:"id"`
	Addr netip.AddrPort `json:"addr"`
}

// info copies the entry into plain values.
func (e *Entry) info() Info {
	in := Info{
		ID:                  e.id,
		Token:               Token(e.token),
		Client:              e.clientAddr,
		ClientLocal:         e.clientLocal,
		OriginalDestination: e.original,
		State:               e.State(),
		Started:             e.Start(),
		LastActivity:        e.LastActive(),
	}
	in.BytesToServer, in.BytesToClient = e.Bytes()
	e.mu.Lock()
	defer e.mu.Unlock()
	in.Destination, in.Upstream = e.dest, upstreamOf(e.server)
	if e.server == nil && e.detachedUpstream != nil {
		in.Upstream = *e.detachedUpstream
	}
	in.Fallback = e.fallback
	in.SynAckOptions = e.synAck.String()
	in.SynHold = e.synHold.String()
	in.ServerSource = e.source.String()
	if e.errCode >= 0 {
		c := uint8(e.errCode)
		in.ErrorCode, in.Error = &c, tlv.ErrorCode(c).String()
	}
	if !e.fallback {
		m := e.mptcp
		in.MPTCP = &m
	}
	if e.serverTCP != nil {
		s := *e.serverTCP
		in.ServerTCP = &s
	}
	in.Announced = append([]AnnouncedAddr(nil), e.announced...)
	in.RefreshError = e.refreshErr
	in.Subflows = make([]SubflowInfo, 0, len(e.subflows))
	for _, sf := range e.subflows {
		in.Subflows = append(in.Subflows, SubflowInfo{
			Local: sf.local, Remote: sf.remote,
			BytesSent: sf.tcp.BytesSent, BytesReceived: sf.tcp.BytesReceived,
			RTTMicros: sf.tcp.RTTMicros, Retransmits: sf.tcp.Retransmits,
			Backup: sf.backup, Initial: sf.local == e.clientLocal && sf.remote == e.clientAddr,
			LocalID: sf.locID, RemoteID: sf.remID, IfIndex: sf.ifIndex,
		})
	}
	return in
}
