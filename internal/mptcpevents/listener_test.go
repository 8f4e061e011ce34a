package mptcpevents

import (
	"context"
	"github.com/convert-tc/converter/internal/labtest"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/convert-tc/converter/lab"
)

// TestListener checks opening by namespace file descriptor and the
// overflow report.
func TestListener(t *testing.T) {
	labtest.Require(t)
	l, err := lab.Up(t.Context(), lab.Config{Prefix: lab.UniquePrefix()})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	defer l.Close()
	t.Run("netns fd", func(t *testing.T) { checkNetNSFd(t, l) })
	t.Run("overflow", func(t *testing.T) { checkOverflow(t, l) })
}

// openClose makes n MPTCP listeners in the converter namespace and closes
// them: each is a listener_created and a listener_closed event.
func openClose(t *testing.T, l *lab.Lab, n int) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	err := lab.RunIn(l.Converter, func() error {
		for range n {
			s, err := lc.Listen(t.Context(), "tcp", netip.AddrPortFrom(l.Addr.ConvPath1V4, 0).String())
			if err != nil {
				return err
			}
			s.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("MPTCP listeners in %s: %v", l.Converter, err)
	}
}

// run runs ln into a recorder until the test ends.
func run(t *testing.T, ln *Listener) *recorder {
	r := &recorder{l: ln, notify: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ln.Run(ctx, r.add) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		ln.Close()
	})
	return r
}

// checkNetNSFd opens the listener from this thread's namespace with the
// converter's namespace given as a file descriptor.
func checkNetNSFd(t *testing.T, l *lab.Lab) {
	f, err := os.Open("/run/netns/" + l.Converter)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln, err := Listen(&Config{NetNS: int(f.Fd())})
	if err != nil {
		t.Fatalf("listen in the namespace of fd %d: %v", f.Fd(), err)
	}
	r := run(t, ln)
	openClose(t, l, 1)
	r.wait(t, "listener_created from the converter namespace", func(evs []Event) bool {
		return len(evs) > 0 && evs[0].Type == ListenerCreated && evs[0].Local.Addr() == l.Addr.ConvPath1V4
	})
}

// checkOverflow fills a tiny receive buffer before reading: the kernel
// drops the rest, and Run must report an Overflow first, then go on.
func checkOverflow(t *testing.T, l *lab.Lab) {
	var ln *Listener
	if err := lab.RunIn(l.Converter, func() (err error) { ln, err = Listen(&Config{ReadBuffer: 1}); return err }); err != nil {
		t.Fatal(err)
	}
	openClose(t, l, 200)
	r := run(t, ln)
	r.wait(t, "an overflow", func(evs []Event) bool { return len(evs) > 0 && evs[0].Type == Overflow })
	before := ln.Stats().Events
	openClose(t, l, 1)
	r.wait(t, "events after the overflow", func([]Event) bool { return ln.Stats().Events >= before+2 })
	if s := ln.Stats(); s.Overflows != 1 || s.Malformed != 0 {
		t.Errorf("stats %+v, want one overflow", s)
	}
}
