package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// ReleaseMark is the packet mark (SO_MARK) of a held frame sent again by
// user space: the hold programs let it pass (synhold.c HOLD_RELEASE_MARK).
const ReleaseMark = 0x53594e48

// SynHold is the loaded synhold program set: hold_syn notes MPTCP Convert
// SYNs with data at tcx ingress, hold_synack drops and copies the SYN+ACKs
// that answer them at tcx egress (Hold); or delay_reply alone holds a
// server's SYN+ACKs and RSTs at egress (Delay, for labs and tests).
type SynHold struct {
	objs    synholdObjects
	in, out tcxLinks
	once    sync.Once
}

// synholdCounterNames is indexed by the C enum hold_counter.
var synholdCounterNames = []string{
	synholdHoldCounterHOLD_SYNS_NOTED:      "syns_noted",
	synholdHoldCounterHOLD_SYNS_PLAIN:      "syns_plain_tcp",
	synholdHoldCounterHOLD_SYNACKS_HELD:    "synacks_held",
	synholdHoldCounterHOLD_SYNACKS_UNACKED: "synacks_unacked",
	synholdHoldCounterHOLD_RING_FULL:       "ring_full",
	synholdHoldCounterHOLD_DELAYED:         "delayed",
}

// LoadSynHold loads the programs for the converter's hold: ports are its
// listening ports (0: every port, transparent mode).
func LoadSynHold(ports []uint16) (*SynHold, error) {
	return loadSynHold(ports, false)
}

// LoadDelay loads the programs for a delayer: every SYN+ACK and RST sent
// from one of ports is held.
func LoadDelay(ports []uint16) (*SynHold, error) {
	return loadSynHold(ports, true)
}

func loadSynHold(ports []uint16, delay bool) (*SynHold, error) {
	spec, err := loadSynhold()
	if err != nil {
		return nil, fmt.Errorf("load synhold program: %w", err)
	}
	if err := checkCounters(spec, synholdMapHoldCounters, synholdCounterNames); err != nil {
		return nil, fmt.Errorf("load synhold program: %w", err)
	}
	if err := checkMap(spec, synholdMapHoldFlows, synholdHoldKey{}, synholdHoldVal{}); err != nil {
		return nil, fmt.Errorf("load synhold program: %w", err)
	}
	h := &SynHold{}
	if err := spec.LoadAndAssign(&h.objs, nil); err != nil {
		return nil, fmt.Errorf("load synhold program: %w", err)
	}
	for _, p := range ports {
		if err := h.objs.HoldPorts.Put(p, uint8(1)); err != nil {
			h.Close()
			return nil, fmt.Errorf("synhold: add port %d: %w", p, err)
		}
	}
	// Both run ahead of every other program on the interface (the
	// steering program ends the chain for the SYNs it assigns).
	h.in = tcxLinks{prog: h.objs.HoldSyn, first: true}
	h.out = tcxLinks{prog: h.objs.HoldSynack, first: true, egress: true}
	if delay {
		h.in.prog = nil
		h.out.prog = h.objs.DelayReply
	}
	return h, nil
}

// Attach attaches the programs to the interface with this index in the
// calling thread's network namespace: hold_syn at ingress and hold_synack
// at egress, or only delay_reply at egress for a delayer.
func (h *SynHold) Attach(ifindex int) error {
	if h.in.prog != nil {
		if err := h.in.attach(ifindex); err != nil {
			return err
		}
	}
	if err := h.out.attach(ifindex); err != nil {
		if h.in.prog != nil {
			h.in.detach(ifindex)
		}
		return err
	}
	return nil
}

// HeldFrame is one frame a program dropped and copied.
type HeldFrame struct {
	// SynNanos is the flow's SYN arrival on the CLOCK_MONOTONIC clock
	// (0 for a delayer's frames).
	SynNanos uint64
	Ifindex  int
	Frame    []byte
}

// Events opens a reader of the held frames; Close the reader to stop.
func (h *SynHold) Events() (*ringbuf.Reader, error) {
	r, err := ringbuf.NewReader(h.objs.HoldEvents)
	if err != nil {
		return nil, fmt.Errorf("synhold: open the ring buffer: %w", err)
	}
	return r, nil
}

// ParseHeldFrame decodes one ring buffer record.
func ParseHeldFrame(rec []byte) (HeldFrame, error) {
	var e synholdHoldEvent
	head := int(unsafe.Offsetof(e.Frame))
	if len(rec) < head {
		return HeldFrame{}, fmt.Errorf("synhold: record of %d bytes", len(rec))
	}
	n := int(binary.NativeEndian.Uint32(rec[8:12]))
	if n > len(e.Frame) || head+n > len(rec) {
		return HeldFrame{}, fmt.Errorf("synhold: record says %d bytes of frame", n)
	}
	return HeldFrame{
		SynNanos: binary.NativeEndian.Uint64(rec[0:8]),
		Ifindex:  int(binary.NativeEndian.Uint32(rec[12:16])),
		Frame:    append([]byte(nil), rec[head:head+n]...),
	}, nil
}

// Flow is the noted state of a client's flow.
type Flow struct {
	SynNanos uint64 // CLOCK_MONOTONIC
	ISN      uint32
	DataLen  uint32
	Held     bool // a SYN+ACK was dropped and copied
}

func holdKeyOf(client, local netip.AddrPort) synholdHoldKey {
	return synholdHoldKey{
		ClientAddr: client.Addr().As16(),
		LocalAddr:  local.Addr().As16(),
		ClientPort: client.Port(),
		LocalPort:  local.Port(),
	}
}

// Lookup returns the noted flow from client to local (the accepted
// socket's peer and local address).
func (h *SynHold) Lookup(client, local netip.AddrPort) (Flow, bool) {
	k := holdKeyOf(client, local)
	var v synholdHoldVal
	if err := h.objs.HoldFlows.Lookup(&k, &v); err != nil {
		return Flow{}, false
	}
	return Flow{SynNanos: v.SynNs, ISN: v.Isn, DataLen: v.Datalen, Held: v.State == 2}, true
}

// Forget deletes the flow's entry; a missing one is not an error.
func (h *SynHold) Forget(client, local netip.AddrPort) error {
	k := holdKeyOf(client, local)
	if err := h.objs.HoldFlows.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("synhold: forget %s -> %s: %w", client, local, err)
	}
	return nil
}

// Counters returns the programs' counters summed over all CPUs.
func (h *SynHold) Counters() (map[string]uint64, error) {
	return sumCounters(h.objs.HoldCounters, synholdCounterNames)
}

// Status lists the programs' links and the flow map's fill level.
func (h *SynHold) Status() (Status, error) {
	st := Status{ProgramID: programID(h.out.prog), Links: append(h.in.status(), h.out.status()...)}
	flows, err := mapStatus(synholdMapHoldFlows, h.objs.HoldFlows)
	st.Maps = append(st.Maps, flows)
	return st, err
}

// Close detaches every link and unloads the programs and maps.
func (h *SynHold) Close() error {
	err := ErrClosed
	h.once.Do(func() {
		var errs []error
		if h.in.prog != nil {
			errs = append(errs, h.in.close())
		}
		if h.out.prog != nil {
			errs = append(errs, h.out.close())
		}
		err = errors.Join(append(errs, h.objs.Close())...)
	})
	return err
}
