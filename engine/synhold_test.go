package engine

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	sessions "github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
)

// fakeHolder holds every connection's SYN+ACK, in memory: the engine's
// side of the hold, without BPF.
type fakeHolder struct {
	late bool // every hold went at the cap already

	mu    sync.Mutex
	holds []*fakeHold
}

type fakeHold struct {
	h         *fakeHolder
	client    netip.AddrPort
	decisions []string  // guarded by h.mu
	decidedAt time.Time // the first decision's end
}

func (f *fakeHolder) Take(client, _ netip.AddrPort) HeldSynAck {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := &fakeHold{h: f, client: client}
	f.holds = append(f.holds, h)
	return h
}

func (h *fakeHold) decide(what string) bool {
	h.h.mu.Lock()
	defer h.h.mu.Unlock()
	h.decisions = append(h.decisions, what)
	if len(h.decisions) == 1 {
		h.decidedAt = time.Now()
	}
	return h.h.late
}

func (h *fakeHold) Release() bool { return h.decide("release") }
func (h *fakeHold) Refuse() bool  { return h.decide("refuse") }
func (h *fakeHold) Unreachable(code byte) bool {
	return h.decide("unreachable " + string('0'+rune(code)))
}

// only returns the one hold taken and its decisions, once the session
// decided.
func (f *fakeHolder) only(t *testing.T) (*fakeHold, []string) {
	t.Helper()
	var h *fakeHold
	var d []string
	waitFor(t, "the session to decide its hold", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.holds) != 1 || len(f.holds[0].decisions) == 0 {
			return false
		}
		h, d = f.holds[0], slices.Clone(f.holds[0].decisions)
		return true
	})
	return h, d
}

func holdLoop(t *testing.T, late bool) (*loop, *fakeHolder) {
	f := &fakeHolder{late: late}
	return newLoop(t, func(c *Config) { c.SynHold = f }), f
}

// TestSynHoldReleasedBeforeReply: the held SYN+ACK is released once the
// server leg is up and before the reply is written; the table says held,
// and the reply carries no rebuilt Extended TCP Header (no capture here).
func TestSynHoldReleasedBeforeReply(t *testing.T) {
	lp, f := holdLoop(t, false)
	dest := lp.server("203.0.113.1:80", echoConn)
	c, err := lp.convert(client.Options{Dest: dest}, []byte("early"))
	if err != nil {
		t.Fatal(err)
	}
	replyAt := time.Now()
	h, d := f.only(t)
	if !slices.Equal(d, []string{"release"}) {
		t.Fatalf("decisions %v, want one release", d)
	}
	if !h.decidedAt.Before(replyAt) {
		t.Errorf("released at %v, after the reply arrived at %v", h.decidedAt, replyAt)
	}
	if h.client != unmapAddrPort(c.LocalAddr()) {
		t.Errorf("hold taken for %v, the client is %v", h.client, c.LocalAddr())
	}
	if _, ok := c.Message.ExtendedTCPHeader(); ok {
		t.Errorf("reply %x has an Extended TCP Header though none was captured", c.Reply)
	}
	snap := lp.srv.Table().Snapshot(false).Sessions
	if len(snap) != 1 || snap[0].SynHold != "held" || snap[0].SynAckOptions != "missing" {
		t.Errorf("table %+v, want one session held, options missing", snap)
	}
}

