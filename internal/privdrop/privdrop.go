// Package privdrop takes the daemon from root down to the few Linux
// capabilities it needs once its listeners, programs and routes are in
// place: on every thread of the process (capabilities are per thread),
// with no_new_privs, optionally as an unprivileged user.
package privdrop

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Capabilities by number (linux/capability.h); x/sys has no constants.
const (
	CapNetBindService = 10
	CapNetAdmin       = 12
	CapNetRaw         = 13
	CapSetpcap        = 8
	CapPerfmon        = 38
	CapBPF            = 39
)

// capNames names the capabilities the daemon may keep, for messages.
var capNames = map[int]string{
	CapNetBindService: "CAP_NET_BIND_SERVICE", CapNetAdmin: "CAP_NET_ADMIN",
	CapNetRaw: "CAP_NET_RAW", CapBPF: "CAP_BPF", CapSetpcap: "CAP_SETPCAP", CapPerfmon: "CAP_PERFMON",
}

// ErrCgo is returned where the binary was built with cgo: Go cannot then
// change credentials on every thread at once (syscall.AllThreadsSyscall).
var ErrCgo = errors.New("built with cgo: capabilities cannot be dropped on every thread (build with CGO_ENABLED=0)")

// Drop keeps only the capabilities in keep, on every thread: the
// bounding set loses the others, the permitted and effective sets are
// keep, the inheritable and ambient sets are empty, and no_new_privs is
// set. With userName not empty the process becomes that user (and its
// primary group, no supplementary groups) first, keeping keep.
func Drop(keep []int, userName string) error {
	var uid, gid int = -1, -1
	if userName != "" {
		u, err := user.Lookup(userName)
		if err != nil {
			return fmt.Errorf("user %q: %w", userName, err)
		}
		if uid, err = strconv.Atoi(u.Uid); err != nil {
			return fmt.Errorf("user %q: uid %q: %w", userName, u.Uid, err)
		}
		if gid, err = strconv.Atoi(u.Gid); err != nil {
			return fmt.Errorf("user %q: gid %q: %w", userName, u.Gid, err)
		}
	}
	kept := map[int]bool{}
	for _, c := range keep {
		kept[c] = true
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	// The bounding set first: dropping from it needs CAP_SETPCAP, which
	// goes with the rest below.
	for c := 0; c <= last; c++ {
		// A capability already out of the bounding set (systemd's
		// CapabilityBoundingSet=) needs no dropping, nor CAP_SETPCAP.
		if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && in == 0 {
			continue
		}
		if !kept[c] {
			if err := allThreads(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil {
				return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
			}
		}
	}
	if uid >= 0 {
		if err := allThreads(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0); err != nil {
			return fmt.Errorf("keep capabilities across the user change: %w", err)
		}
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("drop supplementary groups: %w", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fmt.Errorf("setgid %d: %w", gid, err)
		}
		if err := syscall.Setuid(uid); err != nil {
			return fmt.Errorf("setuid %d: %w", uid, err)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for c := range kept {
		data[c/32].Effective |= 1 << (c % 32)
		data[c/32].Permitted |= 1 << (c % 32)
		data[c/32].Inheritable |= 1 << (c % 32)
	}
	if err := allThreads(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if err := allThreads(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear the ambient set: %w", err)
	}
	// The kept capabilities, and only they, stay ambient: the daemon's
	// one exec is its own new binary on an upgrade, which needs them as
	// any user.
	for c := range kept {
		if err := allThreads(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c)); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("keep capability %d ambient: %w", c, err)
		}
	}
	if err := allThreads(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

func allThreads(trap, a1, a2, a3 uintptr) error {
	_, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3)
	switch {
	case errno == syscall.ENOTSUP:
		return ErrCgo
	case errno != 0:
		return errno
	}
	return nil
}

// lastCap is the highest capability number this kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Threads returns the effective capability mask of every thread of this
// process, by thread id, from /proc.
func Threads() (map[int]uint64, error) {
	dirs, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil {
		return nil, err
	}
	out := map[int]uint64{}
	for _, d := range dirs {
		tid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		b, err := os.ReadFile(d)
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
				m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if err != nil {
					return nil, fmt.Errorf("thread %d: CapEff %q: %w", tid, v, err)
				}
				out[tid] = m
			}
		}
	}
	return out, nil
}

// Names lists the capabilities of a mask, for logs.
func Names(mask uint64) []string {
	var out []string
	for c := 0; c < 64; c++ {
		if mask&(1<<c) != 0 {
			if n, ok := capNames[c]; ok {
				out = append(out, n)
			} else {
				out = append(out, "cap_"+strconv.Itoa(c))
			}
		}
	}
	return out
}
