// Package synhold holds the converter's SYN+ACK to a Convert client until
// the server has answered the converter's own SYN, as RFC 8803 times it:
// the programs of bpf.SynHold drop the listener's SYN+ACK and copy it to
// a ring buffer; the Holder keeps the copy and sends it again (Release)
// once the engine's connect succeeded, refuses the client instead (the
// engine's RST, or an ICMP unreachable built here), or sends it at the
// cap so that no client waits past its SYN retransmission.
package synhold

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/bpf"
)

// DefaultMax is the longest hold: below the 1 s initial SYN
// retransmission timeout of Linux clients, whose retransmitted SYN
// carries no data and makes MPTCP fall back (see the design notes).
const DefaultMax = 800 * time.Millisecond

// MaxMax is the longest hold accepted: the converter abandons a server-leg
// connect whose client has not completed its handshake after 900 ms
// (engine: unverifiedSynWindow), and a held client cannot complete it.
const MaxMax = 900 * time.Millisecond

// frameWait bounds how long a refusal that needs the held frame (an ICMP
// message is built from it) waits for the ring buffer's reader.
const frameWait = 100 * time.Millisecond

// Stats are the Holder's counters since it started.
type Stats struct {
	Held               uint64 `json:"held"`                // SYN+ACKs held
	Released           uint64 `json:"released"`            // sent once the server had answered (or the session needed no server)
	ReleasedAtCap      uint64 `json:"released_at_cap"`     // sent at the cap
	RefusedReset       uint64 `json:"refused_reset"`       // never sent: the engine reset the client
	RefusedUnreachable uint64 `json:"refused_unreachable"` // never sent: an ICMP unreachable went instead
	SendErrors         uint64 `json:"send_errors"`         // frames the packet socket refused
}

// Holder keeps the held SYN+ACKs of one converter.
type Holder struct {
	prog *bpf.SynHold
	rd   *ringbuf.Reader
	snd  *sender
	max  time.Duration
	log  *slog.Logger

	mu    sync.Mutex
	flows map[flowKey]*flow

	held, released, atCap, refusedReset, refusedUnreachable, sendErrors atomic.Uint64
	done                                                                chan struct{}
}

type flowKey struct{ client, local netip.AddrPort }

type decision uint8

const (
	undecided decision = iota
	decidedRelease
	decidedDrop
)

// flow is one held SYN+ACK: the frame may come from the ring buffer
// after the engine asked for it.
type flow struct {
	key      flowKey
	isn      uint32
	frame    []byte
	ifindex  int
	arrived  chan struct{} // closed with the frame
	timer    *time.Timer
	decided  decision
	atCap    bool
	finished bool // the frame was sent or dropped
}

// New loads the hold programs for a converter listening on ports (0:
// every port, transparent mode) and starts reading held frames. Attach
// puts them on the client-facing interfaces.
func New(ports []uint16, max time.Duration, log *slog.Logger) (*Holder, error) {
	if max <= 0 || max > MaxMax {
		return nil, fmt.Errorf("syn hold: the longest hold must be in (0, %v], not %v", MaxMax, max)
	}
	prog, err := bpf.LoadSynHold(ports)
	if err != nil {
		return nil, err
	}
	h := &Holder{prog: prog, max: max, log: log, flows: map[flowKey]*flow{}, done: make(chan struct{})}
	if h.snd, err = openSender(); err != nil {
		prog.Close()
		return nil, err
	}
	if h.rd, err = prog.Events(); err != nil {
		h.snd.close()
		prog.Close()
		return nil, err
	}
	go h.read()
	return h, nil
}

// Attach attaches the hold to the interface with this index (the calling
// thread's network namespace).
func (h *Holder) Attach(ifindex int) error { return h.prog.Attach(ifindex) }

// Hold is one SYN+ACK held for a session. Each method decides once; the
// later ones return what the first did.
type Hold struct {
	h *Holder
	f *flow
}

// Take returns the hold of the accepted connection from client to local,
// or nil when its SYN+ACK was not held (no MPTCP Convert SYN with data,
// the kernel refused its data, or the hold let it go already at the cap).
func (h *Holder) Take(client, local netip.AddrPort) *Hold {
	client, local = unmap(client), unmap(local)
	// The map is read under the lock: a flow finished at the cap leaves
	// it and the map together, and must not come back as a new hold.
	h.mu.Lock()
	defer h.mu.Unlock()
	fl, ok := h.prog.Lookup(client, local)
	if !ok {
		return nil
	}
	if !fl.Held { // noted, and its SYN+ACK went out unheld
		h.prog.Forget(client, local)
		return nil
	}
	k := flowKey{client, local}
	f := h.flows[k]
	if f == nil { // the reader has not seen the frame yet
		f = &flow{key: k, arrived: make(chan struct{})}
		h.flows[k] = f
	}
	f.isn = fl.ISN
	return &Hold{h: h, f: f}
}

// Release sends the SYN+ACK now. late reports that it went already at
// the cap: the client saw its connect succeed and needs an Error TLV for
// a failure.
func (o *Hold) Release() (late bool) {
	return o.h.decide(o.f, decidedRelease, nil)
}

// Refuse drops the SYN+ACK for good: the caller resets the accepted
// socket, whose RST answers the client's SYN (ECONNREFUSED). late as for
// Release: then the client needs the Error TLV instead.
func (o *Hold) Refuse() (late bool) {
	return o.h.decide(o.f, decidedDrop, nil)
}

// Unreachable sends the client an ICMP destination unreachable with code
// (ICMP for IPv4, ICMPv6 for IPv6) in answer to its SYN, and drops the
// SYN+ACK; the caller then resets the accepted socket (the RST meets no
// connection). late as for Release. Without the held frame in time it
// falls back to Refuse.
func (o *Hold) Unreachable(code byte) (late bool) {
	select {
	case <-o.f.arrived:
	case <-time.After(frameWait):
	}
	return o.h.decide(o.f, decidedDrop, &code)
}

