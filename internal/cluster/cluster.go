// Package cluster makes one converter a node of a scale-out cluster: N
// nodes behind one anycast service address (the VIP), spread by the
// routers' ECMP, each MPTCP connection's extra subflows kept on its own
// node by MPTCP itself (RFC 8684's C flag plus an ADD_ADDR of the node's
// unique address).
//
// A node sets net.mptcp.allow_join_initial_addr_port=0 (the C flag: "do not
// join my initial address"), announces its unique address through the
// in-kernel path manager (a signal endpoint, no port: IPv6 ADD_ADDR with a
// port does not fit beside TCP timestamps), optionally sets the TCP Fast
// Open server key every node shares, and exposes what the routers should
// reach through a device of its own, a tap device that lives as long as
// the daemon's descriptor: the unique addresses while it runs, the VIPs
// while it is ready. A BGP speaker on the node announces the device's
// addresses (BIRD: protocol direct on interface "cvcluster*"), so a drain
// withdraws the VIPs at once and a crash, SIGKILL included, removes the
// device and every announcement with it, without a health check.
package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/internal/mptcppm"
)

// DevicePrefix names the node's announcement device: cvcluster0, or the
// next free number while a predecessor's still exists (an upgrade). A
// speaker matches "cvcluster*".
const DevicePrefix = "cvcluster"

// endpointIDBase numbers the signal endpoints of the node addresses, away
// from --announce's (200 up) and an operator's.
const endpointIDBase = 230

// Sysctls the node sets, restored on Close.
const (
	sysctlCFlag  = "net/mptcp/allow_join_initial_addr_port"
	sysctlTFOKey = "net/ipv4/tcp_fastopen_key"
)

// Config is what makes the node.
type Config struct {
	VIPs  []netip.Addr // the anycast service addresses
	Nodes []netip.Addr // this node's unique addresses, at most one per family
	// TFOKey is the file of the TCP Fast Open server key every node
	// shares: a primary key and, on a second line, the backup being
	// rotated out (32 hex digits each, dashes allowed). Empty: the
	// kernel's own, per node.
	TFOKey string
}

// Node is the node's kernel state; Close undoes it.
type Node struct {
	cfg      Config
	log      *slog.Logger
	tap      *os.File
	link     netlink.Link
	pm       *mptcppm.Client
	eps      []mptcppm.Endpoint
	restore  map[string]string // sysctl -> value before
	mu       sync.Mutex
	announce bool
	released bool
}

// Setup makes the calling thread's network namespace a cluster node: the C
// flag, the shared TCP Fast Open key, the device with the unique addresses
// and their signal endpoints. The VIPs are not announced before Announce.
func Setup(cfg Config, log *slog.Logger) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: log, restore: map[string]string{}}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if err := n.setSysctl(sysctlCFlag, "0"); err != nil {
		return nil, err
	}
	if cfg.TFOKey != "" {
		key, err := ReadTFOKey(cfg.TFOKey)
		if err != nil {
			return nil, err
		}
		if err := n.setSysctl(sysctlTFOKey, key); err != nil {
			return nil, err
		}
	}
	if err := n.openDevice(); err != nil {
		return nil, err
	}
	for _, a := range cfg.Nodes {
		if err := n.addAddr(a); err != nil {
			return nil, err
		}
	}
	if n.pm, err = mptcppm.Open(); err != nil {
		return nil, err
	}
	for i, a := range cfg.Nodes {
		e := mptcppm.Endpoint{ID: uint8(endpointIDBase + i), Addr: netip.AddrPortFrom(a, 0), IfIndex: int32(n.link.Attrs().Index), Flags: mptcppm.FlagSignal}
		// A predecessor's (an upgrade) is there already: it is ours now.
		if err := n.pm.Add(e); err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("cluster: announce %s to MPTCP clients: %w", a, err)
		}
		n.eps = append(n.eps, e)
	}
	return n, nil
}

// Validate checks the addresses: at least one VIP, one node address per
// family at most, every VIP's family with a node address (the joins of a
// VIP's connections go to the node address of its family).
func (c Config) Validate() error {
	if len(c.VIPs) == 0 {
		return errors.New("cluster: no --cluster-vip")
	}
	fams := map[bool]int{}
	for _, a := range c.Nodes {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("cluster: --node-address %s: not a unicast address", a)
		}
		fams[a.Unmap().Is4()]++
	}
	if fams[true] > 1 || fams[false] > 1 {
		return errors.New("cluster: one --node-address per family")
	}
	for _, v := range c.VIPs {
		if !v.IsValid() || v.IsUnspecified() || v.IsMulticast() {
			return fmt.Errorf("cluster: --cluster-vip %s: not a unicast address", v)
		}
		if fams[v.Unmap().Is4()] == 0 {
			return fmt.Errorf("cluster: --cluster-vip %s needs a --node-address of its family (joins go there)", v)
		}
		for _, a := range c.Nodes {
			if a == v {
				return fmt.Errorf("cluster: %s is both a VIP and the node's address", v)
			}
		}
	}
	return nil
}

// ReloadTFOKey reads the --tfo-key file again and puts it in force: a
// rotation (new primary, old as backup) needs no restart. Without a file
// it does nothing.
func (n *Node) ReloadTFOKey() error {
	if n.cfg.TFOKey == "" {
		return nil
	}
	key, err := ReadTFOKey(n.cfg.TFOKey)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return writeSysctl(sysctlTFOKey, key)
}

