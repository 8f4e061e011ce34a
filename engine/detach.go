package engine

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/internal/dupfd"
)

// A session whose two directions are both parked lets go of its
// connections: it keeps a duplicate of each socket, watched by the
// parker in their place, and closes its net.TCPConns, so that an idle
// session holds none of the Go runtime's per-connection state (file
// descriptors, addresses, netpoller entries: about 1.9 KiB per session,
// bench/idlefloor). Closing a connection whose socket has a duplicate
// sends nothing. The first event on either socket attaches the session
// again (net.FileConn over the duplicates) before its direction runs.
// While detached, the parked directions' fd fields hold the duplicates
// (dirs[0] the client's, dirs[1] the server's) and the session table
// keeps the legs' last socket figures.

// detach lets go of the connections; the caller holds s.relayMu, both
// directions are parked and the relay is not aborted. On any failure the
// session stays attached, as it was.
func (s *session) detach() {
	p := s.srv.relay.parker
	legs := [2]*net.TCPConn{s.entry.Client(), s.entry.Server()}
	var dups [2]int
	for i, c := range legs {
		fd, err := dupfd.Of(c)
		if err != nil {
			for _, d := range dups[:i] {
				unix.Close(d)
			}
			return
		}
		dups[i] = fd
	}
	for i := range s.dirs {
		if err := p.rebind(&s.dirs[i], dups[i]); err != nil {
			if i == 1 { // put the first back on its connection
				p.rebind(&s.dirs[0], connFD(legs[0]))
			}
			unix.Close(dups[0])
			unix.Close(dups[1])
			return
		}
	}
	s.detached = true
	// Nothing keeps the connections (the table keeps the addresses):
	// they go with their descriptors, addresses and netpoller entries.
	s.entry.SetLegs(nil, nil)
	for i := range s.dirs {
		d := &s.dirs[i]
		d.src, d.dst, d.rawSrc = nil, nil, nil
	}
	for _, c := range legs {
		c.Close()
	}
}

// attach takes new connections over the duplicates and takes both
// directions out of the parker (the caller parks again the one that
// stays parked); the caller holds s.relayMu and s is detached. On a
// failure both sockets are reset and the caller aborts the session.
func (s *session) attach() error {
	p := s.srv.relay.parker
	var dups [2]int
	for i := range s.dirs {
		d := &s.dirs[i]
		dups[i] = int(d.fd)
		p.unpark(d) // before the duplicate closes: its fd names it in the epoll set
	}
	s.detached = false
	var legs [2]*net.TCPConn
	var err error
	for i, fd := range dups {
		if legs[i], err = connFromFD(fd); err != nil { // fd reset and closed
			for _, c := range legs[:i] {
				abort(c)
			}
			for _, fd := range dups[i+1:] {
				resetFD(fd)
			}
			return fmt.Errorf("attach an idle session again: %w", err)
		}
	}
	s.entry.SetLegs(legs[0], legs[1])
	for i := range s.dirs {
		d := &s.dirs[i]
		d.src, d.dst = legs[i], legs[1-i]
		d.rawSrc, _ = d.src.SyscallConn()
	}
	return nil
}

// detachedFDs returns the duplicates of a detached session, which then
// counts as attached (its abort resets them); nil if it is attached. The
// caller holds s.relayMu.
func (s *session) detachedFDs() []int {
	if !s.detached {
		return nil
	}
	s.detached = false
	return []int{int(s.dirs[0].fd), int(s.dirs[1].fd)}
}

// connFD is c's descriptor number (c is open and idle: nothing closes it
// meanwhile).
func connFD(c *net.TCPConn) int {
	fd := -1
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(s uintptr) { fd = int(s) })
	}
	return fd
}

// connFromFD returns a connection over a duplicate of fd and closes fd;
// on an error it resets the socket (fd is closed either way).
func connFromFD(fd int) (*net.TCPConn, error) {
	f := os.NewFile(uintptr(fd), "detached socket")
	c, err := net.FileConn(f)
	if err != nil {
		setResetOnClose(fd)
		f.Close() // f owns fd: it closes it, once
		return nil, err
	}
	f.Close()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, errors.New("not a TCP socket")
	}
	return tc, nil
}

// resetFD closes fd with a reset (SO_LINGER 0), as abort does for a
// connection.
func resetFD(fd int) {
	setResetOnClose(fd)
	unix.Close(fd)
}

func setResetOnClose(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}
