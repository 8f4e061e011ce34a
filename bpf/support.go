package bpf

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Capability numbers (linux/capability.h); x/sys has no constants for them.
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capBPF      = 39
)

// Supported reports what keeps this process from loading and attaching the
// programs, or nil: the privileges first, then the kernel features (tc
// programs, the socket lookup and assign helpers, LRU maps, tcx links).
func Supported() error {
	if err := checkPrivileges(); err != nil {
		return err // the kernel probes would only fail with EPERM
	}
	var errs []error
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		errs = append(errs, fmt.Errorf("tc (sched_cls) BPF programs unavailable: %w", err))
	}
	helpers := []struct {
		fn   asm.BuiltinFunc
		name string
	}{
		{asm.FnSkLookupTcp, "bpf_sk_lookup_tcp (Linux >= 4.20)"},
		{asm.FnSkcLookupTcp, "bpf_skc_lookup_tcp (Linux >= 5.2)"},
		{asm.FnSkAssign, "bpf_sk_assign (Linux >= 5.7)"},
		{asm.FnSkbPullData, "bpf_skb_pull_data"},
	}
	for _, h := range helpers {
		if err := features.HaveProgramHelper(ebpf.SchedCLS, h.fn); err != nil {
			errs = append(errs, fmt.Errorf("helper %s unavailable to tc programs: %w", h.name, err))
		}
	}
	if err := features.HaveMapType(ebpf.LRUHash); err != nil {
		errs = append(errs, fmt.Errorf("LRU hash maps unavailable: %w", err))
	}
	if err := probeTCX(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkPrivileges wants CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN) in the
// effective set: loading tc programs and creating tcx links need both.
func checkPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read own capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	var missing []string
	if !has(capNetAdmin) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if !has(capBPF) && !has(capSysAdmin) {
		missing = append(missing, "CAP_BPF (or CAP_SYS_ADMIN)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("not privileged for BPF (euid %d): missing %s; run as root", unix.Geteuid(), strings.Join(missing, ", "))
	}
	return nil
}

// probeTCX attaches a trivial program to an interface index that cannot
// exist: a kernel with tcx answers ENODEV, one without it is reported by
// the link package as ErrNotSupported.
func probeTCX() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load a trivial tc program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	switch {
	case err == nil:
		return l.Close()
	case errors.Is(err, unix.ENODEV):
		return nil
	case errors.Is(err, ebpf.ErrNotSupported):
		return errors.New("kernel has no tcx links (Linux >= 6.6 needed)")
	default:
		return fmt.Errorf("probe tcx links: %w", err)
	}
}
