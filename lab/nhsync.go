package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The cluster lab's router runs BIRD, which installs the VIP as a plain
// multipath route (hash-threshold ECMP: adding or removing a node remaps a
// share of every node's connections). Neither BIRD 2 nor FRR 8 install
// resilient nexthop groups, so a watcher beside BIRD mirrors BIRD's route
// into one:
//
//	BIRD (main table, metric 32)  10.202.100.1 nexthop via A, via B, via C
//	watcher                       ip nexthop id 21000.. via A (one per path, proto 209)
//	                              ip nexthop id 20900 group 21000/21001/21002 type resilient
//	                              ip route 10.202.100.1 nhid 20900 proto 209 metric 10
//
// Its route has the better metric, so it wins in the same table; without
// the watcher BIRD's own route forwards (a safe fallback). It is event
// driven: every route notification for a watched prefix reconciles that
// prefix from kernel state, so it is idempotent and adopts what a previous
// instance left (the group's bucket assignment survives a restart).

// NHSyncConfig configures RunNHSync.
type NHSyncConfig struct {
	// Routes are the prefixes to mirror (the VIPs as /32 and /128).
	Routes []netip.Prefix
	// SourceProto is the protocol of the daemon's routes (12: BIRD).
	SourceProto int
	// Table holds both the daemon's route and the watcher's (254: main).
	Table int
	// Metric of the watcher's route: below the daemon's (BIRD: 32).
	Metric int
	// Buckets, Idle and Unbalanced are the resilient group's parameters:
	// a bucket idle for Idle may move to an underweight member; busy
	// buckets move after Unbalanced (0: never).
	Buckets          uint16
	Idle, Unbalanced time.Duration
	// Ready, when set, is called once the watcher is subscribed and has
	// synchronised every route.
	Ready func()
}

// Resilient group parameters of the cluster lab. The idle timer is above
// the converter's TCP keepalive interval (15 s), so a quiet but live
// connection's bucket does not move when a node joins.
const (
	nhBuckets    = 64
	nhIdle       = 30 * time.Second
	nhUnbalanced = 0
	nhMetric     = 10
	birdProto    = 12  // RTPROT_BIRD
	mainTable    = 254 // RT_TABLE_MAIN
)

// DefaultNHSyncConfig is the lab's watcher for routes.
func DefaultNHSyncConfig(routes []netip.Prefix) NHSyncConfig {
	return NHSyncConfig{
		Routes: routes, SourceProto: birdProto, Table: mainTable, Metric: nhMetric,
		Buckets: nhBuckets, Idle: nhIdle, Unbalanced: nhUnbalanced,
	}
}

