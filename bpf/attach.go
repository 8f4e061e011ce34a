package bpf

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tcxLinks owns the tcx links of one program, at ingress unless egress.
type tcxLinks struct {
	mu    sync.Mutex
	prog  *ebpf.Program // nil once closed
	links []tcxLink
	// first attaches ahead of every other program on the interface (the
	// program then returns TCX_NEXT to let the others run).
	first  bool
	egress bool
}

// hook names the attach point in errors.
func (t *tcxLinks) hook() string {
	if t.egress {
		return "tcx egress"
	}
	return "tcx ingress"
}

type tcxLink struct {
	name    string
	ifindex int
	netns   uint64
	l       link.Link
	adopted bool // inherited from a predecessor process (adopt)
}

// currentNetns returns the inode of the calling thread's network namespace:
// an ifindex only means something together with it.
func currentNetns() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("stat own netns: %w", err)
	}
	return st.Ino, nil
}

func (t *tcxLinks) attach(ifindex int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.prog == nil {
		return ErrClosed
	}
	ns, err := currentNetns()
	if err != nil {
		return fmt.Errorf("attach %s on ifindex %d: %w", t.hook(), ifindex, err)
	}
	if i := t.find(ns, ifindex); i >= 0 {
		if t.links[i].adopted {
			t.links[i].adopted = false // the predecessor's link runs this program already
			return nil
		}
		return fmt.Errorf("attach %s on ifindex %d: already attached", t.hook(), ifindex)
	}
	nl, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("attach %s on ifindex %d: %w", t.hook(), ifindex, err)
	}
	name := nl.Attrs().Name
	// The programs parse Ethernet frames (loopback has the same header);
	// on an L3 device (tun, WireGuard) they would let everything pass.
	if enc := nl.Attrs().EncapType; enc != "ether" && enc != "loopback" {
		return fmt.Errorf("attach %s on ifindex %d (%s): link type %q, only Ethernet and loopback are supported", t.hook(), ifindex, name, enc)
	}
	opts := link.TCXOptions{Interface: ifindex, Program: t.prog, Attach: ebpf.AttachTCXIngress}
	if t.egress {
		opts.Attach = ebpf.AttachTCXEgress
	}
	if t.first {
		opts.Anchor = link.Head()
	}
	l, err := link.AttachTCX(opts)
	if err != nil {
		return fmt.Errorf("attach %s on ifindex %d (%s): %w", t.hook(), ifindex, name, err)
	}
	t.links = append(t.links, tcxLink{name: name, ifindex: ifindex, netns: ns, l: l})
	return nil
}

func (t *tcxLinks) detach(ifindex int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	ns, err := currentNetns()
	if err != nil {
		return fmt.Errorf("detach %s on ifindex %d: %w", t.hook(), ifindex, err)
	}
	i := t.find(ns, ifindex)
	if i < 0 {
		return fmt.Errorf("detach %s on ifindex %d: not attached", t.hook(), ifindex)
	}
	err = t.links[i].l.Close()
	t.links = slices.Delete(t.links, i, i+1)
	if err != nil {
		return fmt.Errorf("detach %s on ifindex %d: %w", t.hook(), ifindex, err)
	}
	return nil
}

func (t *tcxLinks) find(netns uint64, ifindex int) int {
	return slices.IndexFunc(t.links, func(l tcxLink) bool { return l.netns == netns && l.ifindex == ifindex })
}

func (t *tcxLinks) status() []Attachment {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Attachment, 0, len(t.links))
	for _, l := range t.links {
		a := Attachment{Hook: t.hook(), Interface: l.name, Ifindex: l.ifindex, Netns: l.netns}
		// A link whose interface was deleted still has an id; its
		// ifindex reads 0 then.
		if info, err := l.l.Info(); err == nil {
			a.LinkID = uint32(info.ID)
			a.ProgramID = uint32(info.Program)
			if tcx := info.TCX(); tcx != nil && tcx.Ifindex == 0 {
				a.Ifindex = 0
			}
		}
		out = append(out, a)
	}
	return out
}

// close detaches every link; later calls return ErrClosed.
func (t *tcxLinks) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.prog == nil {
		return ErrClosed
	}
	var errs []error
	for _, l := range t.links {
		if err := l.l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s on %s (ifindex %d): %w", t.hook(), l.name, l.ifindex, err))
		}
	}
	t.links = nil
	t.prog = nil
	return errors.Join(errs...)
}
