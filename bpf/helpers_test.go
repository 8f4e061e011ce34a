package bpf

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
)

// upLab brings up a fresh lab, removed when the test ends.
func upLab(t *testing.T) *lab.Lab {
	t.Helper()
	labtest.Require(t)
	if err := Supported(); err != nil {
		t.Fatalf("Supported: %v", err)
	}
	prefix := lab.UniquePrefix()
	t.Cleanup(func() {
		if err := lab.Down(prefix); err != nil {
			t.Errorf("lab down %s: %v", prefix, err)
		}
	})
	l, err := lab.Up(t.Context(), lab.Config{Prefix: prefix})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return l
}

// run runs a command (ip, bpftool...) and fails the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// attachIn attaches a program (Steering or SynAckCapture) to the named
// interfaces of netns ns; tcx resolves the ifindex in the caller's netns.
func attachIn(t *testing.T, ns string, attach func(int) error, ifaces ...string) {
	t.Helper()
	err := lab.RunIn(ns, func() error {
		for _, name := range ifaces {
			ifi, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			if err := attach(ifi.Index); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("attach in %s: %v", ns, err)
	}
}

// sockopt is one integer socket option for listen.
type sockopt struct {
	level, opt, value int
	name              string
}

// listen opens a TCP (or MPTCP) listener in netns ns with the given
// options, closed when the test ends.
func listen(t *testing.T, ns, network, addr string, mptcp bool, opts ...sockopt) *net.TCPListener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		ctlErr := c.Control(func(fd uintptr) {
			for _, o := range opts {
				if e := unix.SetsockoptInt(int(fd), o.level, o.opt, o.value); e != nil {
					err = fmt.Errorf("setsockopt(%s): %w", o.name, e)
					return
				}
			}
		})
		if ctlErr != nil {
			return ctlErr
		}
		return err
	}}
	lc.SetMultipathTCP(mptcp)
	var ln net.Listener
	err := lab.RunIn(ns, func() (err error) {
		ln, err = lc.Listen(context.Background(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// acceptWithin accepts one connection or returns nil after d.
func acceptWithin(t *testing.T, ln *net.TCPListener, d time.Duration) *net.TCPConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(d))
	defer ln.SetDeadline(time.Time{})
	c, err := ln.AcceptTCP()
	if err != nil {
		return nil
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readN reads exactly n bytes within 5 s.
func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d bytes from %s: %v", n, c.RemoteAddr(), err)
	}
	return buf
}

// delta subtracts two counter snapshots.
func delta(after, before map[string]uint64) map[string]uint64 {
	d := make(map[string]uint64, len(after))
	for k, v := range after {
		d[k] = v - before[k]
	}
	return d
}

// startCapture starts tcpdump, or returns nil when it is not installed.
func startCapture(t *testing.T, l *lab.Lab, ns, iface, filter string) *labtest.Capture {
	t.Helper()
	c := labtest.StartCapture(t, l, ns, iface, filter)
	if c == nil {
		t.Logf("tcpdump not installed: not comparing with a capture")
	}
	return c
}
