package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps its bind mounts.
const netnsDir = "/run/netns"

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

// RunIn runs fn with the calling goroutine locked to an OS thread that is
// switched into the named network namespace. Sockets created inside fn stay
// in that namespace after RunIn returns. Goroutines started by fn do not
// inherit the namespace.
func RunIn(ns string, fn func() error) (err error) {
	target, err := netns.GetFromPath(netnsPath(ns))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	// Deferred so that a panicking fn cannot leave the thread in ns.
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// Stay locked: the runtime kills the thread when the goroutine exits.
			err = errors.Join(err, fmt.Errorf("restore netns after %s: %w", ns, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// onThrowawayThread runs fn on a locked OS thread that is discarded
// afterwards, for operations that change the thread's namespace for good.
func onThrowawayThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		errc <- fn()
	}()
	return <-errc
}

// prepareNetnsDir makes /run/netns a shared mount, as `ip netns add` does, so
// that namespace mounts and unmounts propagate to other mount namespaces
// (e.g. those created by `ip netns exec`) and Down really frees them.
func prepareNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if !errors.Is(err, unix.EINVAL) {
		return wrapf(err, "make %s shared", netnsDir)
	}
	// EINVAL: not a mount point yet; bind it onto itself first.
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s: %w", netnsDir, err)
	}
	return wrapf(unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""), "make %s shared", netnsDir)
}

// netnsExists reports whether name is a mounted network namespace. A plain
// file left behind by a crashed run does not count.
func netnsExists(name string) (bool, error) {
	var st unix.Statfs_t
	err := unix.Statfs(netnsPath(name), &st)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat netns %s: %w", name, err)
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

// createNetns creates and bind-mounts a new named network namespace. It
// reports whether it created one (false when it already existed).
func createNetns(name string) (bool, error) {
	ok, err := netnsExists(name)
	if err != nil || ok {
		return false, err
	}
	if err := removeStale(name); err != nil {
		return false, err
	}
	err = onThrowawayThread(func() error {
		h, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		return h.Close()
	})
	if err != nil {
		return false, fmt.Errorf("create netns %s: %w", name, err)
	}
	return true, nil
}

// removeStale deletes a leftover non-namespace file at the netns path.
func removeStale(name string) error {
	err := os.Remove(netnsPath(name))
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("remove stale %s: %w", netnsPath(name), err)
}

// deleteNetns unmounts and removes a named namespace; missing is fine. The
// kernel frees the namespace, and with it its veths, once nothing else
// references it.
func deleteNetns(name string) error {
	err := unix.Unmount(netnsPath(name), unix.MNT_DETACH)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		// EINVAL: a plain file, not mounted; ENOENT: already gone.
	default:
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	return removeStale(name)
}

// wrapf wraps err with a formatted context, passing nil through.
func wrapf(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// validName rejects names that could escape netnsDir or confuse `ip`.
func validName(s string) error {
	if s == "" || len(s) > 32 {
		return fmt.Errorf("prefix %q: must be 1-32 characters", s)
	}
	bad := func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}
	if strings.ContainsFunc(s, bad) {
		return fmt.Errorf("prefix %q: only letters, digits, '_' and '-' allowed", s)
	}
	return nil
}
