package engine

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/convert-tc/converter/tlv"
)

// refusal is one way a session ends before the relay: an Error TLV sent to
// the Client, or a reset or silent abort without one. All of them are made
// here and turned into bytes on the wire in one place (finishRefused and
// refuseAtAccept, through closeWithError).
type refusal struct {
	action tlv.Action
	code   tlv.ErrorCode
	reply  []byte // the whole Convert reply; empty for reset and abort
	value  []byte // the Error TLV's value
	reason string
	// dial: the server leg's connect failed (what a held SYN+ACK
	// answers with a RST or an ICMP unreachable), with errno when the
	// kernel gave one.
	dial  bool
	errno syscall.Errno
}

func (r *refusal) Error() string {
	if r.action != tlv.ActionReply {
		return fmt.Sprintf("%s: %s", r.action, r.reason)
	}
	return fmt.Sprintf("%s (%d): %s", r.code, uint8(r.code), r.reason)
}

// refuse builds a refusal with an Error TLV carrying value.
func refuse(code tlv.ErrorCode, value []byte, format string, a ...any) *refusal {
	return &refusal{
		action: tlv.ActionReply,
		code:   code,
		reply:  tlv.AppendErrorMessage(nil, code, value, nil),
		value:  value,
		reason: fmt.Sprintf(format, a...),
	}
}

// fromParse turns a codec verdict into a refusal.
func fromParse(err error) *refusal {
	var pe *tlv.ParseError
	if !errors.As(err, &pe) {
		return refuse(tlv.CodeMalformedMessage, nil, "%v", err)
	}
	return &refusal{action: pe.Action, code: pe.Code, reply: pe.AppendReply(nil), reason: pe.Reason}
}
