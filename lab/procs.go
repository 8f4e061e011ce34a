package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RunRoot holds one directory per cluster lab, RunRoot/PREFIX: the state
// file, and the configuration, control socket, pid file and log of each
// process the lab started (BIRD per namespace, the router's watcher).
// Those processes are detached from `converter lab up` and stopped by
// `converter lab down`.
var RunRoot = "/run/converter-lab"

func runDir(prefix string) string { return filepath.Join(RunRoot, prefix) }

// labState is RunDir/lab.json: what Status and Down need to find a lab.
type labState struct {
	Prefix string `json:"prefix"`
	Nodes  int    `json:"nodes"`
	BFD    bool   `json:"bfd"`
}

func stateFile(prefix string) string { return filepath.Join(runDir(prefix), "lab.json") }

func writeState(l *Lab) error {
	b, err := json.MarshalIndent(labState{Prefix: l.Prefix, Nodes: len(l.Nodes), BFD: l.BFD}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(stateFile(l.Prefix), append(b, '\n'), 0o644)
}

// readState returns the state of the cluster lab prefix; ok is false when
// there is none.
func readState(prefix string) (st labState, ok bool, err error) {
	b, err := os.ReadFile(stateFile(prefix))
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, false, fmt.Errorf("%s: %w", stateFile(prefix), err)
	}
	return st, true, nil
}

