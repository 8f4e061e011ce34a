package lab

import (
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// readyTimeout bounds the wait for the kernel to finish bringing links up.
const readyTimeout = 5 * time.Second

// waitReady blocks until every veth end is usable. Setting a veth up returns
// before the kernel's linkwatch work has run; until it does, the link has no
// operstate UP and IPv6 is not configured on it (no ff00::/8 route, so
// incoming neighbour solicitations are dropped), which can cost a first
// connection a 1 s SYN retransmit. A non-tentative link-local address is the
// last thing IPv6 sets up, so we wait for that.
func (s *setup) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	for _, v := range s.topo.veths {
		for _, e := range []end{v.a, v.b} {
			if err := s.waitLinkReady(e, deadline); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *setup) waitLinkReady(e end, deadline time.Time) error {
	for {
		why, err := s.linkNotReady(e)
		if err != nil || why == "" {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s not ready after %v: %s", e.name, s.lab.NS(e.role), readyTimeout, why)
		}
		select {
		case <-s.ctx.Done():
			return fmt.Errorf("wait for %s in %s: %w", e.name, s.lab.NS(e.role), s.ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// linkNotReady returns why e is not usable yet, or "" when it is.
func (s *setup) linkNotReady(e end) (string, error) {
	h := s.nl[e.role]
	link, err := h.LinkByName(e.name)
	if err != nil {
		return "", fmt.Errorf("look up %s in %s: %w", e.name, s.lab.NS(e.role), err)
	}
	if st := link.Attrs().OperState; st != netlink.OperUp {
		return "operstate " + st.String(), nil
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return "", fmt.Errorf("list addresses of %s in %s: %w", e.name, s.lab.NS(e.role), err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
			return "", nil
		}
	}
	return "no usable IPv6 link-local address", nil
}
