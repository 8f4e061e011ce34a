package dupfd

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// The duplicate is the same socket, close-on-exec, and the original stays
// non-blocking.
func TestOf(t *testing.T) {
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d, err := Of(l)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(d)
	sa, err := unix.Getsockname(d)
	if err != nil {
		t.Fatal(err)
	}
	if port := sa.(*unix.SockaddrInet4).Port; port != l.Addr().(*net.TCPAddr).Port {
		t.Fatalf("duplicate bound to port %d, want %d", port, l.Addr().(*net.TCPAddr).Port)
	}
	if flags, err := unix.FcntlInt(uintptr(d), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("duplicate flags %#x, %v: want close-on-exec", flags, err)
	}
	rc, _ := l.SyscallConn()
	rc.Control(func(fd uintptr) {
		if fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Errorf("original flags %#x, %v: want non-blocking", fl, err)
		}
	})
	l.Close()
	if _, err := Of(l); err == nil {
		t.Fatal("duplicated a closed listener")
	}
}
