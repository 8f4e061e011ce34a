package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// UpgradeOutcome is what an upgrade by re-execution did, as the log,
// POST /upgrade and `converter upgrade` report it.
type UpgradeOutcome struct {
	OK     bool   `json:"ok"`
	PID    int    `json:"pid,omitempty"` // the new process
	Binary string `json:"binary,omitempty"`
	TookMS int64  `json:"took_ms"`
	Error  string `json:"error,omitempty"`
}

// upgrader runs one re-execution at a time.
type upgrader struct {
	mu    sync.Mutex
	child int           // pid of the process started, 0 when none
	done  chan struct{} // closed when this daemon handed over to child
}

// reexecuting reports whether pid is the process an upgrade started.
func (u *upgrader) reexecuting(pid int) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.child != 0 && u.child == pid
}

// handedOver marks the upgrade to pid done.
func (u *upgrader) handedOver(pid int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.child == pid && u.done != nil {
		close(u.done)
		u.done = nil
	}
}

// upgrade starts the daemon's binary as it is on disk now (a package
// upgrade replaced it) with the same command line and environment; the
// new process takes over as any successor does, and this one drains. It
// is how a daemon under systemd upgrades: the new process is in the
// unit, and becomes its main process (MAINPID) once it accepts.
func (d *daemon) upgrade(ctx context.Context) UpgradeOutcome {
	begun := time.Now()
	out := func(o UpgradeOutcome) UpgradeOutcome {
		o.TookMS = time.Since(begun).Milliseconds()
		if o.OK {
			d.log.Info("upgraded", "pid", o.PID, "binary", o.Binary, "took_ms", o.TookMS)
		} else {
			d.log.Error("upgrade failed: serving on as before", "error", o.Error, "binary", o.Binary)
		}
		return o
	}
	if len(d.opts.Args) == 0 {
		return out(UpgradeOutcome{Error: "the daemon does not know its command line"})
	}
	if ok, state := d.srv.Readiness(); !ok {
		return out(UpgradeOutcome{Error: "this converter is " + state})
	}
	exe, err := os.Executable() // without the " (deleted)" of a replaced file
	if err != nil {
		return out(UpgradeOutcome{Error: fmt.Sprintf("find the binary: %v", err)})
	}
	u := &d.upgrades
	u.mu.Lock()
	if u.child != 0 {
		u.mu.Unlock()
		return out(UpgradeOutcome{Binary: exe, Error: "an upgrade is in progress"})
	}
	cmd := exec.Command(exe, d.opts.Args[1:]...)
	cmd.Env = os.Environ()
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if f, ok := d.opts.Stderr.(*os.File); ok {
		cmd.Stderr = f
	}
	if err := cmd.Start(); err != nil {
		u.mu.Unlock()
		return out(UpgradeOutcome{Binary: exe, Error: fmt.Sprintf("start %s: %v", exe, err)})
	}
	done := make(chan struct{})
	u.child, u.done = cmd.Process.Pid, done
	u.mu.Unlock()
	d.log.Info("upgrading", "pid", cmd.Process.Pid, "binary", exe)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it fails; a success outlives this process
	clear := func() {
		u.mu.Lock()
		u.child, u.done = 0, nil
		u.mu.Unlock()
	}
	select {
	case <-done:
		return out(UpgradeOutcome{OK: true, PID: cmd.Process.Pid, Binary: exe})
	case err := <-exited:
		clear()
		if err == nil {
			err = errors.New("exited")
		}
		return out(UpgradeOutcome{PID: cmd.Process.Pid, Binary: exe, Error: fmt.Sprintf("the new process stopped before it took over: %v (see its log)", err)})
	case <-time.After(2 * handOverTimeout):
		cmd.Process.Kill()
		clear()
		return out(UpgradeOutcome{PID: cmd.Process.Pid, Binary: exe, Error: "the new process did not take over in time: killed"})
	case <-ctx.Done():
		return out(UpgradeOutcome{PID: cmd.Process.Pid, Binary: exe, Error: "stopped waiting: " + ctx.Err().Error()})
	}
}

// handleUpgradeSignal makes SIGUSR2 upgrade, as HAProxy's master reloads
// on it.
func (d *daemon) handleUpgradeSignal(g *group) {
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	g.run(func(ctx context.Context) {
		defer signal.Stop(usr2)
		for {
			select {
			case <-ctx.Done():
				return
			case <-usr2:
				d.log.Info("SIGUSR2 received: upgrading")
				go d.upgrade(ctx)
			}
		}
	})
}