// livePID returns the pid in pidFile when that process lives (not a
// zombie) and its command line mentions mark (so a reused pid does not
// count), else 0.
func livePID(pidFile, mark string) int {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if !alive(pid) {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(mark)) {
		return 0
	}
	return pid
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// labProcesses finds the processes a cluster lab started: BIRD and the
// watcher, whose command lines name files in its run directory.
func labProcesses(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	mark := []byte(dir + "/")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, mark) {
			continue
		}
		args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
		isBIRD := filepath.Base(string(args[0])) == "bird"
		isWatcher := len(args) > 2 && string(args[1]) == "lab" && string(args[2]) == "nhsync"
		if (isBIRD || isWatcher) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// stopProcesses ends the processes of the lab with run directory dir:
// SIGTERM, then SIGKILL for those still there after 3 s.
func stopProcesses(dir string) error {
	if left := terminate(labProcesses(dir)); len(left) > 0 {
		return fmt.Errorf("processes %v of %s survive SIGKILL", left, dir)
	}
	return nil
}

// terminate sends pids SIGTERM, then SIGKILL to those still there after
// 3 s, and returns those that survive even that for 2 s.
func terminate(pids []int) []int {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	left := waitGone(pids, 3*time.Second)
	if len(left) == 0 {
		return nil
	}
	for _, pid := range left {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return waitGone(left, 2*time.Second)
}

func waitGone(pids []int, limit time.Duration) []int {
	deadline := time.Now().Add(limit)
	for {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watcherFiles are the router's watcher's pid file and log.
func (l *Lab) watcherFiles() (pid, log string) {
	return filepath.Join(l.routerDir(), "nhsync.pid"), filepath.Join(l.routerDir(), "nhsync.log")
}

// vipRoutes are the VIPs as host routes, the watcher's prefixes.
func (l *Lab) vipRoutes() []netip.Prefix {
	var out []netip.Prefix
	for _, v := range l.VIPs {
		out = append(out, netip.PrefixFrom(v, v.BitLen()))
	}
	return out
}

// startWatcher starts the router's nexthop watcher, `EXE lab nhsync`, in
// the router namespace, detached, unless it runs. It returns once the
// watcher has synchronised the routes (it then writes its pid file).
func (l *Lab) startWatcher(ctx context.Context, exe string) (started bool, err error) {
	pidFile, logFile := l.watcherFiles()
	if livePID(pidFile, pidFile) > 0 {
		return false, nil
	}
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return false, fmt.Errorf("find the converter binary for the watcher: %w", err)
		}
	}
	os.Remove(pidFile)
	out, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, err
	}
	defer out.Close()
	args := []string{"netns", "exec", l.Router, exe, "lab", "nhsync", "--prefix", l.Prefix, "--pid-file", pidFile}
	for _, r := range l.vipRoutes() {
		args = append(args, "--route", r.String())
	}
	// Not CommandContext: it outlives this call. `ip netns exec` execs
	// the watcher, so the pid is the watcher's.
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("start the watcher: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it dies while we live
	deadline := time.After(10 * time.Second)
	for {
		if livePID(pidFile, pidFile) == cmd.Process.Pid {
			return true, nil
		}
		select {
		case err := <-exited:
			msg, _ := os.ReadFile(logFile)
			return true, fmt.Errorf("the watcher (%s lab nhsync) exited: %v: %s", exe, err, lastLines(msg, 5))
		case <-deadline:
			cmd.Process.Kill()
			return true, errors.New("the watcher did not start within 10 s")
		case <-ctx.Done():
			cmd.Process.Kill()
			return true, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WritePIDFile writes the calling process's pid to path atomically.
func WritePIDFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// mkdirs creates the lab's run directories.
func (l *Lab) mkdirs() error {
	dirs := []string{l.routerDir()}
	for _, n := range l.Nodes {
		dirs = append(dirs, l.nodeDir(n.Index))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// killPID ends pid: SIGTERM, then SIGKILL after 3 s.
func killPID(pid int) error {
	if pid <= 0 || !alive(pid) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if len(waitGone([]int{pid}, 3*time.Second)) == 0 {
		return nil
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if len(waitGone([]int{pid}, 2*time.Second)) > 0 {
		return fmt.Errorf("process %d survives SIGKILL", pid)
	}
	return nil
}

// daemons writes the cluster lab's state and configurations and starts
// what is not running: the router's BIRD first (the nodes' sessions then
// come up at their first try), the nodes', the watcher. It returns once
// every BGP session is established.
func (s *setup) daemons(exe string) error {
	l := s.lab
	if _, err := os.Stat(l.RunDir); errors.Is(err, os.ErrNotExist) {
		s.undo = append(s.undo, func() error { return os.RemoveAll(l.RunDir) })
	}
	if err := l.mkdirs(); err != nil {
		return err
	}
	if err := writeState(l); err != nil {
		return err
	}
	start := func(ns string, f birdFiles, conf string, recover bool) error {
		if err := os.WriteFile(f.conf, []byte(conf), 0o644); err != nil {
			return err
		}
		started, err := startBIRD(s.ctx, ns, f, recover)
		if started {
			pid := livePID(f.pid, f.conf)
			s.undo = append(s.undo, func() error { return killPID(pid) })
		}
		return err
	}
	rt := birdPaths(l.routerDir())
	// A router BIRD that died left its routes in the kernel (persist):
	// its successor recovers them with graceful restart.
	_, err := os.Stat(rt.pid)
	recover := err == nil && livePID(rt.pid, rt.conf) == 0
	if err := start(l.Router, rt, l.routerBIRDConfig(), recover); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if err := start(n.NS, birdPaths(l.nodeDir(n.Index)), l.nodeBIRDConfig(n), false); err != nil {
			return err
		}
	}
	started, err := l.startWatcher(s.ctx, exe)
	if started {
		pidFile, _ := l.watcherFiles()
		pid := livePID(pidFile, pidFile)
		s.undo = append(s.undo, func() error { return killPID(pid) })
	}
	if err != nil {
		return err
	}
	return l.waitSessions(s.ctx, 20*time.Second)
}

// waitSessions waits until every BGP session of the router is established.
func (l *Lab) waitSessions(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		sessions, err := l.BGPSessions()
		down := []string{}
		for _, s := range sessions {
			if s.State != "Established" {
				down = append(down, s.Session+" "+s.State)
			}
		}
		if err == nil && len(down) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("BGP sessions: %w", err)
			}
			return fmt.Errorf("BGP sessions not established after %v: %s", limit, strings.Join(down, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// namespaceProcesses lists the processes (but this one) whose network
// namespace is one of the named ones.
func namespaceProcesses(names []string) []int {
	inodes := map[uint64]bool{}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Stat(netnsPath(n), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(link, "net:[%d]", &ino); err == nil && inodes[ino] && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// stopNamespaceProcesses ends what still runs in a cluster lab's
// namespaces (the converters started in its nodes): SIGTERM, SIGKILL
// after 3 s. Otherwise they would hold their namespaces, cut off, after
// the names are gone.
func stopNamespaceProcesses(names []string) error {
	if left := terminate(namespaceProcesses(names)); len(left) > 0 {
		return fmt.Errorf("processes %v survive SIGKILL", left)
	}
	return nil
}
