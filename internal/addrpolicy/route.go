package addrpolicy

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteKind is what the routing table of the caller's network namespace
// does with a destination that matters here.
type RouteKind string

const (
	RouteUnicast   RouteKind = ""          // forwarded to another host
	RouteLocal     RouteKind = "local"     // delivered to this host
	RouteBroadcast RouteKind = "broadcast" // a subnet broadcast
	RouteMulticast RouteKind = "multicast"
)

// Routes answers RouteKind through `ip route get` (RTM_GETROUTE), with a
// short cache: a popular destination costs one netlink round trip a
// second, and a route or address added later is seen within that second.
type Routes struct {
	mu    sync.Mutex
	cache map[netip.Addr]routeEntry
	get   func(netip.Addr) (RouteKind, error)
	now   func() time.Time
}

type routeEntry struct {
	kind RouteKind
	at   time.Time
}

const (
	routeCacheTTL = time.Second
	routeCacheMax = 4096 // a full cache is dropped, not evicted entry by entry
)

// NewRoutes returns a resolver for the calling thread's network namespace.
func NewRoutes() *Routes {
	return &Routes{cache: map[netip.Addr]routeEntry{}, get: routeGet, now: time.Now}
}

// Kind returns how the routing table treats a. A destination without a
// route is unicast here: the server-leg connect then fails with the
// kernel's own error, which the engine maps to the right Error code.
func (r *Routes) Kind(a netip.Addr) RouteKind {
	a = a.Unmap()
	now := r.now()
	r.mu.Lock()
	if e, ok := r.cache[a]; ok && now.Sub(e.at) < routeCacheTTL {
		r.mu.Unlock()
		return e.kind
	}
	r.mu.Unlock()
	kind, err := r.get(a)
	if err != nil {
		return RouteUnicast
	}
	r.mu.Lock()
	if len(r.cache) >= routeCacheMax {
		clear(r.cache)
	}
	r.cache[a] = routeEntry{kind, now}
	r.mu.Unlock()
	return kind
}

func routeGet(a netip.Addr) (RouteKind, error) {
	routes, err := netlink.RouteGet(net.IP(a.AsSlice()))
	if err != nil {
		return RouteUnicast, err
	}
	for _, rt := range routes {
		switch rt.Type {
		case unix.RTN_LOCAL:
			return RouteLocal, nil
		case unix.RTN_BROADCAST:
			return RouteBroadcast, nil
		case unix.RTN_MULTICAST:
			return RouteMulticast, nil
		}
	}
	return RouteUnicast, nil
}
