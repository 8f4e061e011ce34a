package bpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
)

// SynWindowClamp is the loaded synwin program: at tcx ingress, ahead of
// any other program, it lowers the window of Convert SYNs so that a
// kernel that shifts a SYN's window by the window scale (the MPTCP TCP
// Fast Open fault of internal/tfowindow) lands within the window the
// client offered.
type SynWindowClamp struct {
	objs  synwinObjects
	links tcxLinks
	once  sync.Once
}

// synwinCounterNames is indexed by the C enum synwin_counter.
var synwinCounterNames = []string{
	synwinSynwinCounterSYNWIN_CLAMPED:  "clamped",
	synwinSynwinCounterSYNWIN_UNSCALED: "unscaled",
	synwinSynwinCounterSYNWIN_FAILED:   "failed",
}

// LoadSynWindowClamp loads the synwin program into the kernel; with a
// predecessor's objects (HandOver) it shares its counters and takes its
// links over in place.
func LoadSynWindowClamp(inherit ...Object) (*SynWindowClamp, error) {
	spec, err := loadSynwin()
	if err != nil {
		return nil, fmt.Errorf("load synwin program: %w", err)
	}
	if err := checkCounters(spec, synwinMapSynwinCounters, synwinCounterNames); err != nil {
		return nil, fmt.Errorf("load synwin program: %w", err)
	}
	maps, err := inheritMaps(spec, inherit, synwinMapSynwinCounters)
	if err != nil {
		return nil, fmt.Errorf("load synwin program: %w", err)
	}
	defer closeMaps(maps)
	c := &SynWindowClamp{}
	if err := spec.LoadAndAssign(&c.objs, &ebpf.CollectionOptions{MapReplacements: maps}); err != nil {
		return nil, fmt.Errorf("load synwin program: %w", err)
	}
	c.links.prog = c.objs.Synwin
	c.links.first = true
	if err := c.links.adopt(inherit); err != nil {
		c.Close()
		return nil, fmt.Errorf("load synwin program: %w", err)
	}
	return c, nil
}

// HandOver duplicates the counters and links for a successor process.
func (c *SynWindowClamp) HandOver() ([]Object, error) {
	return handOver(map[string]*ebpf.Map{synwinMapSynwinCounters: c.objs.SynwinCounters}, &c.links)
}

// Attach attaches the program first at tcx ingress of the interface with
// this index in the calling thread's network namespace.
func (c *SynWindowClamp) Attach(ifindex int) error { return c.links.attach(ifindex) }

// Detach removes the program from the interface with this index in the
// calling thread's network namespace.
func (c *SynWindowClamp) Detach(ifindex int) error { return c.links.detach(ifindex) }

// Counters returns clamped, unscaled and failed, summed over all CPUs.
func (c *SynWindowClamp) Counters() (map[string]uint64, error) {
	return sumCounters(c.objs.SynwinCounters, synwinCounterNames)
}

// Status lists the program and its links.
func (c *SynWindowClamp) Status() (Status, error) {
	return Status{ProgramID: programID(c.objs.Synwin), Links: c.links.status()}, nil
}

// Close detaches every link and unloads the program and its map.
func (c *SynWindowClamp) Close() error {
	err := ErrClosed
	c.once.Do(func() {
		err = errors.Join(c.links.close(), c.objs.Close())
	})
	return err
}
