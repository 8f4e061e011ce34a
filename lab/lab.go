// Package lab builds a three-namespace multipath test network, the same shape
// as the Linux MPTCP selftests: a client with two paths to the converter and
// a server behind the converter.
//
//	client (c1) ---- path 1 ---- (cv1)
//	                             converter (sv) ---- (s1) server
//	client (c2) ---- path 2 ---- (cv2)
//
// With Config.Nodes >= 2 it builds the scale-out lab instead: the client's
// two paths lead to a router that spreads a VIP over N converter nodes with
// BGP and ECMP (see cluster.go).
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// Config selects the lab to bring up.
type Config struct {
	// Prefix names the namespaces <Prefix>-cli, -conv and -srv (a
	// cluster lab: -cli, -rt, -n1 to -nN, -srv). Empty means
	// UniquePrefix().
	Prefix string
	// Nodes is the number of converter namespaces: 0 or 1 is the default
	// lab, 2 to MaxNodes the cluster lab, which needs BIRD 2.
	Nodes int
	// BFD adds BFD (BFDInterval x BFDMultiplier) to the cluster lab's BGP
	// sessions, which then detect a silent node within 0.3 s instead of
	// the hold time.
	BFD bool
	// Exe is the converter binary whose hidden `lab nhsync` runs the
	// cluster lab's nexthop watcher on the router. Empty: the running
	// executable (the converter itself, for `converter lab up`).
	Exe string
}

// Lab is a running lab. Its fields are the namespace names to pass to Do,
// Command or `ip netns exec`.
type Lab struct {
	Prefix string
	// Converter is empty in a cluster lab: see Nodes.
	Client, Converter, Server string
	// Addr are the lab's fixed addresses. In a cluster lab the Conv
	// fields are the router's (the client's and server's gateways).
	Addr Addresses

	// The cluster lab's, empty otherwise:
	Router string       // the router's namespace
	Nodes  []Node       // the converter nodes
	VIPs   []netip.Addr // the anycast addresses, IPv4 then IPv6
	BFD    bool         // BFD on the BGP sessions
	RunDir string       // RunRoot/PREFIX: configurations, sockets, logs
}

// IsCluster reports whether l is a cluster lab.
func (l *Lab) IsCluster() bool { return len(l.Nodes) > 0 }

// UniquePrefix returns a short random prefix ("cv" + 6 hex digits) so that
// concurrent test runs do not collide.
func UniquePrefix() string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return "cv" + hex.EncodeToString(b[:])
}

// newLab describes the lab for prefix without touching the system.
func newLab(prefix string) (*Lab, error) {
	if err := validName(prefix); err != nil {
		return nil, err
	}
	return &Lab{
		Prefix:    prefix,
		Client:    nsName(prefix, RoleClient),
		Converter: nsName(prefix, RoleConverter),
		Server:    nsName(prefix, RoleServer),
		Addr:      DefaultAddresses(),
	}, nil
}

// newClusterLab describes the cluster lab with n nodes.
func newClusterLab(prefix string, n int, bfd bool) (*Lab, error) {
	if err := validName(prefix); err != nil {
		return nil, err
	}
	if n < 2 || n > MaxNodes {
		return nil, fmt.Errorf("cluster lab: %d nodes, want 2 to %d", n, MaxNodes)
	}
	l := &Lab{
		Prefix: prefix,
		Client: nsName(prefix, RoleClient),
		Server: nsName(prefix, RoleServer),
		Addr:   ClusterAddresses(),
		Router: nsName(prefix, RoleRouter),
		VIPs:   clusterVIPs(),
		BFD:    bfd,
		RunDir: runDir(prefix),
	}
	for k := 1; k <= n; k++ {
		l.Nodes = append(l.Nodes, clusterNode(prefix, k))
	}
	return l, nil
}

// Open describes the lab with the given prefix as it was brought up (a
// cluster lab is found by its state file or its router namespace). It
// checks nothing else: see Status.
func Open(prefix string) (*Lab, error) {
	if err := validName(prefix); err != nil {
		return nil, err
	}
	n, bfd, err := clusterShape(prefix)
	if err != nil {
		return nil, err
	}
	if n >= 2 {
		return newClusterLab(prefix, n, bfd)
	}
	return newLab(prefix)
}

// clusterShape returns the node count (0: not a cluster lab) and BFD
// setting of the lab prefix, from its state file or else its namespaces.
func clusterShape(prefix string) (int, bool, error) {
	st, ok, err := readState(prefix)
	if err != nil {
		return 0, false, err
	}
	if ok && st.Nodes >= 2 {
		return st.Nodes, st.BFD, nil
	}
	nodes, err := nodeNamespaces(prefix)
	if err != nil {
		return 0, false, err
	}
	rt, err := netnsExists(nsName(prefix, RoleRouter))
	if err != nil {
		return 0, false, err
	}
	if !rt && len(nodes) == 0 {
		return 0, false, nil
	}
	return max(2, len(nodes)), false, nil
}

