package session

import (
	"encoding"
	"fmt"
	"strconv"
)

// State is where a session is in its life, as the engine reports it.
type State uint32

const (
	// StateConnecting: accepted, Convert message being read or the server
	// leg being dialed.
	StateConnecting State = iota
	// StateEstablished: the reply was sent, bytes are relayed both ways.
	StateEstablished
	// StateHalfClosedClient: the client ended its direction (FIN); the
	// server may still send.
	StateHalfClosedClient
	// StateHalfClosedServer: the server ended its direction.
	StateHalfClosedServer
	// StateClosing: both directions ended or the session was aborted.
	StateClosing
	// StateRefused: the client was answered with an Error TLV.
	StateRefused
	// NumStates is the number of states.
	NumStates
)

var stateNames = [...]string{
	StateConnecting:       "connecting",
	StateEstablished:      "established",
	StateHalfClosedClient: "half-closed-client",
	StateHalfClosedServer: "half-closed-server",
	StateClosing:          "closing",
	StateRefused:          "refused",
}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText writes the state's name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state name.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if n == string(b) {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("session: unknown state %q", b)
}

// Side names a leg of a session.
type Side uint8

const (
	Client Side = iota
	Server
)

// ServerSource says how the server leg's source address was chosen.
type ServerSource uint8

const (
	SourceUnknown   ServerSource = iota
	SourceOwn                    // the converter's own address
	SourcePreserved              // the client's address
	SourceShared                 // a mapping from the shared pool
)

func (s ServerSource) String() string {
	switch s {
	case SourceOwn:
		return "own"
	case SourcePreserved:
		return "preserved"
	case SourceShared:
		return "shared"
	}
	return ""
}

// SynAckSource says how the Extended TCP Header returned to the client was
// made: copied from the server's SYN-ACK, or rebuilt from TCP_INFO.
type SynAckSource uint8

const (
	SynAckUnknown SynAckSource = iota
	SynAckExact
	SynAckSynthesized
	// SynAckMissing: the SYN+ACK was held but its capture was not found;
	// the reply carries no Extended TCP Header rather than a made-up one.
	SynAckMissing
)

func (s SynAckSource) String() string {
	switch s {
	case SynAckExact:
		return "exact"
	case SynAckSynthesized:
		return "synthesized"
	case SynAckMissing:
		return "missing"
	}
	return ""
}

// SynHold says how the converter timed its SYN+ACK to the client.
type SynHold uint8

const (
	SynHoldNone  SynHold = iota // not held: sent at once
	SynHoldHeld                 // sent once the server had answered
	SynHoldAtCap                // sent at the longest hold, before the server answered
)

func (h SynHold) String() string {
	switch h {
	case SynHoldHeld:
		return "held"
	case SynHoldAtCap:
		return "released_at_cap"
	}
	return ""
}

// Token is an MPTCP connection token. It is written as 8 hex digits, the
// form `ss -M` and the kernel's debug output use.
type Token uint32

func (t Token) String() string { return fmt.Sprintf("%08x", uint32(t)) }

// MarshalText writes 8 hex digits.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText reads hex digits.
func (t *Token) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 16, 32)
	if err != nil {
		return fmt.Errorf("session: token %q: %w", b, err)
	}
	*t = Token(v)
	return nil
}

var (
	_ encoding.TextMarshaler   = State(0)
	_ encoding.TextUnmarshaler = (*State)(nil)
	_ encoding.TextMarshaler   = Token(0)
	_ encoding.TextUnmarshaler = (*Token)(nil)
)
