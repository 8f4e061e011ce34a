package dissect

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/convert-tc/converter/tlv"
)

// Text is the message as dissector lines, each ending in a newline: the
// header, one indented line per TLV, the trailing bytes when there are
// any, and the refusal of a refused message.
func (m *Message) Text() string {
	var b strings.Builder
	b.WriteString(headerLine(m.input) + "\n")
	for _, v := range viewTLVs(&m.msg) {
		b.WriteString("  " + tlvLine(v) + "\n")
	}
	if n := m.TrailingBytes(); n > 0 {
		fmt.Fprintf(&b, "  trailing bytes: %d\n", n)
	}
	if m.err != nil {
		fmt.Fprintf(&b, "  refused: %s: %s\n", refusalName(m.err), m.err.Reason)
	}
	return b.String()
}

// refusalName names what the receiver does: the Error code it answers
// with, or the reset or abort that sends no Error TLV.
func refusalName(pe *tlv.ParseError) string {
	switch pe.Action {
	case tlv.ActionReset:
		return "reset (no Error TLV)"
	case tlv.ActionAbort:
		return "silent abort (no Error TLV)"
	}
	return errorCodeLabel(pe.Code)
}

func headerLine(b []byte) string {
	switch len(b) {
	case 0:
		return "Convert: no bytes"
	case 1:
		return fmt.Sprintf("Convert v%d, header truncated to 1 byte", b[0])
	}
	s := fmt.Sprintf("Convert v%d, total length %s (%d bytes)", b[0], wordCount(b[1]), int(b[1])*tlv.WordLen)
	if len(b) < tlv.HeaderLen {
		s += fmt.Sprintf(", header truncated to %d bytes", len(b))
	}
	return s
}

func tlvLine(v tlvView) string {
	label, size := tlvTypeLabel(v.t.Type), wordCount(v.t.Length)
	switch {
	case v.t.Type == tlv.TypeInfo:
		return label
	case v.connect != nil:
		s := fmt.Sprintf("%s, %s: %s", label, size, v.connect.AddrPort())
		if len(v.options) > 0 {
			s += " options: " + tcpOptionsText(v.options)
		}
		return s
	case v.t.Type == tlv.TypeExtendedTCPHeader:
		return fmt.Sprintf("%s, %s: %s", label, size, orPlaceholder(tcpOptionsText(v.options), "no options"))
	case v.t.Type == tlv.TypeSupportedTCPExtensions:
		return fmt.Sprintf("%s: %s", label, orPlaceholder(tcpKindsText(v.kinds), "none"))
	case v.t.Type == tlv.TypeCookie:
		return fmt.Sprintf("%s, %s: %s", label, size, orPlaceholder(hex.EncodeToString(v.cookie), "empty"))
	case v.errTLV != nil:
		e := v.errTLV
		return fmt.Sprintf("%s: %s value %x%s", label, errorCodeLabel(e.Code), e.Value, errorValueDetail(*e))
	}
	return fmt.Sprintf("%s, %s", label, size)
}

func wordCount(n uint8) string {
	if n == 1 {
		return "1 word"
	}
	return fmt.Sprintf("%d words", n)
}

func orPlaceholder(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

// tlvTypeLabel is "Connect (10)"; names of unknown types already hold the
// number.
func tlvTypeLabel(t tlv.Type) string {
	name, num := t.String(), fmt.Sprintf("(%d)", uint8(t))
	if strings.HasSuffix(name, num) {
		return name
	}
	return name + " " + num
}

// errorCodeLabel is "Not Authorized (32)".
func errorCodeLabel(c tlv.ErrorCode) string {
	if slices.Contains(tlv.AllErrorCodes[:], c) {
		return fmt.Sprintf("%s (%d)", c, uint8(c))
	}
	return c.String()
}

// tcpOptionLabel is "MPTCP(30)", or "kind 99" for an unnamed kind.
func tcpOptionLabel(kind uint8) string {
	name := tlv.OptionName(kind)
	if name == fmt.Sprintf("kind %d", kind) {
		return name
	}
	return fmt.Sprintf("%s(%d)", name, kind)
}

func tcpOptionsText(opts []tlv.TCPOption) string {
	parts := make([]string, 0, len(opts))
	for _, o := range opts {
		s := tcpOptionLabel(o.Kind)
		if len(o.Data) > 0 {
			s += "=" + hex.EncodeToString(o.Data)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func tcpKindsText(kinds []byte) string {
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, tcpOptionLabel(k))
	}
	return strings.Join(parts, " ")
}

// errorValueDetail explains the Value of the codes whose Value means
// something.
func errorValueDetail(e tlv.ErrorTLV) string {
	switch e.Code {
	case tlv.CodeUnsupportedVersion:
		return fmt.Sprintf(" (versions %s)", strings.Trim(fmt.Sprint(e.List()), "[]"))
	case tlv.CodeMalformedMessage, tlv.CodeUnsupportedMessage:
		return fmt.Sprintf(" (echo of %d bytes)", len(e.Echo()))
	case tlv.CodeMissingCookie:
		return fmt.Sprintf(" (cookie %s)", orPlaceholder(hex.EncodeToString(e.MissingCookie()), "none"))
	case tlv.CodeUnsupportedTCPOption:
		return fmt.Sprintf(" (kinds %s)", tcpKindsText(e.List()))
	case tlv.CodeResourceExceeded, tlv.CodeNetworkFailure:
		if s := e.Backoff(); s != 0 {
			return fmt.Sprintf(" (back-off %d s)", s)
		}
		return " (back-off: default, at least 30 s)"
	case tlv.CodeDestinationUnreachable:
		return fmt.Sprintf(" (ICMP code %d)", byteAt(e.Value, 0))
	}
	return ""
}
