package tlv

import (
	"encoding/binary"
	"fmt"
)

// BeginMessage appends a fixed header whose Total Length EndMessage fills in.
func BeginMessage(b []byte) []byte {
	return append(b, Version1, 0, Magic>>8, Magic&0xff)
}

// EndMessage sets the Total Length of the message that starts at b[start:]
// and checks that it fits the 8-bit word count.
func EndMessage(b []byte, start int) ([]byte, error) {
	n := len(b) - start
	if n%WordLen != 0 || n < HeaderLen {
		return b, fmt.Errorf("convert message of %d bytes is not word aligned", n)
	}
	if n > MaxMessageLen {
		return b, fmt.Errorf("convert message of %d bytes exceeds %d", n, MaxMessageLen)
	}
	b[start+1] = byte(n / WordLen)
	return b, nil
}

// AppendTLV appends one TLV: Type, Length, the value parts one after the
// other, then zero padding to the next word boundary.
func AppendTLV(b []byte, t Type, parts ...[]byte) []byte {
	start := len(b)
	b = append(b, byte(t), 0)
	for _, p := range parts {
		b = append(b, p...)
	}
	for (len(b)-start)%WordLen != 0 {
		b = append(b, 0)
	}
	b[start+1] = byte((len(b) - start) / WordLen)
	return b
}

// AppendInfo appends an Info TLV (01 01 00 00).
func AppendInfo(b []byte) []byte { return append(b, byte(TypeInfo), 1, 0, 0) }

// AppendConnect appends a Connect TLV: Base when c has no options,
// Extended otherwise. IPv4 addresses are written IPv4-mapped.
func AppendConnect(b []byte, c Connect) []byte {
	var fixed [18]byte
	binary.BigEndian.PutUint16(fixed[0:2], c.Port)
	a := c.Addr.As16() // IPv4 comes out IPv4-mapped
	copy(fixed[2:], a[:])
	return AppendTLV(b, TypeConnect, fixed[:], c.Options)
}

// AppendExtendedTCPHeader appends an Extended TCP Header TLV carrying the
// given TCP option bytes (the Server's SYN+ACK options).
func AppendExtendedTCPHeader(b []byte, options []byte) []byte {
	return AppendTLV(b, TypeExtendedTCPHeader, []byte{0, 0}, options)
}

// AppendSupportedTCPExtensions appends a Supported TCP Extensions TLV.
func AppendSupportedTCPExtensions(b []byte, kinds []byte) []byte {
	return AppendTLV(b, TypeSupportedTCPExtensions, []byte{0, 0}, kinds)
}

// AppendCookie appends a Cookie TLV.
func AppendCookie(b []byte, cookie []byte) []byte {
	return AppendTLV(b, TypeCookie, []byte{0, 0}, cookie)
}

// AppendError appends an Error TLV. For Malformed and Unsupported Message
// pass the received message as echo: it is written after a zero byte and
// cut so that the reply fits in 1020 bytes. For the other codes pass value.
func AppendError(b []byte, code ErrorCode, value, echoed []byte) []byte {
	if code.echoes() {
		return AppendTLV(b, TypeError, []byte{byte(code), 0}, echo(echoed))
	}
	if len(value) == 0 {
		// Every code has at least one Value byte (zero when meaningless).
		value = []byte{0}
	}
	return AppendTLV(b, TypeError, []byte{byte(code)}, value)
}

// AppendErrorMessage appends a whole error reply: header and Error TLV.
func AppendErrorMessage(b []byte, code ErrorCode, value, echoed []byte) []byte {
	start := len(b)
	b = AppendError(BeginMessage(b), code, value, echoed)
	b, _ = EndMessage(b, start) // cannot fail: the echo is capped
	return b
}

// Append encodes the message: header, then each TLV with its Value as is
// (padded if short). A parsed message encodes to the bytes it came from.
func (m *Message) Append(b []byte) ([]byte, error) {
	start := len(b)
	b = BeginMessage(b)
	for _, t := range m.tlvs[:m.n] {
		b = AppendTLV(b, t.Type, t.Value)
	}
	return EndMessage(b, start)
}

// Encode is Append to a new buffer.
func (m *Message) Encode() ([]byte, error) { return m.Append(nil) }

// The constructors below build one TLV for Message.Add.

// InfoTLV returns an Info TLV.
func InfoTLV() TLV { return tlvFrom(AppendInfo(nil)) }

// ConnectTLV returns a Connect TLV.
func ConnectTLV(c Connect) TLV { return tlvFrom(AppendConnect(nil, c)) }

// ExtendedTCPHeaderTLV returns an Extended TCP Header TLV.
func ExtendedTCPHeaderTLV(options []byte) TLV {
	return tlvFrom(AppendExtendedTCPHeader(nil, options))
}

// SupportedTCPExtensionsTLV returns a Supported TCP Extensions TLV.
func SupportedTCPExtensionsTLV(kinds []byte) TLV {
	return tlvFrom(AppendSupportedTCPExtensions(nil, kinds))
}

// CookieTLV returns a Cookie TLV.
func CookieTLV(cookie []byte) TLV { return tlvFrom(AppendCookie(nil, cookie)) }

// ErrorTLVOf returns an Error TLV (see AppendError for value and echoed).
func ErrorTLVOf(code ErrorCode, value, echoed []byte) TLV {
	return tlvFrom(AppendError(nil, code, value, echoed))
}

func tlvFrom(b []byte) TLV {
	return TLV{Type: Type(b[0]), Length: b[1], Value: b[2:]}
}
