package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

// serverSynRetries bounds the server-leg SYN retransmissions: the converter
// should not retry more eagerly than the Client does (RFC 8803 §9.3).
const serverSynRetries = 3

// serverUserTimeout reaps a server leg whose data has gone unacknowledged
// (or whose window stayed closed) this long: a dead server, or a path
// gone. Keepalive (Go's default, 15 s probes) reaps idle dead peers on
// both legs; the client leg cannot have a user timeout (MPTCP sockets
// refuse TCP_USER_TIMEOUT on Linux 6.18).
const serverUserTimeout = 5 * time.Minute

// dialServer opens the server leg and hands it the Client's early bytes.
// With early bytes, TCP_FASTOPEN_CONNECT lets them ride in the SYN once the
// server's TFO cookie is known (or at once where the namespace allows TFO
// without cookies); the connect then completes in the background, so wait
// for it. Nothing reaches the server if the connect fails.
//
// A valid source binds the leg to that address and port (address sharing);
// SO_REUSEADDR lets a port whose earlier connection sits in TIME_WAIT be
// bound again toward another server.
func dialServer(ctx context.Context, dest, source netip.AddrPort, transparent, mptcp bool, early []byte) (*net.TCPConn, error) {
	opts := []sockopt{
		{unix.IPPROTO_TCP, unix.TCP_SYNCNT, serverSynRetries, "TCP_SYNCNT"},
		{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(serverUserTimeout.Milliseconds()), "TCP_USER_TIMEOUT"},
	}
	if len(early) > 0 {
		opts = append(opts, sockopt{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1, "TCP_FASTOPEN_CONNECT"})
	}
	if source.IsValid() {
		opts = append(opts, sockopt{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"})
	}
	if source.IsValid() && !transparent {
		// A pool address is routed local but assigned to no interface:
		// IPv4 binds to such an address (AnyIP), IPv6 only with freebind.
		if dest.Addr().Is4() {
			opts = append(opts, sockopt{unix.SOL_IP, unix.IP_FREEBIND, 1, "IP_FREEBIND"})
		} else {
			opts = append(opts, sockopt{unix.SOL_IPV6, unix.IPV6_FREEBIND, 1, "IPV6_FREEBIND"})
		}
	}
	if transparent { // bind to an address that is not ours: the client's
		if dest.Addr().Is4() {
			opts = append(opts, sockopt{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"})
		} else {
			opts = append(opts, sockopt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT"})
		}
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error { return setSockopts(c, opts) }}
	if source.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(source)
	}
	d.SetMultipathTCP(mptcp)
	network := "tcp6"
	if dest.Addr().Is4() {
		network = "tcp4"
	}
	c, err := d.DialContext(ctx, network, dest.String())
	if err != nil {
		return nil, err
	}
	conn := c.(*net.TCPConn)
	if len(early) > 0 {
		if _, err := conn.Write(early); err != nil && !errors.Is(err, unix.EINPROGRESS) {
			conn.Close()
			return nil, err
		}
	}
	// A plain TCP leg's handshake end wakes its writers; MPTCP's wake-ups
	// are not proven to, so it is polled.
	if mptcp {
		err = sockinfo.WaitEstablished(ctx, conn)
	} else {
		err = sockinfo.WaitConnected(ctx, conn)
	}
	if err != nil {
		err = connectError(conn, err)
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// connectError prefers the socket's pending error (what the kernel learnt
// from a RST or an ICMP message) over the wait's own error.
func connectError(conn *net.TCPConn, waitErr error) error {
	if errors.Is(waitErr, context.DeadlineExceeded) || errors.Is(waitErr, context.Canceled) {
		return waitErr
	}
	var soErr int
	rc, err := conn.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) {
			soErr, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		})
	}
	if soErr != 0 {
		return os.NewSyscallError("connect", syscall.Errno(soErr))
	}
	return waitErr
}

// dialRefusal maps a failed server-leg connect to the Error TLV the Client
// gets (spec §6, errno table). The kernel folds several ICMP codes into one
// errno, so the ICMP code is the most likely one for that errno.
func dialRefusal(dest netip.AddrPort, err error) *refusal {
	v4 := dest.Addr().Is4()
	var errno syscall.Errno
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.ETIMEDOUT):
		return refuse(tlv.CodeNetworkFailure, nil, "connect to %s timed out", dest)
	case !errors.As(err, &errno):
		return refuse(tlv.CodeNetworkFailure, nil, "connect to %s: %v", dest, err)
	}
	switch errno {
	case unix.ECONNREFUSED, unix.ECONNRESET:
		return refuse(tlv.CodeConnectionReset, nil, "connect to %s: %v", dest, err)
	case unix.ENETUNREACH, unix.EHOSTUNREACH:
		if !routeExists(dest.Addr()) {
			return refuse(tlv.CodeNetworkFailure, nil, "no route to %s", dest)
		}
		return refuse(tlv.CodeDestinationUnreachable, []byte{icmpCode(errno, v4)}, "connect to %s: %v", dest, err)
	case unix.EHOSTDOWN, unix.ENONET, unix.ENOPROTOOPT, unix.EOPNOTSUPP:
		return refuse(tlv.CodeDestinationUnreachable, []byte{icmpCode(errno, v4)}, "connect to %s: %v", dest, err)
	case unix.EACCES, unix.EPERM:
		if !v4 {
			// ICMPv6 administratively prohibited / policy failure.
			return refuse(tlv.CodeDestinationUnreachable, []byte{1}, "connect to %s: %v", dest, err)
		}
		return refuse(tlv.CodeNetworkFailure, nil, "connect to %s: %v", dest, err)
	case unix.EADDRNOTAVAIL, unix.EADDRINUSE, unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
		return refuse(tlv.CodeResourceExceeded, nil, "connect to %s: %v", dest, err)
	}
	return refuse(tlv.CodeNetworkFailure, nil, "connect to %s: %v", dest, err)
}

// icmpCode is the ICMP (v4) or ICMPv6 code that Linux turns into errno
// (net/ipv4/icmp.c icmp_err_convert, net/ipv6/icmp.c icmpv6_err_convert).
func icmpCode(errno syscall.Errno, v4 bool) byte {
	switch errno {
	case unix.ENETUNREACH:
		return 0 // net unreachable / no route
	case unix.EHOSTUNREACH:
		if v4 {
			return 1 // host unreachable
		}
		return 3 // address unreachable
	case unix.ENOPROTOOPT:
		return 2
	case unix.EOPNOTSUPP:
		return 5
	case unix.EHOSTDOWN:
		return 7
	case unix.ENONET:
		return 8
	}
	return 0
}

// clientICMPCode is the code of the ICMP (v4) or ICMPv6 destination
// unreachable that makes the client's kernel fail its connect with errno,
// the server leg's: icmpCode, but administrative prohibition is code 13
// in ICMP (EHOSTUNREACH there; Linux has no ICMP code for EACCES) and 1 in
// ICMPv6 (EACCES).
func clientICMPCode(errno syscall.Errno, v4 bool) byte {
	switch {
	case errno == unix.EACCES || errno == unix.EPERM:
		if v4 {
			return 13
		}
		return 1
	case !v4 && errno != unix.ENETUNREACH:
		return 3 // address unreachable: ICMPv6 has no code for the others
	}
	return icmpCode(errno, v4)
}

// routeExists tells an unreachable error that came back as ICMP from one
// the local routing table produced (no route at all: Network Failure).
func routeExists(a netip.Addr) bool {
	routes, err := netlink.RouteGet(a.AsSlice())
	return err == nil && len(routes) > 0
}

// errDialCanceled is returned when the daemon stops during a dial.
var errDialCanceled = fmt.Errorf("server leg: %w", context.Canceled)
