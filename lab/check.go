package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// EnsureRoot checks everything the lab needs from the host and reports all
// that is missing: root privileges, the iproute2 `ip` binary with `ip mptcp`
// support, and kernel MPTCP.
func EnsureRoot() error {
	var errs []error
	if euid := os.Geteuid(); euid != 0 {
		errs = append(errs, fmt.Errorf("not root (euid %d): creating namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN", euid))
	}
	errs = append(errs, checkIP(), checkKernelMPTCP())
	return errors.Join(errs...)
}

func checkIP() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("iproute2 `ip` binary not found in PATH: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := runIP(ctx, "mptcp", "limits", "show"); err != nil {
		return fmt.Errorf("`ip mptcp` unusable (needs iproute2 >= 5.8 and kernel MPTCP): %w", err)
	}
	return nil
}

// checkKernelMPTCP opens an MPTCP socket. ENOPROTOOPT only means MPTCP is
// disabled in the current netns; the lab enables it in its own.
func checkKernelMPTCP() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
	switch {
	case err == nil:
		return unix.Close(fd)
	case errors.Is(err, unix.ENOPROTOOPT):
		return nil
	default:
		return fmt.Errorf("kernel MPTCP not available (CONFIG_MPTCP=y, Linux >= 5.6 needed): %w", err)
	}
}
