// Package dupfd duplicates the descriptor of a Go-managed file or socket.
package dupfd

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Of returns a close-on-exec duplicate of c's descriptor, which the caller
// owns. It goes through SyscallConn, not os.File.Fd: Fd puts the
// descriptor in blocking mode, and O_NONBLOCK belongs to the open file,
// shared by every duplicate (a listening socket would block its own
// accept loop, a relayed one its netpoller).
func Of(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	d := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) { d, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, dupErr
	}
	return d, nil
}
