package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/internal/dupfd"
)

// Object is a BPF map or tcx link passed to a successor process on an
// upgrade. The successor loads its program with the maps (the same maps:
// tokens and captures of the predecessor's sessions stay valid, counters
// go on) and puts its program into the links in place, so no packet meets
// an interface without the program.
type Object struct {
	// Map is the map's name in the object file; empty for a link.
	Map string
	// Ifindex is a link's interface, in the namespace of both processes.
	Ifindex int
	// File is a duplicate of the map's or link's file descriptor.
	File *os.File
}

// dupFile duplicates fd into a File the caller owns.
func dupFile(fd int, name string) (*os.File, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate %s: %w", name, err)
	}
	return os.NewFile(uintptr(d), name), nil
}

// handOver duplicates maps (by name) and the links of t.
func handOver(maps map[string]*ebpf.Map, t *tcxLinks) ([]Object, error) {
	var out []Object
	fail := func(err error) ([]Object, error) {
		for _, o := range out {
			o.File.Close()
		}
		return nil, fmt.Errorf("hand over BPF objects: %w", err)
	}
	for name, m := range maps {
		f, err := dupFile(m.FD(), "map "+name)
		if err != nil {
			return fail(err)
		}
		out = append(out, Object{Map: name, File: f})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range t.links {
		raw, ok := l.l.(interface{ FD() int })
		if !ok {
			return fail(fmt.Errorf("link on %s has no file descriptor", l.name))
		}
		f, err := dupFile(raw.FD(), "link "+l.name)
		if err != nil {
			return fail(err)
		}
		out = append(out, Object{Ifindex: l.ifindex, File: f})
	}
	return out, nil
}

// inheritMaps opens the inherited maps the spec names in names, sized as
// they are (a map cannot be resized: a changed --max-sessions takes effect
// on a restart), for MapReplacements.
func inheritMaps(spec *ebpf.CollectionSpec, in []Object, names ...string) (map[string]*ebpf.Map, error) {
	out := map[string]*ebpf.Map{}
	fail := func(err error) (map[string]*ebpf.Map, error) {
		for _, m := range out {
			m.Close()
		}
		return nil, err
	}
	for _, o := range in {
		if o.Map == "" {
			continue
		}
		ms, ok := spec.Maps[o.Map]
		if !ok || !slices.Contains(names, o.Map) {
			return fail(fmt.Errorf("inherited map %q: not a map this program shares", o.Map))
		}
		d, err := dupfd.Of(o.File)
		if err != nil {
			return fail(fmt.Errorf("inherited map %q: %w", o.Map, err))
		}
		m, err := ebpf.NewMapFromFD(d)
		if err != nil {
			return fail(fmt.Errorf("inherited map %q: %w", o.Map, err))
		}
		ms.MaxEntries = m.MaxEntries()
		if err := ms.Compatible(m); err != nil {
			m.Close()
			return fail(fmt.Errorf("inherited map %q: %w", o.Map, err))
		}
		out[o.Map] = m
	}
	return out, nil
}

// closeMaps closes the inherited maps once the collection holds its own
// references.
func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

// adopt puts t's program into the inherited links, in place; a later
// attach on their interfaces is a no-op.
func (t *tcxLinks) adopt(in []Object) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	ns, err := currentNetns()
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range in {
		if o.Map != "" {
			continue
		}
		d, err := dupfd.Of(o.File)
		if err != nil {
			errs = append(errs, fmt.Errorf("inherited link on ifindex %d: %w", o.Ifindex, err))
			continue
		}
		l, err := link.NewFromFD(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("inherited link on ifindex %d: %w", o.Ifindex, err))
			continue
		}
		if err := l.Update(t.prog); err != nil {
			l.Close()
			errs = append(errs, fmt.Errorf("update inherited link on ifindex %d: %w", o.Ifindex, err))
			continue
		}
		name := fmt.Sprint(o.Ifindex)
		if nl, err := netlink.LinkByIndex(o.Ifindex); err == nil {
			name = nl.Attrs().Name
		}
		t.links = append(t.links, tcxLink{name: name, ifindex: o.Ifindex, netns: ns, l: l, adopted: true})
	}
	return errors.Join(errs...)
}
