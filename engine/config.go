// Package engine is the converter itself: it listens for Convert clients,
// reads and validates their Convert message, applies the policy, dials the
// server leg, answers with the Convert reply and relays bytes both ways.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/convert-tc/converter/cookie"
	"github.com/convert-tc/converter/nat"
	sessions "github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
)

// DefaultListen is the lab convention: RFC 8803 has no IANA port.
const DefaultListen = "[::]:5124"

// Config is everything the engine needs; zero fields take the defaults of
// WithDefaults.
type Config struct {
	// Listen holds the addresses to listen on (dual stack for [::]).
	Listen []string
	// FreeBind lets a listener bind an address that is not (yet) local:
	// a cluster node's VIP, put on its device once it is ready.
	FreeBind bool
	// Listeners, when set, are used instead of opening Listen: a caller
	// that owns its sockets (a test on loopback, a daemon handed its
	// listeners). The Server closes them when it stops.
	Listeners []*net.TCPListener
	// Inherited are the listening sockets a predecessor process handed
	// over (Server.HandOverListeners): a configured one whose address is
	// one of Listen is used instead of opening it; a transparent per-port
	// one is held for the predecessor's sessions, whose joins may need it,
	// until PredecessorDone is closed, and then kept like one opened here.
	Inherited       []HandedListener
	PredecessorDone <-chan struct{}
	// Dial, when set, opens every server leg instead of the engine's own
	// dialer (source address, transparency and TFO are then the caller's):
	// it connects to dest and has early sent first.
	Dial func(ctx context.Context, dest netip.AddrPort, early []byte) (*net.TCPConn, error)
	// HandshakeTimeout bounds the wait for the Client's Convert message and
	// for the Client's handshake to complete before the reply.
	HandshakeTimeout time.Duration
	// DialTimeout bounds the server-leg connect; past it the Client gets
	// Network Failure.
	DialTimeout time.Duration
	// DrainTimeout bounds the drain after an Error TLV was sent.
	DrainTimeout time.Duration
	// IdleTimeout closes a session in which no byte moved for so long;
	// 0 means never.
	IdleTimeout time.Duration
	// ShutdownDrain is how long Serve lets sessions run to their end once
	// its context ends, before it aborts them; negative: no drain.
	ShutdownDrain time.Duration

	// Cookies turns on cookie mode (RFC 8803 §6.2.7) when not nil.
	Cookies *cookie.Keys
	// AllowClients, when not empty, lists the only Client prefixes served.
	AllowClients []netip.Prefix
	// Deny lists destination prefixes refused with Not Authorized.
	Deny []netip.Prefix
	// AllowDestinations opens special-purpose ranges (private, shared,
	// link-local, documentation...: addrpolicy.SpecialRanges), which are
	// refused with Not Authorized by default. Destinations that this
	// host's routing table delivers locally, or broadcasts or multicasts,
	// stay refused whatever this says.
	AllowDestinations []netip.Prefix

	// MaxSessions caps the sessions in progress (pending and relaying).
	MaxSessions int
	// MaxPendingPerClient caps the sessions of one client that have not
	// reached the relay yet (RFC 8803 §9.3); MaxSessionsPerClient all of
	// its sessions; MaxHandshakes the sessions of every client that have
	// not reached the relay. RatePerClient caps the new sessions of one
	// client per second (RFC 6888 REQ-4c), a negative value turns it
	// off. A client is an IPv4 address or an IPv6 prefix of
	// ClientPrefixV6 bits, also for NAT pairing.
	MaxPendingPerClient  int
	MaxSessionsPerClient int
	MaxHandshakes        int
	RatePerClient        int
	ClientPrefixV6       int
	// Backoff is the delay in seconds suggested with Resource Exceeded
	// (0 means the protocol default of at least 30 s).
	Backoff uint8

	// SupportedOptions reports the TCP option kinds honoured in a Connect;
	// SupportedKinds is the list announced in answer to Info.
	SupportedOptions func(kind uint8) bool
	SupportedKinds   []byte

	Logger *slog.Logger

	// Transparent makes the listeners IP_TRANSPARENT, so that SYNs steered
	// to them while addressed to the real server are accepted; sessions
	// then record the original destination beside the Connect one.
	Transparent bool

	// ReservedPorts are ports the engine never opens or closes a
	// per-port listener on: announced endpoint ports, which the kernel
	// listens on itself.
	ReservedPorts []uint16
	// MaxTransparentPorts caps the per-port transparent listeners that
	// take the joins of steered connections (one per destination port in
	// use).
	MaxTransparentPorts int

	// Joins, when set, learns the MPTCP token of every accepted client
	// connection for as long as the session lives, and the ports of the
	// per-port listeners, so that MP_JOIN SYNs toward the original
	// destination are steered to the converter (transparent mode).
	Joins JoinSteering
	// SynAcks, when set, holds the exact TCP options of server-leg
	// SYN+ACKs; the Extended TCP Header then copies them instead of
	// rebuilding them from TCP_INFO.
	SynAcks SynAckSource
	// SynHold, when set, holds the SYN+ACK to MPTCP clients that sent
	// their Convert message in the SYN until the server leg's connect
	// has an outcome (RFC 8803's timing): the client's connect succeeds
	// only when the server's did, and a refused server is a refused
	// connect (a RST, or an ICMP unreachable where the server's was one).
	SynHold SynHolder

	// NAT, when set, sources every server leg from the shared pool
	// (address sharing, RFC 8803 §4.4.2); nil uses the converter's own
	// address as any proxy does.
	NAT *nat.Pool
	// Preserve sources every server leg from the client's own address (the
	// initial subflow's) with IP_TRANSPARENT when the families match
	// (RFC 8803 §4.4.1); with NAT also set, other legs use the pool
	// (mixed policy). The replies must be delivered to this host: the
	// steering program marks them on the server-facing interfaces.
	Preserve bool
	// VerifyClientFirst holds the server-leg connect until the client's
	// handshake completed, so that a spoofed source never makes the
	// server see a SYN (RFC 8803 §9: preservation relies on ingress
	// filtering otherwise). It costs one client round trip.
	VerifyClientFirst bool
	// Hairpin allows destinations that are addresses of the shared pool
	// (RFC 8803 §9.2 allows hairpinning; disabled it is Not Authorized).
	Hairpin bool

	// Table receives every session for operators; nil gives the Server a
	// table of its own, bounded by MaxSessions.
	Table *sessions.Table
}

