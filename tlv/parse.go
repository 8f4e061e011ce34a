package tlv

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Action is what a converter does with a message it refuses.
type Action uint8

const (
	// ActionReply: send the Error TLV, shut down writing, drain, close.
	ActionReply Action = iota
	// ActionReset: reset the connection without any Convert reply
	// (Total Length 0, RFC 8803 §6.1).
	ActionReset
	// ActionAbort: no Convert TLV at all; RFC 8803 §6 says to ignore such a
	// SYN silently, and once the kernel accepted it, an abort is the nearest
	// equivalent.
	ActionAbort
)

func (a Action) String() string {
	switch a {
	case ActionReply:
		return "reply"
	case ActionReset:
		return "reset"
	case ActionAbort:
		return "abort"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// ParseError is a refused message: the Error code to answer with, the Value
// that goes with it, and why.
type ParseError struct {
	Action Action
	Code   ErrorCode // meaningful when Action is ActionReply
	Reason string
	// Offset is where in the message the problem lies.
	Offset int
	// Truncated means the input ended before the message did; reading more
	// bytes may make it parse.
	Truncated bool
	// value is the Error TLV Value after the code; for the echo codes it is
	// the echoed message (the leading zero byte is added on encoding).
	value []byte
}

func (e *ParseError) Error() string {
	if e.Action != ActionReply {
		return fmt.Sprintf("convert message refused (%s): %s", e.Action, e.Reason)
	}
	return fmt.Sprintf("convert message refused with %s (%d): %s", e.Code, uint8(e.Code), e.Reason)
}

// Value returns the Error TLV Value after the code, as AppendReply encodes
// it (without the zero byte of the echo form).
func (e *ParseError) Value() []byte { return e.value }

// AppendReply appends the whole Convert reply (header and Error TLV) that
// answers this error. It appends nothing for ActionReset and ActionAbort.
func (e *ParseError) AppendReply(b []byte) []byte {
	if e.Action != ActionReply {
		return b
	}
	if e.Code.echoes() {
		return AppendErrorMessage(b, e.Code, nil, e.value)
	}
	return AppendErrorMessage(b, e.Code, e.value, nil)
}

var errShortConnect = errors.New("connect TLV shorter than 20 bytes")

// direction selects the validation rules of one side of the protocol.
type direction uint8

const (
	request direction = iota // Client to converter
	reply                    // converter to Client
)

// ParseRequest parses the Client's Convert message at the start of b into m
// and returns its length in bytes; what follows is application data. It
// applies steps 1 to 8 of the validation order (spec §7): framing, TLV
// types, duplicates, TLV lengths, and the presence of Connect or Info.
// The destination and the TCP options are checked by CheckDestination and
// CheckConnectOptions, whose turn comes after the cookie check.
//
// m's TLVs alias b. It never allocates unless it returns an error.
func ParseRequest(b []byte, m *Message) (int, error) {
	return parse(b, m, request)
}

// ParseReply parses the converter's Convert message at the start of b with
// the rules for replies: a header-only message is accepted, and only the
// converter's TLVs (Extended TCP Header, Supported TCP Extensions, Error)
// may appear.
func ParseReply(b []byte, m *Message) (int, error) {
	return parse(b, m, reply)
}

func parse(b []byte, m *Message, dir direction) (int, error) {
	m.Reset()
	if len(b) == 0 {
		// Nothing at all: a SYN without Convert data is ignored (spec §7.1).
		return 0, &ParseError{Action: ActionAbort, Truncated: true, Reason: "no bytes"}
	}
	if len(b) < HeaderLen {
		return 0, truncated(b, "fewer than 4 bytes of header")
	}
	m.Version, m.TotalLength = b[0], b[1]
	if m.Version != Version1 {
		return 0, &ParseError{Code: CodeUnsupportedVersion, value: []byte{Version1},
			Reason: fmt.Sprintf("version %d", m.Version)}
	}
	if magic := binary.BigEndian.Uint16(b[2:4]); magic != Magic {
		return 0, malformed(b[:HeaderLen], 2, fmt.Sprintf("magic 0x%04x, want 0x2263", magic))
	}
	switch m.TotalLength {
	case 0:
		return 0, &ParseError{Action: ActionReset, Offset: 1, Reason: "total length 0"}
	case 1:
		if dir == request {
			return 0, &ParseError{Action: ActionAbort, Offset: 1, Reason: "header without TLVs"}
		}
		return HeaderLen, nil
	}
	end := int(m.TotalLength) * WordLen
	if len(b) < end {
		return 0, truncated(b, fmt.Sprintf("message of %d bytes, only %d received", end, len(b)))
	}
	msg := b[:end]
	m.wire = msg
	for off := HeaderLen; off < end; {
		t, err := nextTLV(msg, off, m, dir)
		if err != nil {
			return 0, err
		}
		m.tlvs[m.n] = t
		m.n++
		off += int(t.Length) * WordLen
	}
	if dir == request && !m.has(TypeConnect) && !m.has(TypeInfo) {
		return 0, malformed(msg, HeaderLen, "neither Connect nor Info TLV")
	}
	return end, nil
}

// nextTLV checks the TLV at off: steps 7a to 7e.
func nextTLV(msg []byte, off int, m *Message, dir direction) (TLV, error) {
	// off is word aligned and below len(msg), a word multiple: Type and
	// Length are always inside the message.
	typ, words := Type(msg[off]), msg[off+1]
	if words == 0 {
		return TLV{}, malformed(msg, off, fmt.Sprintf("%s TLV with length 0", typ))
	}
	end := off + int(words)*WordLen
	if end > len(msg) {
		return TLV{}, malformed(msg, off, fmt.Sprintf("%s TLV of %d bytes runs past total length", typ, int(words)*WordLen))
	}
	if !accepted(typ, dir) {
		return TLV{}, &ParseError{Code: CodeUnsupportedMessage, Offset: off, value: echo(msg),
			Reason: fmt.Sprintf("TLV type %d (%s) not accepted from the %s", uint8(typ), typ, dir.sender())}
	}
	if m.has(typ) || m.n == maxTLVs {
		return TLV{}, malformed(msg, off, fmt.Sprintf("duplicate %s TLV", typ))
	}
	switch {
	case typ == TypeInfo && words != 1:
		return TLV{}, malformed(msg, off, fmt.Sprintf("Info TLV of length %d, want 1", words))
	case typ == TypeConnect && words < connectBaseWords:
		return TLV{}, malformed(msg, off, fmt.Sprintf("Connect TLV of length %d, want at least 5", words))
	}
	return TLV{Type: typ, Length: words, Value: msg[off+2 : end]}, nil
}

func accepted(t Type, dir direction) bool {
	if dir == request {
		return t == TypeInfo || t == TypeConnect || t == TypeCookie
	}
	return t == TypeExtendedTCPHeader || t == TypeSupportedTCPExtensions || t == TypeError
}

func (d direction) sender() string {
	if d == request {
		return "client"
	}
	return "converter"
}

// ValidateRequest runs every step of the validation order that needs no
// converter policy: ParseRequest, then CheckDestination, then
// CheckConnectOptions with the kinds supports honours. Steps 9 (cookie) and
// 11 (authorisation) belong to the converter and are skipped.
func ValidateRequest(b []byte, m *Message, supports func(kind uint8) bool) (int, error) {
	n, err := ParseRequest(b, m)
	if err != nil {
		return n, err
	}
	if err := m.CheckDestination(); err != nil {
		return 0, err
	}
	if err := m.CheckConnectOptions(supports); err != nil {
		return 0, err
	}
	return n, nil
}

// ReferenceOptions reports the kinds the reference configuration honours in
// a Connect: SACK-Permitted, Timestamps and MPTCP. TFO (34) is not among
// them: sockets cannot pass a TFO option through (spec §8.9).
func ReferenceOptions(kind uint8) bool {
	return kind == OptSACKPermitted || kind == OptTimestamps || kind == OptMPTCP
}

// ReferenceSupportedKinds is the Supported TCP Extensions list that goes
// with ReferenceOptions.
func ReferenceSupportedKinds() []byte {
	return []byte{OptSACKPermitted, OptTimestamps, OptMPTCP}
}

// CheckDestination applies step 10: a Connect naming port 0 or an
// unspecified, loopback, multicast or broadcast address is Malformed
// (RFC 8803 §6.2.5; port 0 and unspecified are our decision).
func (m *Message) CheckDestination() error {
	t, ok := m.find(TypeConnect)
	if !ok {
		return nil
	}
	c, err := decodeConnect(t.Value)
	if err != nil {
		return malformed(m.raw(), m.offsetOf(TypeConnect), err.Error())
	}
	reason := ""
	a := c.Addr
	switch {
	case c.Port == 0:
		reason = "port 0"
	case a.IsUnspecified():
		reason = "unspecified address " + a.String()
	case a.IsLoopback():
		reason = "loopback address " + a.String()
	case a.IsMulticast():
		reason = "multicast address " + a.String()
	case a.Is4() && a.As4() == [4]byte{255, 255, 255, 255}:
		reason = "broadcast address " + a.String()
	default:
		return nil
	}
	return malformed(m.raw(), m.offsetOf(TypeConnect)+2, "forbidden destination: "+reason)
}

// CheckConnectOptions applies step 12 to an Extended Connect: the TCP
// Options field must be well formed (Malformed Message otherwise), and after
// dropping the kinds a converter ignores, every kind must be one the
// converter honours (supports reports which); the others are refused with
// Unsupported TCP Option, listed in order of appearance.
func (m *Message) CheckConnectOptions(supports func(kind uint8) bool) error {
	t, ok := m.find(TypeConnect)
	if !ok {
		return nil
	}
	c, _ := decodeConnect(t.Value)
	base := m.offsetOf(TypeConnect) + connectFixedLen
	if off, reason := ValidateConnectOptions(c.Options); reason != "" {
		return malformed(m.raw(), base+off, reason)
	}
	var refused []byte
	for o := range c.ConnectOptions() {
		if !IgnoredConnectOption(o.Kind) && !supports(o.Kind) {
			refused = append(refused, o.Kind)
		}
	}
	if len(refused) > 0 {
		return &ParseError{Code: CodeUnsupportedTCPOption, Offset: base, value: refused,
			Reason: fmt.Sprintf("unsupported TCP option kinds %v", refused)}
	}
	return nil
}

// ValidateConnectOptions checks the structure of a Connect TCP Options
// field: a 0 byte ends the list and all after it must be zero (padding); a 1
// (NOP) is skipped; any other kind needs a length byte >= 2 that fits. It
// returns the offset and reason of the first fault, or "" when valid.
func ValidateConnectOptions(b []byte) (int, string) {
	for off := 0; off < len(b); {
		switch b[off] {
		case OptEOL:
			for i := off; i < len(b); i++ {
				if b[i] != 0 {
					return i, "non-zero byte in the padding after the options"
				}
			}
			return 0, ""
		case OptNOP:
			off++
			continue
		}
		if off+1 >= len(b) {
			return off, fmt.Sprintf("option kind %d without a length byte", b[off])
		}
		n := int(b[off+1])
		if n < 2 {
			return off, fmt.Sprintf("option kind %d with length %d", b[off], n)
		}
		if off+n > len(b) {
			return off, fmt.Sprintf("option kind %d of length %d overruns the TLV", b[off], n)
		}
		off += n
	}
	return 0, ""
}

// raw returns the message bytes the TLVs were parsed from, or for a message
// built with Add, its encoding.
func (m *Message) raw() []byte {
	if m.wire != nil {
		return m.wire
	}
	b, _ := m.Append(nil)
	return b
}

func (m *Message) offsetOf(t Type) int {
	off := HeaderLen
	for _, x := range m.tlvs[:m.n] {
		if x.Type == t {
			return off
		}
		off += int(x.Length) * WordLen
	}
	return off
}

func malformed(msg []byte, off int, reason string) *ParseError {
	return &ParseError{Code: CodeMalformedMessage, Offset: off, Reason: reason, value: echo(msg)}
}

func truncated(b []byte, reason string) *ParseError {
	return &ParseError{Code: CodeMalformedMessage, Offset: len(b), Reason: "truncated: " + reason,
		Truncated: true, value: echo(b)}
}

// echo returns what a Malformed or Unsupported Message reply echoes: the
// received message, cut so the reply fits in 1020 bytes (spec §7).
func echo(msg []byte) []byte {
	return msg[:min(len(msg), MaxEchoLen)]
}
