package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
)

// SynAckCapture is the loaded synack program: it records the TCP options of
// the SYN+ACKs arriving on the interfaces it is attached to that answer a
// local socket in SYN_SENT (the converter's own connects), keyed by the
// 4-tuple; other SYN+ACKs are counted as skipped.
type SynAckCapture struct {
	objs  synackObjects
	links tcxLinks
	once  sync.Once
}

// synackCounterNames is indexed by the C enum synack_counter.
var synackCounterNames = []string{
	synackSynackCounterSYNACK_CAPTURED:      "captured",
	synackSynackCounterSYNACK_UPDATE_FAILED: "update_failed",
	synackSynackCounterSYNACK_SKIPPED:       "skipped",
}

// LoadSynAckCapture loads the synack program into the kernel; with a
// predecessor's objects (HandOver) it shares its maps and takes its links
// over in place.
func LoadSynAckCapture(inherit ...Object) (*SynAckCapture, error) {
	spec, err := loadSynack()
	if err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	if err := checkSynackSpec(spec); err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	maps, err := inheritMaps(spec, inherit, synackMapSynackOpts, synackMapSynackCounters)
	if err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	defer closeMaps(maps)
	c := &SynAckCapture{}
	if err := spec.LoadAndAssign(&c.objs, &ebpf.CollectionOptions{MapReplacements: maps}); err != nil {
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	c.links.prog = c.objs.Synack
	c.links.first = true // it returns TCX_NEXT: whatever follows still runs
	if err := c.links.adopt(inherit); err != nil {
		c.Close()
		return nil, fmt.Errorf("load synack program: %w", err)
	}
	return c, nil
}

// HandOver duplicates the maps and links for a successor process.
func (c *SynAckCapture) HandOver() ([]Object, error) {
	return handOver(map[string]*ebpf.Map{synackMapSynackOpts: c.objs.SynackOpts, synackMapSynackCounters: c.objs.SynackCounters}, &c.links)
}

func checkSynackSpec(spec *ebpf.CollectionSpec) error {
	if err := checkCounters(spec, synackMapSynackCounters, synackCounterNames); err != nil {
		return err
	}
	return checkMap(spec, synackMapSynackOpts, synackSynackKey{}, synackSynackVal{})
}

// Attach attaches the program first at tcx ingress of the interface with
// this index in the calling thread's network namespace, ahead of the
// steering program where both run (address preservation). It passes every
// packet on to the next program.
func (c *SynAckCapture) Attach(ifindex int) error { return c.links.attach(ifindex) }

// Detach removes the program from the interface with this index in the
// calling thread's network namespace.
func (c *SynAckCapture) Detach(ifindex int) error { return c.links.detach(ifindex) }

// synackKeyOf is the map key of the server leg from local to remote. As16
// maps IPv4 to ::ffff:a.b.c.d, as the program does; zones are dropped.
func synackKeyOf(local, remote netip.AddrPort) synackSynackKey {
	return synackSynackKey{
		ServerAddr: remote.Addr().As16(),
		LocalAddr:  local.Addr().As16(),
		ServerPort: remote.Port(),
		LocalPort:  local.Port(),
	}
}

// Lookup returns the TCP option bytes of the SYN+ACK that remote sent to
// local, exactly as received (possibly empty), and whether one was
// captured. local and remote are the server leg's getsockname and
// getpeername; IPv4 and IPv4-mapped IPv6 addresses are the same here.
func (c *SynAckCapture) Lookup(local, remote netip.AddrPort) ([]byte, bool) {
	key := synackKeyOf(local, remote)
	var v synackSynackVal
	if err := c.objs.SynackOpts.Lookup(&key, &v); err != nil {
		return nil, false
	}
	n := min(int(v.Len), len(v.Opts))
	return append([]byte{}, v.Opts[:n]...), true
}

// Delete forgets the entry of the server leg from local to remote; a
// missing entry is not an error (the map is LRU, and an entry may have aged
// out).
func (c *SynAckCapture) Delete(local, remote netip.AddrPort) error {
	key := synackKeyOf(local, remote)
	err := c.objs.SynackOpts.Delete(&key)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete syn+ack options of %s to %s: %w", remote, local, err)
	}
	return nil
}

// Counters returns captured, update_failed and skipped (SYN+ACKs that
// answer no local SYN_SENT socket: forwarded, retransmitted after the
// handshake, or forged), summed over all CPUs.
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
