package tlv

import (
	"bytes"
	"encoding/binary"
	"iter"
	"net/netip"
)

// maxTLVs bounds the TLVs of a message that passed validation: each type may
// appear once, and a request or reply admits at most this many types.
const maxTLVs = 6

// TLV is one decoded TLV. Value holds every byte after Type and Length,
// padding included, exactly as on the wire: encoding a parsed TLV gives back
// the same bytes. After parsing, Value aliases the input buffer.
type TLV struct {
	Type   Type
	Length uint8 // in words, Type and Length included
	Value  []byte
}

// Message is a Convert message: the fixed header and its TLVs in wire order.
// The zero value is an empty message ready for Add.
type Message struct {
	Version     uint8
	TotalLength uint8 // in words, header included; set by Parse and Append

	tlvs [maxTLVs]TLV
	n    uint8
	wire []byte // the parsed bytes, for echoes; nil for built messages
}

// TLVs returns the TLVs in the order they appear on the wire. After a
// refused parse it holds the TLVs that were decoded before the fault, for
// dissectors.
func (m *Message) TLVs() []TLV { return m.tlvs[:m.n] }

// Reset empties m for reuse.
func (m *Message) Reset() { *m = Message{} }

// Add appends a TLV to the message. It reports false when the message
// already holds that type or is full: RFC 8803 §6.2.1 allows each type once.
func (m *Message) Add(t TLV) bool {
	if m.n == maxTLVs || m.has(t.Type) {
		return false
	}
	m.tlvs[m.n] = t
	m.n++
	m.wire = nil
	return true
}

func (m *Message) has(t Type) bool {
	_, ok := m.find(t)
	return ok
}

func (m *Message) find(t Type) (TLV, bool) {
	for _, x := range m.tlvs[:m.n] {
		if x.Type == t {
			return x, true
		}
	}
	return TLV{}, false
}

// Info reports whether the message carries an Info TLV.
func (m *Message) Info() bool { return m.has(TypeInfo) }

// Connect returns the Connect TLV, decoded.
func (m *Message) Connect() (Connect, bool) {
	t, ok := m.find(TypeConnect)
	if !ok {
		return Connect{}, false
	}
	c, err := decodeConnect(t.Value)
	return c, err == nil
}

// Cookie returns the opaque cookie of the Cookie TLV with its trailing zero
// padding removed (RFC 8803 §6.2.7: padding cannot be told from content, so
// cookies are compared without it).
func (m *Message) Cookie() ([]byte, bool) {
	t, ok := m.find(TypeCookie)
	if !ok || len(t.Value) < cookieValuePrefix {
		return nil, false
	}
	return trimZeros(t.Value[cookieValuePrefix:]), true
}

// ExtendedTCPHeader returns the option bytes of an Extended TCP Header TLV,
// zero padding included: trailing zeros may belong to an option (a window
// scale of 0, a timestamp ending in 00), and to a TCP header the padding
// reads as EOL, which HeaderOptions stops at.
func (m *Message) ExtendedTCPHeader() ([]byte, bool) {
	t, ok := m.find(TypeExtendedTCPHeader)
	if !ok || len(t.Value) < extendedHeaderValuePrefix {
		return nil, false
	}
	return t.Value[extendedHeaderValuePrefix:], true
}

// SupportedTCPExtensions returns the listed option kinds; kind 0 is never
// listed, so zeros are padding.
func (m *Message) SupportedTCPExtensions() ([]byte, bool) {
	t, ok := m.find(TypeSupportedTCPExtensions)
	if !ok || len(t.Value) < supportedExtensionsValuePrefix {
		return nil, false
	}
	return trimZeros(t.Value[supportedExtensionsValuePrefix:]), true
}

// Error returns the Error TLV.
func (m *Message) Error() (ErrorTLV, bool) {
	t, ok := m.find(TypeError)
	if !ok || len(t.Value) < 1 {
		return ErrorTLV{}, false
	}
	return ErrorTLV{Code: ErrorCode(t.Value[0]), Value: t.Value[1:]}, true
}