// nodeNamespaces lists the existing namespaces PREFIX-nK.
func nodeNamespaces(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix+"-n")
		if !ok || rest == "" || strings.TrimLeft(rest, "0123456789") != "" || rest[0] == '0' {
			continue
		}
		out = append(out, e.Name())
	}
	return out, nil
}

// NS returns the namespace name of role r.
func (l *Lab) NS(r Role) string { return nsName(l.Prefix, r) }

// topology is l's shape.
func (l *Lab) topology() topology {
	if l.IsCluster() {
		return clusterTopology(l)
	}
	return defaultTopology(l.Addr)
}

// Up creates and configures the lab. It is idempotent: every step checks or
// replaces existing state, so running it on a configured lab succeeds and
// repairs missing pieces (a cluster lab's stopped BIRD or watcher is
// started again). On failure it removes what this call created.
//
// A cluster lab's BIRD instances and watcher run detached: they outlive
// the caller until Down. Up returns once every BGP session is established.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = UniquePrefix()
	}
	if cfg.Nodes < 0 || cfg.Nodes > MaxNodes {
		return nil, fmt.Errorf("lab: %d nodes, want 1 to %d", cfg.Nodes, MaxNodes)
	}
	var l *Lab
	var err error
	if cfg.Nodes >= 2 {
		l, err = newClusterLab(cfg.Prefix, cfg.Nodes, cfg.BFD)
	} else {
		l, err = newLab(cfg.Prefix)
	}
	if err != nil {
		return nil, err
	}
	if err := EnsureRoot(); err != nil {
		return nil, err
	}
	if l.IsCluster() {
		if err := checkBIRD(); err != nil {
			return nil, err
		}
	}
	if err := prepareNetnsDir(); err != nil {
		return nil, err
	}
	if err := checkShape(l); err != nil {
		return nil, err
	}
	s := &setup{ctx: ctx, lab: l, topo: l.topology()}
	err = s.run()
	if err == nil && l.IsCluster() {
		err = s.daemons(cfg.Exe)
	}
	if err != nil {
		err = errors.Join(fmt.Errorf("lab %s up: %w", l.Prefix, err), s.rollback())
	}
	s.close()
	if err != nil {
		return nil, err
	}
	return l, nil
}

// checkShape refuses to build over a lab of another shape with the same
// prefix.
func checkShape(l *Lab) error {
	n, _, err := clusterShape(l.Prefix)
	if err != nil {
		return err
	}
	switch {
	case !l.IsCluster() && n >= 2:
		return fmt.Errorf("lab %s exists as a cluster lab with %d nodes: run lab down first", l.Prefix, n)
	case l.IsCluster() && n >= 2 && n != len(l.Nodes):
		return fmt.Errorf("lab %s exists with %d nodes, not %d: run lab down first", l.Prefix, n, len(l.Nodes))
	case l.IsCluster():
		conv, err := netnsExists(nsName(l.Prefix, RoleConverter))
		if err != nil {
			return err
		}
		if conv {
			return fmt.Errorf("lab %s exists as a one-converter lab: run lab down first", l.Prefix)
		}
	}
	return nil
}

// Down removes the lab's processes (a cluster lab's BIRD instances and
// watcher, and whatever else runs in its namespaces, such as the nodes'
// converters) and namespaces; their veths go with them. A missing lab is
// not an error. A one-converter lab's down leaves processes alone, as it
// always did.
func Down(prefix string) error {
	if err := validName(prefix); err != nil {
		return err
	}
	var errs []error
	n, _, err := clusterShape(prefix)
	errs = append(errs, err)
	dir := runDir(prefix)
	errs = append(errs, stopProcesses(dir))
	names := []string{nsName(prefix, RoleClient), nsName(prefix, RoleConverter), nsName(prefix, RoleRouter)}
	nodes, err := nodeNamespaces(prefix)
	errs = append(errs, err)
	names = append(append(names, nodes...), nsName(prefix, RoleServer))
	if n >= 2 {
		// A cluster lab also stops what runs in its namespaces: the
		// converters started in its nodes.
		errs = append(errs, stopNamespaceProcesses(names))
	}
	for _, name := range names {
		errs = append(errs, deleteNetns(name))
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close tears the lab down.
func (l *Lab) Close() error { return Down(l.Prefix) }

// Do runs fn on the calling goroutine's OS thread switched into netns ns.
// See RunIn.
func (l *Lab) Do(ns string, fn func() error) error { return RunIn(ns, fn) }

// Command returns a command that runs name inside netns ns via `ip netns exec`.
func (l *Lab) Command(ctx context.Context, ns string, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}
