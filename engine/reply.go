package engine

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

// successReply builds the Convert reply for a session whose server leg is
// up: Supported TCP Extensions first when the Client sent Info, then the
// Extended TCP Header with the server's SYN+ACK options (none when nil).
func successReply(info bool, kinds, synAckOptions []byte) []byte {
	b := tlv.BeginMessage(make([]byte, 0, 64))
	if info {
		b = tlv.AppendSupportedTCPExtensions(b, kinds)
	}
	if synAckOptions != nil {
		b = tlv.AppendExtendedTCPHeader(b, synAckOptions)
	}
	b, _ = tlv.EndMessage(b, 0) // at most 4 + 4+255 + 4+40 bytes
	return b
}

// infoReply answers an Info-only request.
func infoReply(kinds []byte) []byte {
	b := tlv.BeginMessage(make([]byte, 0, 16))
	b = tlv.AppendSupportedTCPExtensions(b, kinds)
	b, _ = tlv.EndMessage(b, 0)
	return b
}

// synthesizeSynAckOptions rebuilds the server's SYN+ACK options from what
// TCP_INFO tells, in the order Linux writes them. It is not a byte copy:
// the timestamp values and any MPTCP key are zero, and the MSS is derived
// from the effective one. Sessions that use it say so.
func synthesizeSynAckOptions(t sockinfo.TCPInfo, serverMPTCP bool) []byte {
	b := make([]byte, 0, 40)
	mss := t.SndMSS
	if t.HasTimestamps() {
		mss += 12 // the effective MSS leaves room for the timestamps option
	}
	b = append(b, tlv.OptMSS, 4, byte(mss>>8), byte(mss))
	switch {
	case t.HasTimestamps() && t.HasSACK():
		b = append(b, tlv.OptSACKPermitted, 2, tlv.OptTimestamps, 10, 0, 0, 0, 0, 0, 0, 0, 0)
	case t.HasTimestamps():
		b = append(b, tlv.OptNOP, tlv.OptNOP, tlv.OptTimestamps, 10, 0, 0, 0, 0, 0, 0, 0, 0)
	case t.HasSACK():
		b = append(b, tlv.OptNOP, tlv.OptNOP, tlv.OptSACKPermitted, 2)
	}
	if t.HasWScale() {
		b = append(b, tlv.OptNOP, tlv.OptWindowScale, 3, t.SndWScale)
	}
	if serverMPTCP {
		// MP_CAPABLE v1 with the HMAC-SHA256 flag; the server's key is not
		// exposed to user space.
		b = append(b, tlv.OptMPTCP, 12, 0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	return b
}

// closeWithError sends an error reply the way RFC 8803 §6 wants it: one
// write, then FIN, then a bounded drain so that unread Client data does not
// turn the close into a RST that could destroy the reply in flight.
//
// The write waits for the client's handshake: accept returns TFO children
// in SYN_RECV, and a reply written to an MPTCP one then can be lost (the
// client saw the FIN without the reply before this wait was added).
func closeWithError(c *net.TCPConn, reply []byte, drain time.Duration) {
	deadline := time.Now().Add(drain)
	wctx, cancel := context.WithDeadline(context.Background(), deadline)
	sockinfo.WaitEstablished(wctx, c)
	cancel()
	c.SetWriteDeadline(deadline)
	c.Write(reply)
	c.CloseWrite()
	c.SetReadDeadline(deadline)
	io.Copy(io.Discard, io.LimitReader(c, 1<<20))
	c.Close()
}

// abort resets a connection: RST for TCP, MP_FASTCLOSE for MPTCP. A nil
// one (a leg not connected, or a detached session's) is nothing to do.
func abort(c *net.TCPConn) {
	if c == nil {
		return
	}
	c.SetLinger(0)
	c.Close()
}