// RunNHSync mirrors cfg.Routes into resilient nexthop groups in the calling
// process's network namespace until ctx ends. It leaves the groups and
// routes in place when it returns: forwarding goes on unchanged and the
// next instance adopts them.
func RunNHSync(ctx context.Context, cfg NHSyncConfig, log *slog.Logger) error {
	if len(cfg.Routes) == 0 {
		return errors.New("nhsync: no route to watch")
	}
	if cfg.Buckets == 0 {
		return errors.New("nhsync: zero buckets")
	}
	if len(cfg.Routes) > nhMemberIDBase-nhGroupIDBase {
		return errors.New("nhsync: too many routes")
	}
	w := &nhWatcher{cfg: cfg, log: log}
	ready := cfg.Ready
	for {
		err := w.watch(ctx, ready)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		ready = nil
		// A lost subscription (ENOBUFS after a burst, say) may have
		// missed changes: subscribe again, which syncs everything.
		w.log.Warn("nhsync: route subscription lost; subscribing again", "error", err.Error())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// watch subscribes, syncs every route, then follows route changes until
// ctx ends (nil) or the subscription fails.
func (w *nhWatcher) watch(ctx context.Context, ready func()) error {
	cfg := w.cfg
	updates := make(chan netlink.RouteUpdate, 1024)
	done := make(chan struct{})
	defer close(done)
	subErr := make(chan error, 1)
	err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{
		ReceiveBufferSize: 1 << 20,
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("subscribe to route changes: %w", err)
	}
	// The sync follows the subscription: no change can fall between.
	for i := range cfg.Routes {
		w.sync(i)
	}
	if ready != nil {
		w.log.Info("nhsync: watching", "routes", cfg.Routes, "table", cfg.Table, "source_proto", cfg.SourceProto, "metric", cfg.Metric,
			"buckets", cfg.Buckets, "idle", cfg.Idle, "unbalanced", cfg.Unbalanced)
		ready()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			return err
		case u, ok := <-updates:
			if !ok {
				select {
				case err := <-subErr:
					return err
				default:
					return errors.New("route subscription closed")
				}
			}
			if u.Table != cfg.Table || u.Dst == nil {
				continue
			}
			ones, _ := u.Dst.Mask.Size()
			a, _ := netip.AddrFromSlice(u.Dst.IP)
			dst := netip.PrefixFrom(a.Unmap(), ones)
			for i, p := range cfg.Routes {
				if p == dst {
					w.sync(i)
				}
			}
		}
	}
}

type nhWatcher struct {
	cfg NHSyncConfig
	log *slog.Logger
}

// sync reconciles route i, logging failures (the next event retries).
func (w *nhWatcher) sync(i int) {
	if err := w.reconcile(i); err != nil {
		w.log.Error("nhsync: reconcile", "route", w.cfg.Routes[i], "error", err.Error())
	}
}

// sourceHops reads the daemon's route to pfx: its live paths.
func (w *nhWatcher) sourceHops(pfx netip.Prefix) ([]hop, error) {
	rs, err := routesTo(pfx, w.cfg.Table)
	if err != nil {
		return nil, err
	}
	best := -1
	for i, r := range rs {
		if int(r.Protocol) == nhProto || int(r.Protocol) != w.cfg.SourceProto || r.Type != unix.RTN_UNICAST {
			continue
		}
		if best < 0 || r.Priority < rs[best].Priority {
			best = i
		}
	}
	if best < 0 {
		return nil, nil
	}
	return routeHops(rs[best]), nil
}

func (w *nhWatcher) reconcile(i int) error {
	pfx := w.cfg.Routes[i]
	gid := uint32(nhGroupIDBase + i)
	want, err := w.sourceHops(pfx)
	if err != nil {
		return err
	}
	objs, err := dumpNexthops()
	if err != nil {
		return err
	}
	byHop := map[hop]uint32{}
	usedElsewhere := map[uint32]bool{}
	for _, o := range objs {
		if o.group == nil && o.proto == nhProto && o.id >= nhMemberIDBase && o.id <= nhMemberIDMax {
			byHop[o.hop] = o.id
		}
		if o.group != nil && o.id != gid {
			for _, m := range o.group {
				usedElsewhere[m] = true
			}
		}
	}
	var cur []uint32
	g, haveGroup := objs[gid]
	if haveGroup {
		cur = g.group
	}

	if len(want) == 0 {
		if haveGroup {
			// Deleting the group deletes the route that uses it.
			if err := delGroupRoute(pfx, w.cfg.Table, w.cfg.Metric); err != nil && !isErrno(err, syscall.ESRCH) {
				w.log.Warn("nhsync: delete route", "route", pfx, "error", err.Error())
			}
			if err := delNexthop(gid); err != nil && !isErrno(err, syscall.ENOENT) {
				return fmt.Errorf("delete group %d: %w", gid, err)
			}
			w.log.Info("nhsync: no path left: route and group removed", "route", pfx, "group", gid)
		}
		return w.gc(objs, usedElsewhere, nil)
	}

	members := make([]uint32, 0, len(want))
	for _, h := range want {
		id, ok := byHop[h]
		if !ok {
			if id, err = freeNexthopID(objs); err != nil {
				return err
			}
			if err := addMember(id, h); err != nil {
				return fmt.Errorf("add nexthop %d via %s (ifindex %d): %w", id, h.gw, h.oif, err)
			}
			objs[id] = &nhObj{id: id, proto: nhProto, hop: h}
			byHop[h] = id
		}
		members = append(members, id)
	}
	slices.Sort(members)
	if !haveGroup || !sameMembers(cur, members) {
		p := resParams{buckets: w.cfg.Buckets, idle: uint32(w.cfg.Idle / time.Second), unbalanced: uint32(w.cfg.Unbalanced / time.Second)}
		if err := setGroup(gid, members, p, haveGroup); err != nil {
			return fmt.Errorf("set group %d to %v: %w", gid, members, err)
		}
		w.log.Info("nhsync: group changed", "route", pfx, "group", gid, "members", members, "was", cur)
	}
	if !w.haveRoute(pfx) {
		if err := setGroupRoute(pfx, w.cfg.Table, w.cfg.Metric, gid); err != nil {
			return fmt.Errorf("route %s nhid %d: %w", pfx, gid, err)
		}
		w.log.Info("nhsync: route installed", "route", pfx, "group", gid, "table", w.cfg.Table, "metric", w.cfg.Metric)
	}
	return w.gc(objs, usedElsewhere, members)
}

// haveRoute reports whether our route to pfx exists.
func (w *nhWatcher) haveRoute(pfx netip.Prefix) bool {
	rs, err := routesTo(pfx, w.cfg.Table)
	if err != nil {
		return false
	}
	// Only the watcher makes routes of its protocol, all to its groups.
	return slices.ContainsFunc(rs, func(r netlink.Route) bool {
		return int(r.Protocol) == nhProto && r.Priority == w.cfg.Metric
	})
}

// gc deletes our member nexthops that no group uses any more.
func (w *nhWatcher) gc(objs map[uint32]*nhObj, usedElsewhere map[uint32]bool, members []uint32) error {
	for id, o := range objs {
		if o.group != nil || o.proto != nhProto || id < nhMemberIDBase || id > nhMemberIDMax ||
			slices.Contains(members, id) || usedElsewhere[id] {
			continue
		}
		if err := delNexthop(id); err != nil && !isErrno(err, syscall.ENOENT) {
			w.log.Warn("nhsync: delete unused nexthop", "id", id, "error", err.Error())
		}
	}
	return nil
}

func freeNexthopID(objs map[uint32]*nhObj) (uint32, error) {
	for id := uint32(nhMemberIDBase); id <= nhMemberIDMax; id++ {
		if _, ok := objs[id]; !ok {
			return id, nil
		}
	}
	return 0, errors.New("no free nexthop id")
}

func sameMembers(a, b []uint32) bool {
	x := slices.Clone(a)
	slices.Sort(x)
	return slices.Equal(x, b)
}
