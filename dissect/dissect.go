// Package dissect shows one Convert message (RFC 8803) the way a packet
// dissector would: the header, each TLV with its fields decoded, the bytes
// that follow the message, and, for a message its receiver would refuse,
// what the receiver does and why. A Message renders as one JSON object
// (JSON, MarshalJSON) or as indented text lines (Text).
//
// A request is checked with every validation step that needs no converter
// policy and the reference set of honoured TCP options
// (tlv.ReferenceOptions); cookies and authorisation are not checked. A
// reply is checked with the rules the Client applies.
package dissect

import (
	"encoding/binary"
	"errors"
	"slices"

	"github.com/convert-tc/converter/tlv"
)

// Direction says who sent a message.
type Direction uint8

const (
	Request Direction = iota // Client to converter
	Reply                    // converter to Client
)

// String is "request" or "reply".
func (d Direction) String() string {
	if d == Reply {
		return "reply"
	}
	return "request"
}

// Message is one message as the converter (or the Client, for a reply)
// reads it. It keeps the bytes it was decoded from: they must not change
// while the Message is in use.
type Message struct {
	msg   tlv.Message // the TLVs decoded, also when the message is refused
	input []byte
	end   int             // where the message ends in input; trailing bytes follow
	err   *tlv.ParseError // nil when valid
}

// Decode reads the message at the start of b, sent in direction dir. It
// never fails: a message the receiver would refuse is a Message whose Err
// says why, with the TLVs read before the refusal when there are any.
func Decode(b []byte, dir Direction) *Message {
	m := &Message{input: b}
	var n int
	var err error
	if dir == Reply {
		n, err = tlv.ParseReply(b, &m.msg)
	} else {
		n, err = tlv.ValidateRequest(b, &m.msg, tlv.ReferenceOptions)
	}
	m.err = parseErrorOf(err)
	m.end = messageEnd(b, n, m.err)
	return m
}

// Err is why the receiver refuses the message, or nil when it is valid.
func (m *Message) Err() *tlv.ParseError { return m.err }

// Incomplete reports whether the message is refused only because the bytes
// end before it does: more bytes may make it valid, or refused otherwise.
func (m *Message) Incomplete() bool { return m.err != nil && m.err.Truncated }

// Version is the version byte, 0 when there are no bytes. Header fields are
// read from the wire, so that a message refused before its header was
// stored still shows them.
func (m *Message) Version() int { return byteAt(m.input, 0) }

// TotalLength is the Total Length byte (in 4-byte words), 0 when there is
// none.
func (m *Message) TotalLength() int { return byteAt(m.input, 1) }

// TrailingBytes counts the bytes after the message: application data that
// rode with it. A refused message whose header is usable ends at its Total
// Length (or at the end of the bytes if shorter); one whose header is not
// (short, other version, bad magic, length 0) takes all the bytes.
func (m *Message) TrailingBytes() int { return len(m.input) - m.end }

func parseErrorOf(err error) *tlv.ParseError {
	if err == nil {
		return nil
	}
	var pe *tlv.ParseError
	if errors.As(err, &pe) {
		return pe
	}
	return &tlv.ParseError{Code: tlv.CodeMalformedMessage, Reason: err.Error()}
}

// messageEnd is where a message ends in b; see TrailingBytes.
func messageEnd(b []byte, n int, pe *tlv.ParseError) int {
	if pe == nil {
		return n
	}
	if len(b) < tlv.HeaderLen || b[0] != tlv.Version1 || b[1] == 0 ||
		binary.BigEndian.Uint16(b[2:4]) != tlv.Magic {
		return len(b)
	}
	return min(len(b), int(b[1])*tlv.WordLen)
}

// byteAt is b[i], or 0 past the end of b.
func byteAt(b []byte, i int) int {
	if i < len(b) {
		return int(b[i])
	}
	return 0
}

// tlvView is one TLV with its fields decoded, shared by both output forms.
type tlvView struct {
	t       tlv.TLV
	connect *tlv.Connect
	options []tlv.TCPOption // Connect and Extended TCP Header
	errTLV  *tlv.ErrorTLV
	cookie  []byte
	kinds   []byte
}

func viewTLVs(m *tlv.Message) []tlvView {
	ts := m.TLVs()
	vs := make([]tlvView, 0, len(ts))
	for _, t := range ts {
		vs = append(vs, viewTLV(m, t))
	}
	return vs
}

// viewTLV decodes t with the accessors of m; each type appears once in a
// message, so they find t.
func viewTLV(m *tlv.Message, t tlv.TLV) tlvView {
	v := tlvView{t: t}
	switch t.Type {
	case tlv.TypeConnect:
		if c, ok := m.Connect(); ok {
			v.connect = &c
			v.options = slices.Collect(c.ConnectOptions())
		}
	case tlv.TypeExtendedTCPHeader:
		v.options = extHeaderOptions(t.Value)
	case tlv.TypeSupportedTCPExtensions:
		v.kinds, _ = m.SupportedTCPExtensions()
	case tlv.TypeCookie:
		v.cookie, _ = m.Cookie()
	case tlv.TypeError:
		if e, ok := m.Error(); ok {
			v.errTLV = &e
		}
	}
	return v
}

// extHeaderOptions lists the options of an Extended TCP Header TLV Value
// (after its Unassigned field), up to the EOL that the padding reads as.
func extHeaderOptions(value []byte) []tlv.TCPOption {
	opts := []tlv.TCPOption{}
	if len(value) < 2 {
		return opts
	}
	for o := range tlv.HeaderOptions(value[2:]) {
		opts = append(opts, o)
	}
	return opts
}
