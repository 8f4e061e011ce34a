// Package sockinfo reads kernel state of TCP and MPTCP sockets through
// getsockopt(2): struct tcp_info, struct mptcp_info and the per-subflow
// arrays of MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS.
//
// Structures are decoded field by field from byte buffers at their uapi
// offsets, so any kernel struct size works: fields beyond what the kernel
// returned stay zero (see the Len fields) and extra trailing bytes are
// ignored.
package sockinfo

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MPTCP getsockopt options at level SOL_MPTCP (include/uapi/linux/mptcp.h).
const (
	optMPTCPInfo    = 1 // MPTCP_INFO
	optTCPInfo      = 2 // MPTCP_TCPINFO
	optSubflowAddrs = 3 // MPTCP_SUBFLOW_ADDRS
)

// Call names used to wrap errors.
const (
	mptcpInfoCall    = "getsockopt(SOL_MPTCP, MPTCP_INFO)"
	mptcpTCPInfoCall = "getsockopt(SOL_MPTCP, MPTCP_TCPINFO)"
	subflowAddrsCall = "getsockopt(SOL_MPTCP, MPTCP_SUBFLOW_ADDRS)"
	tcpInfoCall      = "getsockopt(SOL_TCP, TCP_INFO)"
	soProtocolCall   = "getsockopt(SOL_SOCKET, SO_PROTOCOL)"
)

var (
	// ErrNotMPTCP is returned by the MPTCP getters when the socket is plain
	// TCP or an MPTCP socket that fell back to TCP.
	ErrNotMPTCP = errors.New("sockinfo: not an MPTCP connection (plain TCP or fallback)")

	// ErrConnClosed is returned by WaitEstablished when the connection is
	// closing or closed instead of completing its handshake.
	ErrConnClosed = errors.New("sockinfo: connection is closing or closed")
)

// IsMPTCP reports whether c was created as an MPTCP socket (SO_PROTOCOL is
// IPPROTO_MPTCP). It stays true after a fallback to TCP: use GetMPTCPInfo
// to know whether MPTCP is actually in use.
func IsMPTCP(c syscall.Conn) bool {
	p, err := protocol(c)
	return err == nil && p == unix.IPPROTO_MPTCP
}

func protocol(c syscall.Conn) (int, error) {
	var p int
	err := control(c, func(fd int) error {
		var err error
		p, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			return fmt.Errorf("%s: %w", soProtocolCall, err)
		}
		return nil
	})
	return p, err
}

// control runs f on the file descriptor of c while c keeps it open.
func control(c syscall.Conn, f func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// getsockopt calls getsockopt(2) with buf as the option value and returns
// how many bytes the kernel wrote. x/sys has no variant taking a raw
// buffer, and the kernel's returned length is what makes decoding safe.
func getsockopt(fd, level, opt int, buf []byte) (int, error) {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd),
		uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return 0, errno
	}
	return min(int(n), len(buf)), nil
}

// mptcpError wraps err from an SOL_MPTCP getsockopt. Linux 6.18 answers
// EOPNOTSUPP both for plain TCP and for a fallen-back MPTCP socket;
// ENOPROTOOPT, the generic "unknown level" answer, means the same.
func mptcpError(call string, err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOPROTOOPT) {
		return &notMPTCPError{call: call, errno: err}
	}
	return fmt.Errorf("%s: %w", call, err)
}

// notMPTCPError is ErrNotMPTCP with the call and the errno that said so.
// Every plain TCP client leg gets one at accept, so it is built without
// fmt (whose depth grows a fresh goroutine's stack).
type notMPTCPError struct {
	call  string
	errno error
}

func (e *notMPTCPError) Error() string {
	return e.call + ": " + ErrNotMPTCP.Error() + " (" + e.errno.Error() + ")"
}

func (e *notMPTCPError) Unwrap() []error { return []error{ErrNotMPTCP, e.errno} }