// decide applies d to f once.
func (h *Holder) decide(f *flow, d decision, icmp *byte) (late bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.decided != undecided {
		return f.atCap
	}
	f.decided = d
	if f.timer != nil {
		f.timer.Stop()
	}
	switch {
	case d == decidedRelease:
		h.released.Add(1)
	case icmp != nil && f.frame != nil:
		h.refusedUnreachable.Add(1)
		if b, err := unreachableFrame(f.frame, f.isn, *icmp); err == nil {
			h.send(f.ifindex, b)
		} else {
			h.sendErrors.Add(1)
		}
	default:
		h.refusedReset.Add(1)
	}
	h.finish(f)
	if f.frame == nil { // should it never come, forget the flow anyway
		time.AfterFunc(h.max+time.Second, func() {
			h.mu.Lock()
			if h.flows[f.key] == f {
				delete(h.flows, f.key)
			}
			h.mu.Unlock()
		})
	}
	return false
}

// finish sends or drops f's frame once the decision and the frame are
// both there, and forgets the flow.
func (h *Holder) finish(f *flow) {
	if f.frame == nil || f.finished {
		return
	}
	f.finished = true
	if f.decided == decidedRelease {
		h.send(f.ifindex, f.frame)
	}
	if h.flows[f.key] == f {
		delete(h.flows, f.key)
	}
	h.prog.Forget(f.key.client, f.key.local)
}

func (h *Holder) send(ifindex int, frame []byte) {
	if err := h.snd.send(ifindex, frame); err != nil {
		h.sendErrors.Add(1)
		h.log.Warn("syn hold: send", "ifindex", ifindex, "error", err.Error())
	}
}

// read takes held frames from the ring buffer until Close.
func (h *Holder) read() {
	defer close(h.done)
	readFrames(h.rd, h.log, "syn hold", h.arrive)
}

// readFrames hands each frame of rd, its checksums recomputed, to fn
// until rd is closed.
func readFrames(rd *ringbuf.Reader, log *slog.Logger, who string, fn func(bpf.HeldFrame)) {
	for {
		rec, err := rd.Read()
		if err != nil {
			if !errors.Is(err, ringbuf.ErrClosed) {
				log.Error(who+": read held frames", "error", err.Error())
			}
			return
		}
		ev, err := bpf.ParseHeldFrame(rec.RawSample)
		if err == nil {
			err = fixChecksums(ev.Frame)
		}
		if err != nil {
			log.Warn(who+": held frame", "error", err.Error())
			continue
		}
		fn(ev)
	}
}

// arrive files a held frame under its flow and starts the cap.
func (h *Holder) arrive(ev bpf.HeldFrame) {
	t, _ := parseTCPFrame(ev.Frame) // fixChecksums parsed it
	local, client := t.addrs(ev.Frame)
	k := flowKey{client, local}
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.flows[k]
	if f == nil {
		f = &flow{key: k, arrived: make(chan struct{})}
		h.flows[k] = f
	}
	if f.frame != nil { // a retransmission of the same SYN+ACK
		return
	}
	h.held.Add(1)
	f.frame, f.ifindex = ev.Frame, ev.Ifindex
	close(f.arrived)
	if f.decided != undecided {
		h.finish(f)
		return
	}
	left := time.Duration(int64(ev.SynNanos)+int64(h.max)-monoNow()) * time.Nanosecond
	f.timer = time.AfterFunc(max(left, 0), func() { h.cap(f) })
}

// cap sends f's SYN+ACK at the longest hold.
func (h *Holder) cap(f *flow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.decided != undecided {
		return
	}
	f.decided, f.atCap = decidedRelease, true
	h.atCap.Add(1)
	h.finish(f)
}

// Stats returns the counters.
func (h *Holder) Stats() Stats {
	return Stats{
		Held: h.held.Load(), Released: h.released.Load(), ReleasedAtCap: h.atCap.Load(),
		RefusedReset: h.refusedReset.Load(), RefusedUnreachable: h.refusedUnreachable.Load(),
		SendErrors: h.sendErrors.Load(),
	}
}

// Pending is how many SYN+ACKs are held right now.
func (h *Holder) Pending() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.flows)
}

// Counters are the programs' own counters and the Holder's decisions
// (released, released_at_cap, refused_reset, refused_unreachable,
// send_errors), one map for the metrics.
func (h *Holder) Counters() (map[string]uint64, error) {
	out, err := h.prog.Counters()
	if out == nil {
		out = map[string]uint64{}
	}
	st := h.Stats()
	out["released"], out["released_at_cap"] = st.Released, st.ReleasedAtCap
	out["refused_reset"], out["refused_unreachable"] = st.RefusedReset, st.RefusedUnreachable
	out["send_errors"] = st.SendErrors
	return out, err
}

// Status is the programs' links and map.
func (h *Holder) Status() (bpf.Status, error) { return h.prog.Status() }

// Close detaches the programs, sends every SYN+ACK still held (no client
// is left waiting for an answer that nobody will send) and frees all.
func (h *Holder) Close() error {
	err := h.prog.Close()
	h.rd.Close()
	<-h.done
	h.mu.Lock()
	for _, f := range h.flows {
		if f.decided == undecided {
			f.decided, f.atCap = decidedRelease, true
			if f.timer != nil {
				f.timer.Stop()
			}
			if f.frame != nil {
				h.send(f.ifindex, f.frame)
			}
		}
	}
	clear(h.flows)
	h.mu.Unlock()
	h.snd.close()
	if errors.Is(err, bpf.ErrClosed) {
		return nil
	}
	return err
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