// Connect is the Connect TLV (RFC 8803 §6.2.5).
type Connect struct {
	Port uint16
	// Addr is the remote peer. IPv4-mapped addresses are unmapped, so an
	// IPv4 destination is a plain 4-byte address.
	Addr netip.Addr
	// Options is the raw TCP Options field of an Extended Connect, zero
	// padding included; empty for a Base Connect.
	Options []byte
}

// AddrPort returns the destination as one value.
func (c Connect) AddrPort() netip.AddrPort { return netip.AddrPortFrom(c.Addr, c.Port) }

// Extended reports whether the Connect carries a TCP Options field.
func (c Connect) Extended() bool { return len(c.Options) > 0 }

// TCPOption is one entry of a TCP options list. Data excludes the kind and
// length bytes and aliases the parsed buffer.
type TCPOption struct {
	Kind uint8
	Data []byte
}

// ConnectOptions walks the TCP Options field of a Connect TLV. It yields
// every option but NOP and stops at the zero padding; it must only be used
// on fields that passed ValidateConnectOptions.
func (c Connect) ConnectOptions() iter.Seq[TCPOption] {
	return func(yield func(TCPOption) bool) {
		b := c.Options
		for len(b) > 0 {
			switch b[0] {
			case OptEOL:
				return
			case OptNOP:
				b = b[1:]
				continue
			}
			if len(b) < 2 || int(b[1]) < 2 || int(b[1]) > len(b) {
				return
			}
			if !yield(TCPOption{Kind: b[0], Data: b[2:b[1]]}) {
				return
			}
			b = b[b[1]:]
		}
	}
}

// HeaderOptions walks TCP options as they sit in a TCP header (Extended TCP
// Header TLV): NOP is yielded as a one-byte option, EOL ends the list (the
// TLV padding reads as EOL), and an option that does not fit ends the walk.
func HeaderOptions(b []byte) iter.Seq[TCPOption] {
	return func(yield func(TCPOption) bool) {
		for len(b) > 0 {
			if b[0] == OptEOL {
				return
			}
			if b[0] == OptNOP {
				if !yield(TCPOption{Kind: b[0]}) {
					return
				}
				b = b[1:]
				continue
			}
			if len(b) < 2 || int(b[1]) < 2 || int(b[1]) > len(b) {
				return
			}
			if !yield(TCPOption{Kind: b[0], Data: b[2:b[1]]}) {
				return
			}
			b = b[b[1]:]
		}
	}
}

// ErrorTLV is the Error TLV (RFC 8803 §6.2.8). Value holds every byte after
// the code, padding included.
type ErrorTLV struct {
	Code  ErrorCode
	Value []byte
}

// Echo returns the echoed message of a Malformed or Unsupported Message
// error (the bytes after the leading zero byte).
func (e ErrorTLV) Echo() []byte {
	if !e.Code.echoes() || len(e.Value) < 1 {
		return nil
	}
	return e.Value[1:]
}

// MissingCookie returns the cookie carried by a Missing Cookie error,
// without its trailing padding.
func (e ErrorTLV) MissingCookie() []byte {
	if e.Code != CodeMissingCookie || len(e.Value) < 1 {
		return nil
	}
	return trimZeros(e.Value[1:])
}

// Backoff returns the suggested delay in seconds of Resource Exceeded and
// Network Failure; 0 means the default of at least 30 s.
func (e ErrorTLV) Backoff() uint8 {
	if len(e.Value) == 0 {
		return 0
	}
	return e.Value[0]
}

// List returns the one-byte entries of Unsupported Version (versions) and
// Unsupported TCP Option (kinds), without padding.
func (e ErrorTLV) List() []byte { return trimZeros(e.Value) }

func decodeConnect(v []byte) (Connect, error) {
	// v starts after Type and Length: port (2), address (16), options.
	if len(v) < connectFixedLen-2 {
		return Connect{}, errShortConnect
	}
	c := Connect{
		Port: binary.BigEndian.Uint16(v[0:2]),
		Addr: netip.AddrFrom16([16]byte(v[2:18])).Unmap(),
	}
	if len(v) > 18 {
		c.Options = v[18:]
	}
	return c, nil
}

func trimZeros(b []byte) []byte {
	return b[:len(bytes.TrimRight(b, "\x00"))]
}
