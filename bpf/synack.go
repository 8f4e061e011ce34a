package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
)

// SynAckCapture is the loaded synack program: it records the TCP options of
// SYN+ACKs arriving on the interfaces it is attached to.
type SynAckCapture struct {
	objs  synackObjects
	links tcxLinks
	once  sync.Once
}

// synackCounterNames is indexed by the C enum synack_counter.
var synackCounterNames = []string{
	synackSynackCounterSYNACK_CAPTURED:      "captured",
	synackSynackCounterSYNACK_UPDATE_FAILED: "update_failed",
}

// LoadSynAckCapture loads the synack program into the kernel.
func LoadSynAckCapture() (*SynAckCapture, error) {
	spec, err := loadSynack()
	if err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	if err := checkSynackSpec(spec); err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	c := &SynAckCapture{}
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	c.links.prog = c.objs.Synack
	return c, nil
}

func checkSynackSpec(spec *ebpf.CollectionSpec) error {
	if err := checkCounters(spec, synackMapSynackCounters, synackCounterNames); err != nil {
		return err
	}
	return checkMap(spec, synackMapSynackOpts, synackSynackKey{}, synackSynackVal{})
}

// Attach attaches the program at tcx ingress of the interface with this
// index in the calling thread's network namespace.
func (c *SynAckCapture) Attach(ifindex int) error { return c.links.attach(ifindex) }

// Detach removes the program from the interface with this index in the
// calling thread's network namespace.
func (c *SynAckCapture) Detach(ifindex int) error { return c.links.detach(ifindex) }

func synackKeyOf(remote netip.AddrPort, localPort uint16) synackSynackKey {
	// As16 maps IPv4 to ::ffff:a.b.c.d, as the program does.
	return synackSynackKey{Addr: remote.Addr().As16(), ServerPort: remote.Port(), LocalPort: localPort}
}

// Lookup returns the TCP option bytes of the SYN+ACK that remote sent to
// localPort, exactly as received (possibly empty), and whether one was
// captured.
func (c *SynAckCapture) Lookup(remote netip.AddrPort, localPort uint16) ([]byte, bool) {
	key := synackKeyOf(remote, localPort)
	var v synackSynackVal
	if err := c.objs.SynackOpts.Lookup(&key, &v); err != nil {
		return nil, false
	}
	n := min(int(v.Len), len(v.Opts))
	return append([]byte{}, v.Opts[:n]...), true
}

// Delete forgets the entry for remote and localPort; a missing entry is not
// an error (the map is LRU, and an entry may have aged out).
func (c *SynAckCapture) Delete(remote netip.AddrPort, localPort uint16) error {
	key := synackKeyOf(remote, localPort)
	err := c.objs.SynackOpts.Delete(&key)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete syn+ack options of %s to port %d: %w", remote, localPort, err)
	}
	return nil
}

// Counters returns captured and update_failed, summed over all CPUs.
func (c *SynAckCapture) Counters() (map[string]uint64, error) {
	return sumCounters(c.objs.SynackCounters, synackCounterNames)
}

// Status lists the program, its links and the options map's fill level.
func (c *SynAckCapture) Status() (Status, error) {
	st := Status{ProgramID: programID(c.objs.Synack), Links: c.links.status()}
	opts, err := mapStatus(synackMapSynackOpts, c.objs.SynackOpts)
	st.Maps = append(st.Maps, opts)
	return st, err
}

// Close detaches every link and unloads the program and its map.
func (c *SynAckCapture) Close() error {
	err := ErrClosed
	c.once.Do(func() {
		err = errors.Join(c.links.close(), c.objs.Close())
	})
	return err
}
