package mptcpevents

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
)

// recorder runs a Listener and collects its events.
type recorder struct {
	l      *Listener
	mu     sync.Mutex
	events []Event
	notify chan struct{}
}

// startRecorder listens in netns ns until the test ends.
func startRecorder(t *testing.T, ns string) *recorder {
	t.Helper()
	r := &recorder{notify: make(chan struct{}, 1)}
	if err := lab.RunIn(ns, func() (err error) { r.l, err = Listen(nil); return err }); err != nil {
		t.Fatalf("listen for events in %s: %v", ns, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.l.Run(ctx, r.add) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run in %s: %v", ns, err)
		}
		if s := r.l.Stats(); s.Malformed != 0 || s.Overflows != 0 {
			t.Errorf("listener in %s: %+v, want no malformed or lost events", ns, s)
		}
		r.l.Close()
	})
	return r
}

func (r *recorder) add(ev Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// wait returns the events once cond holds on them, or fails after 5 s.
func (r *recorder) wait(t *testing.T, what string, cond func([]Event) bool) []Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		evs := append([]Event(nil), r.events...)
		r.mu.Unlock()
		if cond(evs) {
			return evs
		}
		select {
		case <-r.notify:
		case <-deadline:
			for _, ev := range evs {
				t.Logf("event: %s", ev)
			}
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func of(evs []Event, typ Type, token uint32) []Event {
	var out []Event
	for _, ev := range evs {
		if ev.Type == typ && ev.Token == token {
			out = append(out, ev)
		}
	}
	return out
}

func hasOne(typ Type, token uint32) func([]Event) bool {
	return func(evs []Event) bool { return len(of(evs, typ, token)) >= 1 }
}

func tokenOf(t *testing.T, c *net.TCPConn) uint32 {
	t.Helper()
	info, err := sockinfo.GetMPTCPInfo(c)
	if err != nil {
		t.Fatalf("MPTCP_INFO: %v", err)
	}
	return info.Token
}

// connectMPTCP connects the client to an MPTCP listener on dst in the
// converter namespace and returns both ends.
func connectMPTCP(t *testing.T, l *lab.Lab, dst netip.Addr) (server, client *net.TCPConn) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	var ln net.Listener
	err := lab.RunIn(l.Converter, func() (err error) {
		ln, err = lc.Listen(t.Context(), "tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", l.Converter, err)
	}
	// Joins arrive through the listener: it must outlive the connection.
	t.Cleanup(func() { ln.Close() })
	var d net.Dialer
	d.SetMultipathTCP(true)
	var c net.Conn
	err = lab.RunIn(l.Client, func() (err error) {
		c, err = d.DialContext(t.Context(), "tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return s.(*net.TCPConn), c.(*net.TCPConn)
}

func unmap(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func hasSubflow(subs []sockinfo.Subflow, local, remote netip.AddrPort) bool {
	for _, s := range subs {
		if s.Local == local && s.Remote == remote {
			return true
		}
	}
	return false
}

func ifIndex(t *testing.T, ns, name string) int32 {
	t.Helper()
	var idx int
	err := lab.RunIn(ns, func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			idx = ifi.Index
		}
		return err
	})
	if err != nil {
		t.Fatalf("interface %s in %s: %v", name, ns, err)
	}
	return int32(idx)
}

func endpointID(t *testing.T, ns string, a netip.Addr) uint8 {
	return endpointIDPort(t, ns, a, 0)
}

// endpointIDPort finds the id of the path-manager endpoint for a (and
// port, if not 0) in the plain output of `ip mptcp endpoint show`:
// "10.201.2.2 [port 7777] id 3 signal dev c2".
func endpointIDPort(t *testing.T, ns string, a netip.Addr, port int) uint8 {
	t.Helper()
	out := ipCmd(t, "-n", ns, "mptcp", "endpoint", "show")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != a.String() {
			continue
		}
		var id, p int
		for i := 1; i+1 < len(f); i++ {
			switch f[i] {
			case "id":
				id, _ = strconv.Atoi(f[i+1])
			case "port":
				p, _ = strconv.Atoi(f[i+1])
			}
		}
		if p == port {
			return uint8(id)
		}
	}
	t.Fatalf("no endpoint for %s port %d in %s:\n%s", a, port, ns, out)
	return 0
}

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