// Announced reports whether the VIPs are on the device.
func (n *Node) Announced() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.announce
}

// Status is what GET /stats shows of the node under "cluster".
type Status struct {
	Device        string       `json:"device"`
	VIPs          []netip.Addr `json:"vips"`
	NodeAddresses []netip.Addr `json:"node_addresses"`
	Announced     bool         `json:"announced"` // the VIPs are on the device
	SharedTFOKey  bool         `json:"shared_tfo_key"`
}

// Status reports the node's state.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Status{Device: n.Device(), VIPs: n.cfg.VIPs, NodeAddresses: n.cfg.Nodes, Announced: n.announce, SharedTFOKey: n.cfg.TFOKey != ""}
}

// Device is the announcement device's name.
func (n *Node) Device() string { return n.link.Attrs().Name }

// Announce puts the VIPs on the device: the speaker announces them.
func (n *Node) Announce() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.announce {
		return nil
	}
	for _, v := range n.cfg.VIPs {
		if err := n.addAddr(v); err != nil {
			return err
		}
	}
	n.announce = true
	n.log.Info("cluster: VIPs announced", "vips", n.cfg.VIPs, "device", n.Device())
	return nil
}

// Withdraw takes the VIPs off the device: the speaker withdraws them, no
// new connection comes, and the node's connections go on over their
// subflows to its unique address.
func (n *Node) Withdraw() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.announce {
		return nil
	}
	var errs []error
	for _, v := range n.cfg.VIPs {
		if err := netlink.AddrDel(n.link, addrOf(v)); err != nil {
			errs = append(errs, fmt.Errorf("cluster: withdraw %s: %w", v, err))
		}
	}
	n.announce = false
	n.log.Info("cluster: VIPs withdrawn", "vips", n.cfg.VIPs, "device", n.Device())
	return errors.Join(errs...)
}

// HandedOver leaves the namespace's settings to a successor: Close then
// keeps the sysctls and endpoints, and removes only its own device.
func (n *Node) HandedOver() {
	n.mu.Lock()
	n.released = true
	n.mu.Unlock()
}

// Close withdraws everything: the device (and with it every address the
// speaker announced), the endpoints, and the sysctls as they were.
func (n *Node) Close() error {
	n.mu.Lock()
	released := n.released
	n.mu.Unlock()
	var errs []error
	if n.tap != nil {
		// A non-persistent tap device dies with its last descriptor.
		errs = append(errs, n.tap.Close())
	}
	if !released {
		for _, e := range n.eps {
			if err := n.pm.Delete(e); err != nil {
				errs = append(errs, err)
			}
		}
		for name, v := range n.restore {
			if err := writeSysctl(name, v); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if n.pm != nil {
		n.pm.Close()
	}
	return errors.Join(errs...)
}

func (n *Node) setSysctl(name, v string) error {
	old, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return fmt.Errorf("cluster: read %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	if err := writeSysctl(name, v); err != nil {
		return err
	}
	was := strings.TrimSpace(string(old))
	// A namespace that never had a TFO key reads as all zeros; written
	// back, that would install an all-zero key: leave the node's last.
	if name == sysctlTFOKey && strings.Trim(was, "0-,") == "" {
		return nil
	}
	if _, ok := n.restore[name]; !ok {
		n.restore[name] = was
	}
	return nil
}

func writeSysctl(name, v string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(v), 0); err != nil {
		return fmt.Errorf("cluster: set %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return nil
}

// openDevice creates the tap device, cvclusterN with the first free N,
// and sets it up.
func (n *Node) openDevice() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("cluster: open /dev/net/tun: %w", err)
	}
	var name string
	for i := 0; i < 16 && name == ""; i++ {
		try := fmt.Sprintf("%s%d", DevicePrefix, i)
		if _, err := netlink.LinkByName(try); err == nil {
			continue
		}
		ifr, err := unix.NewIfreq(try)
		if err != nil {
			f.Close()
			return fmt.Errorf("cluster: %s: %w", try, err)
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		rc, err := f.SyscallConn()
		if err != nil {
			f.Close()
			return err
		}
		var ierr error
		rc.Control(func(fd uintptr) { ierr = unix.IoctlIfreq(int(fd), unix.TUNSETIFF, ifr) })
		if ierr != nil {
			f.Close()
			return fmt.Errorf("cluster: create %s: %w", try, ierr)
		}
		name = try
	}
	if name == "" {
		f.Close()
		return fmt.Errorf("cluster: %s0 to %s15 all exist", DevicePrefix, DevicePrefix)
	}
	n.tap = f
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		return fmt.Errorf("cluster: set %s up: %w", name, err)
	}
	n.link = link
	return nil
}

func (n *Node) addAddr(a netip.Addr) error {
	if err := netlink.AddrReplace(n.link, addrOf(a)); err != nil {
		return fmt.Errorf("cluster: add %s to %s: %w", a, n.Device(), err)
	}
	return nil
}

// addrOf is a as a host address; IPv6 ones skip duplicate address
// detection, which would hold them tentative (unusable) for a while.
func addrOf(a netip.Addr) *netlink.Addr {
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 128
	}
	ad := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, bits))}
	if a.Is6() {
		ad.Flags = unix.IFA_F_NODAD
	}
	return ad
}