// WithDefaults returns c with every unset field at its default.
func (c Config) WithDefaults() Config {
	if len(c.Listen) == 0 {
		c.Listen = []string{DefaultListen}
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 3 * time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.ShutdownDrain == 0 {
		c.ShutdownDrain = DefaultShutdownDrain
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 2 * time.Second
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 100000
	}
	if c.MaxPendingPerClient == 0 {
		c.MaxPendingPerClient = DefaultMaxPendingPerClient
	}
	if c.MaxSessionsPerClient == 0 {
		c.MaxSessionsPerClient = DefaultMaxSessionsPerClient
	}
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = DefaultMaxHandshakes
	}
	switch {
	case c.RatePerClient == 0:
		c.RatePerClient = DefaultRatePerClient
	case c.RatePerClient < 0:
		c.RatePerClient = 0 // no rate limit
	}
	if c.MaxTransparentPorts == 0 {
		c.MaxTransparentPorts = DefaultMaxTransparentPorts
	}
	if c.ClientPrefixV6 == 0 {
		c.ClientPrefixV6 = DefaultClientPrefixV6
	}
	if c.SupportedOptions == nil {
		c.SupportedOptions = tlv.ReferenceOptions
		c.SupportedKinds = tlv.ReferenceSupportedKinds()
	}
	if c.Table == nil {
		c.Table = sessions.NewTable(c.MaxSessions)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if c.MaxSessions < 0 || c.MaxPendingPerClient < 0 || c.MaxSessionsPerClient < 0 || c.MaxHandshakes < 0 {
		return errors.New("session limits must not be negative")
	}
	if c.ClientPrefixV6 < 1 || c.ClientPrefixV6 > 128 {
		return fmt.Errorf("IPv6 client prefix /%d: want 1 to 128", c.ClientPrefixV6)
	}
	for _, d := range []time.Duration{c.HandshakeTimeout, c.DialTimeout, c.DrainTimeout, c.IdleTimeout} {
		if d < 0 {
			return fmt.Errorf("timeout %v must not be negative", d)
		}
	}
	return nil
}

// JoinSteering is the steering program's token and listener-port maps.
type JoinSteering interface {
	AddToken(token uint32) error
	RemoveToken(token uint32) error
	AddListenerPort(port uint16) error
	RemoveListenerPort(port uint16) error
}

// SynHolder is the SYN+ACK hold (package synhold).
type SynHolder interface {
	// Take returns the hold of the accepted connection from client to
	// local, or nil when its SYN+ACK was not held.
	Take(client, local netip.AddrPort) HeldSynAck
}

// HeldSynAck is the client's SYN+ACK, held. Each method decides once and
// reports late when the SYN+ACK went already at the longest hold (the
// client's connect succeeded: a failure then needs the Error TLV).
type HeldSynAck interface {
	Release() (late bool)              // send it now
	Refuse() (late bool)               // never send it: the caller resets the client leg
	Unreachable(code byte) (late bool) // an ICMP unreachable with code instead; then reset
}

// SynAckSource gives the TCP options of the SYN+ACK that answered a server
// leg, by the leg's 4-tuple: local (getsockname) and remote (getpeername).
type SynAckSource interface {
	Lookup(local, remote netip.AddrPort) ([]byte, bool)
	Delete(local, remote netip.AddrPort) error
}