// TestSynHoldRefusals: a failed connect while held never releases the
// SYN+ACK and resets the client (no Error TLV); an ICMP-like failure asks
// for the ICMP message with its code; policy refusals, Info and failures
// after the cap release it and send the Error TLV.
func TestSynHoldRefusals(t *testing.T) {
	fail := func(err error) func(context.Context, []byte) (*net.TCPConn, error) {
		return func(context.Context, []byte) (*net.TCPConn, error) { return nil, err }
	}
	reset := func(t *testing.T, err error) {
		t.Helper()
		var ce *client.Error
		if errors.As(err, &ce) || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client got %v, want a reset without an Error TLV", err)
		}
	}
	t.Run("refused", func(t *testing.T) {
		lp, f := holdLoop(t, false)
		_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort("203.0.113.9:80")}, nil)
		reset(t, err)
		if _, d := f.only(t); !slices.Equal(d, []string{"refuse"}) {
			t.Errorf("decisions %v, want refuse", d)
		}
		if n := lp.srv.Stats().Refused["Connection Reset"]; n != 1 {
			t.Errorf("refusals counted %v", lp.srv.Stats().Refused)
		}
	})
	t.Run("timed out", func(t *testing.T) {
		lp, f := holdLoop(t, false)
		lp.dialTo[netip.MustParseAddrPort("203.0.113.4:80")] = fail(context.DeadlineExceeded)
		_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort("203.0.113.4:80")}, nil)
		reset(t, err)
		if _, d := f.only(t); !slices.Equal(d, []string{"refuse"}) {
			t.Errorf("decisions %v, want refuse", d)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		lp, f := holdLoop(t, false)
		lp.dialTo[netip.MustParseAddrPort("203.0.113.3:80")] = fail(syscall.EHOSTUNREACH)
		_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort("203.0.113.3:80")}, nil)
		reset(t, err)
		if _, d := f.only(t); !slices.Equal(d, []string{"unreachable 1"}) {
			t.Errorf("decisions %v, want unreachable with code 1 (host)", d)
		}
	})
	t.Run("after the cap", func(t *testing.T) {
		lp, f := holdLoop(t, true)
		_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort("203.0.113.9:80")}, nil)
		if got := errCode(t, err); got != tlv.CodeConnectionReset {
			t.Errorf("Error TLV %s, want Connection Reset", got)
		}
		if _, d := f.only(t); !slices.Equal(d, []string{"refuse"}) {
			t.Errorf("decisions %v", d)
		}
	})
	t.Run("out of ports", func(t *testing.T) {
		lp, f := holdLoop(t, false)
		lp.dialTo[netip.MustParseAddrPort("203.0.113.5:80")] = fail(syscall.EADDRNOTAVAIL)
		_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort("203.0.113.5:80")}, nil)
		if got := errCode(t, err); got != tlv.CodeResourceExceeded {
			t.Errorf("Error TLV %s, want Resource Exceeded", got)
		}
		if _, d := f.only(t); !slices.Equal(d, []string{"release"}) {
			t.Errorf("decisions %v, want release", d)
		}
	})
	t.Run("policy", func(t *testing.T) {
		lp, f := holdLoop(t, false)
		_, err := lp.convert(client.Options{Dest: netip.MustParseAddrPort("198.51.100.1:80")}, nil)
		if got := errCode(t, err); got != tlv.CodeNotAuthorized {
			t.Errorf("Error TLV %s, want Not Authorized", got)
		}
		if _, d := f.only(t); !slices.Equal(d, []string{"release"}) {
			t.Errorf("decisions %v, want release", d)
		}
	})
	t.Run("info", func(t *testing.T) {
		lp, f := holdLoop(t, false)
		if _, err := lp.convert(client.Options{Info: true}, nil); err != nil {
			t.Fatal(err)
		}
		if _, d := f.only(t); !slices.Equal(d, []string{"release"}) {
			t.Errorf("decisions %v, want release", d)
		}
	})
}

// TestSynHoldAtCap: a hold that went at the cap keeps today's path and
// says so in the table.
func TestSynHoldAtCap(t *testing.T) {
	lp, _ := holdLoop(t, true)
	dest := lp.server("203.0.113.1:80", echoConn)
	c, err := lp.convert(client.Options{Dest: dest}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Message.ExtendedTCPHeader(); !ok {
		t.Errorf("reply %x without the Extended TCP Header", c.Reply)
	}
	snap := lp.srv.Table().Snapshot(false).Sessions
	if len(snap) != 1 || snap[0].SynHold != "released_at_cap" || snap[0].SynAckOptions != sessions.SynAckSynthesized.String() {
		t.Errorf("table %+v, want released_at_cap, synthesized", snap)
	}
}
