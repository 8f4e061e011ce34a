// Package tlv is the RFC 8803 (0-RTT TCP Convert Protocol) wire format:
// the fixed header, the six TLVs, parsing that never trusts a length and
// reports the Error code a converter must answer, and encoding by appending
// to a caller's buffer.
package tlv

import "fmt"

// Fixed header values and size limits (RFC 8803 §6.1).
const (
	Version1      = 1      // the only version defined by RFC 8803
	Magic         = 0x2263 // 8803 in decimal, bytes 2-3 of the header
	HeaderLen     = 4      // version, total length, magic
	WordLen       = 4      // Convert lengths count 4-byte words
	MaxMessageLen = 255 * WordLen

	// MaxEchoLen is the longest echo a Malformed or Unsupported Message
	// reply can carry and still fit in MaxMessageLen: header (4) + Error
	// TLV prefix with its zero byte (4) + echo.
	MaxEchoLen = MaxMessageLen - 8
)

// Type is a TLV type (IANA "TCP Convert Protocol Parameters").
type Type uint8

// TLV types defined by RFC 8803.
const (
	TypeInfo                       Type = 0x01
	TypeConnect                    Type = 0x0a
	TypeExtendedTCPHeader          Type = 0x14
	TypeSupportedTCPExtensions     Type = 0x15
	TypeCookie                     Type = 0x16
	TypeError                      Type = 0x1e
	typeReserved                   Type = 0x00
	connectBaseWords                    = 5
	connectFixedLen                     = 20 // type, length, port, 16-byte address
	extendedHeaderValuePrefix           = 2  // the Unassigned field
	supportedExtensionsValuePrefix      = 2  // the Unassigned field
	cookieValuePrefix                   = 2  // the Zero field
)

// String returns the name RFC 8803 gives the type.
func (t Type) String() string {
	switch t {
	case TypeInfo:
		return "Info"
	case TypeConnect:
		return "Connect"
	case TypeExtendedTCPHeader:
		return "Extended TCP Header"
	case TypeSupportedTCPExtensions:
		return "Supported TCP Extensions"
	case TypeCookie:
		return "Cookie"
	case TypeError:
		return "Error"
	case typeReserved:
		return "Reserved"
	}
	if t >= 0xc0 {
		return fmt.Sprintf("Private Use (%d)", uint8(t))
	}
	return fmt.Sprintf("Unassigned (%d)", uint8(t))
}

// ErrorCode is the code carried by an Error TLV (RFC 8803 §6.2.8).
type ErrorCode uint8

// The ten error codes of RFC 8803.
const (
	CodeUnsupportedVersion     ErrorCode = 0
	CodeMalformedMessage       ErrorCode = 1
	CodeUnsupportedMessage     ErrorCode = 2
	CodeMissingCookie          ErrorCode = 3
	CodeNotAuthorized          ErrorCode = 32
	CodeUnsupportedTCPOption   ErrorCode = 33
	CodeResourceExceeded       ErrorCode = 64
	CodeNetworkFailure         ErrorCode = 65
	CodeConnectionReset        ErrorCode = 96
	CodeDestinationUnreachable ErrorCode = 97
)

// AllErrorCodes lists every code RFC 8803 defines, in numeric order.
var AllErrorCodes = [...]ErrorCode{
	CodeUnsupportedVersion, CodeMalformedMessage, CodeUnsupportedMessage,
	CodeMissingCookie, CodeNotAuthorized, CodeUnsupportedTCPOption,
	CodeResourceExceeded, CodeNetworkFailure, CodeConnectionReset,
	CodeDestinationUnreachable,
}

// String returns the name RFC 8803 gives the code.
func (c ErrorCode) String() string {
	switch c {
	case CodeUnsupportedVersion:
		return "Unsupported Version"
	case CodeMalformedMessage:
		return "Malformed Message"
	case CodeUnsupportedMessage:
		return "Unsupported Message"
	case CodeMissingCookie:
		return "Missing Cookie"
	case CodeNotAuthorized:
		return "Not Authorized"
	case CodeUnsupportedTCPOption:
		return "Unsupported TCP Option"
	case CodeResourceExceeded:
		return "Resource Exceeded"
	case CodeNetworkFailure:
		return "Network Failure"
	case CodeConnectionReset:
		return "Connection Reset"
	case CodeDestinationUnreachable:
		return "Destination Unreachable"
	}
	return fmt.Sprintf("Unknown Error (%d)", uint8(c))
}

// echoes reports whether the code's Value is the echo form: one zero byte,
// then the received message (RFC 8803 Figure 23).
func (c ErrorCode) echoes() bool {
	return c == CodeMalformedMessage || c == CodeUnsupportedMessage
}

// TCP option kinds the Convert protocol treats specially (RFC 8803 §7).
const (
	OptEOL           = 0
	OptNOP           = 1
	OptMSS           = 2
	OptWindowScale   = 3
	OptSACKPermitted = 4
	OptSACK          = 5
	OptTimestamps    = 8
	OptTCPAO         = 29
	OptMPTCP         = 30
	OptFastOpen      = 34
)

// IgnoredConnectOption reports whether a converter silently drops this kind
// when a Client lists it in a Connect TLV (RFC 8803 §7.1-7.3).
func IgnoredConnectOption(kind uint8) bool {
	switch kind {
	case OptEOL, OptNOP, OptMSS, OptWindowScale, OptSACK:
		return true
	}
	return false
}

// OptionName names common TCP option kinds for dissector output.
func OptionName(kind uint8) string {
	switch kind {
	case OptEOL:
		return "EOL"
	case OptNOP:
		return "NOP"
	case OptMSS:
		return "MSS"
	case OptWindowScale:
		return "Window Scale"
	case OptSACKPermitted:
		return "SACK-Permitted"
	case OptSACK:
		return "SACK"
	case OptTimestamps:
		return "Timestamps"
	case OptTCPAO:
		return "TCP-AO"
	case OptMPTCP:
		return "MPTCP"
	case OptFastOpen:
		return "TFO"
	}
	return fmt.Sprintf("kind %d", kind)
}
