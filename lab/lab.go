// Package lab builds a three-namespace multipath test network, the same shape
// as the Linux MPTCP selftests: a client with two paths to the converter and
// a server behind the converter.
//
//	client (c1) ---- path 1 ---- (cv1)
//	                             converter (sv) ---- (s1) server
//	client (c2) ---- path 2 ---- (cv2)
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
)

// Config selects the lab to bring up.
type Config struct {
	// Prefix names the namespaces <Prefix>-cli, -conv and -srv.
	// Empty means UniquePrefix().
	Prefix string
}

// Lab is a running lab. Its fields are the namespace names to pass to Do,
// Command or `ip netns exec`.
type Lab struct {
	Prefix                    string
	Client, Converter, Server string
	Addr                      Addresses
}

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

// NS returns the namespace name of role r.
func (l *Lab) NS(r Role) string { return nsName(l.Prefix, r) }

// Up creates and configures the lab. It is idempotent: every step checks or
// replaces existing state, so running it on a configured lab succeeds and
// repairs missing pieces. On failure it removes what this call created.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = UniquePrefix()
	}
	l, err := newLab(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if err := EnsureRoot(); err != nil {
		return nil, err
	}
	if err := prepareNetnsDir(); err != nil {
		return nil, err
	}
	s := &setup{ctx: ctx, lab: l}
	err = s.run()
	if err != nil {
		err = errors.Join(fmt.Errorf("lab %s up: %w", l.Prefix, err), s.rollback())
	}
	s.close()
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Down removes the lab's namespaces; their veths go with them. A missing lab
// is not an error.
func Down(prefix string) error {
	if err := validName(prefix); err != nil {
		return err
	}
	var errs []error
	for _, r := range roles {
		errs = append(errs, deleteNetns(nsName(prefix, r)))
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
