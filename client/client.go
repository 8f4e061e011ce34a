// Package client is an RFC 8803 Convert client: it opens a connection to a
// converter whose SYN carries the Convert message (and the first
// application bytes) as TCP Fast Open data without a cookie, and reads the
// converter's reply.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/tlv"
)

// Options describe one converted connection.
type Options struct {
	// Via is the converter's address and port.
	Via netip.AddrPort
	// Dest is the server to reach; invalid for an Info-only request.
	Dest netip.AddrPort
	// MPTCP opens the Client leg with Multipath TCP.
	MPTCP bool
	// Info asks for the converter's supported TCP extensions.
	Info bool
	// Cookie is sent in a Cookie TLV when not empty.
	Cookie []byte
	// TCPOptions is the TCP Options field of an Extended Connect.
	TCPOptions []byte
	// Local binds the client's side of the first subflow to this address
	// (zero: the kernel chooses).
	Local netip.Addr
	// AfterHandshake sends the Convert message as the first bytes after
	// the handshake instead of in the SYN, as a Client does whose TFO data
	// was refused (the converter accepts both).
	AfterHandshake bool
}

// Request encodes the Convert message for o.
func (o Options) Request() ([]byte, error) {
	b := tlv.BeginMessage(make([]byte, 0, 64))
	if o.Info {
		b = tlv.AppendInfo(b)
	}
	if o.Dest.IsValid() {
		b = tlv.AppendConnect(b, tlv.Connect{Port: o.Dest.Port(), Addr: o.Dest.Addr(), Options: o.TCPOptions})
	}
	if len(o.Cookie) > 0 {
		b = tlv.AppendCookie(b, o.Cookie)
	}
	if !o.Info && !o.Dest.IsValid() {
		return nil, errors.New("convert request needs a destination or Info")
	}
	return tlv.EndMessage(b, 0)
}

// Error is an Error TLV received from the converter.
type Error struct {
	Code  tlv.ErrorCode
	Value []byte
	Reply []byte // the whole reply
}

func (e *Error) Error() string {
	return fmt.Sprintf("converter error %d (%s)", uint8(e.Code), e.Code)
}

// Conn is a converted connection after the converter's reply.
type Conn struct {
	*net.TCPConn
	// Reply is the converter's Convert message, as received.
	Reply []byte
	// Message is Reply decoded; it aliases Reply.
	Message tlv.Message
}

// Dial opens the connection, sends the Convert message followed by early
// in the SYN, and reads the reply. An Error TLV comes back as *Error, after
// which the connection is reset as RFC 8803 asks of a Client.
func Dial(ctx context.Context, o Options, early []byte) (*Conn, error) {
	req, err := o.Request()
	if err != nil {
		return nil, err
	}
	c, err := dialFastOpen(ctx, o.Via, o.Local, o.MPTCP, !o.AfterHandshake)
	if err != nil {
		return nil, err
	}
	// With TCP_FASTOPEN_CONNECT the SYN leaves with this first write.
	if _, err := c.Write(append(req, early...)); err != nil {
		c.Close()
		return nil, fmt.Errorf("send convert request to %s: %w", o.Via, err)
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(d)
	}
	conn, err := readReply(c)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.SetLinger(0)
		c.Close()
		return nil, err
	}
	return conn, nil
}

// DialRaw opens a connection to a converter whose SYN carries payload as
// it is, without checking it: for tests and labs that send malformed
// messages on purpose.
func DialRaw(ctx context.Context, via netip.AddrPort, mptcp bool, payload []byte) (*net.TCPConn, error) {
	c, err := dialFastOpen(ctx, via, netip.Addr{}, mptcp, true)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(payload); err != nil {
		c.Close()
		return nil, fmt.Errorf("send to %s: %w", via, err)
	}
	return c, nil
}

func dialFastOpen(ctx context.Context, via netip.AddrPort, local netip.Addr, mptcp, fastOpen bool) (*net.TCPConn, error) {
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		if !fastOpen {
			return nil
		}
		var err error
		ctlErr := rc.Control(func(fd uintptr) {
			if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1); e != nil {
				err = fmt.Errorf("setsockopt(TCP_FASTOPEN_CONNECT): %w (is bit 0x1 set in net.ipv4.tcp_fastopen?)", e)
				return
			}
			// Data in the SYN without a TFO cookie (RFC 8803 Appendix A.1).
			if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1); e != nil {
				err = fmt.Errorf("setsockopt(TCP_FASTOPEN_NO_COOKIE): %w", e)
			}
		})
		if ctlErr != nil {
			return ctlErr
		}
		return err
	}}
	d.SetMultipathTCP(mptcp)
	if local.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	c, err := d.DialContext(ctx, "tcp", via.String())
	if err != nil {
		return nil, fmt.Errorf("connect to converter %s: %w", via, err)
	}
	return c.(*net.TCPConn), nil
}

// readReply reads exactly the converter's Convert message, leaving the
// server's bytes in the socket.
func readReply(c *net.TCPConn) (*Conn, error) {
	buf := make([]byte, tlv.MaxMessageLen)
	if _, err := io.ReadFull(c, buf[:tlv.HeaderLen]); err != nil {
		return nil, fmt.Errorf("read convert reply header: %w", err)
	}
	total := int(buf[1]) * tlv.WordLen
	if total > tlv.HeaderLen {
		if _, err := io.ReadFull(c, buf[tlv.HeaderLen:total]); err != nil {
			return nil, fmt.Errorf("read convert reply of %d bytes: %w", total, err)
		}
	}
	conn := &Conn{TCPConn: c, Reply: buf[:max(total, tlv.HeaderLen)]}
	if _, err := tlv.ParseReply(conn.Reply, &conn.Message); err != nil {
		return nil, fmt.Errorf("convert reply %x: %w", conn.Reply, err)
	}
	if e, ok := conn.Message.Error(); ok {
		return nil, &Error{Code: e.Code, Value: e.Value, Reply: conn.Reply}
	}
	return conn, nil
}
