package netns

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/lab"
)

// TestUpgrade starts a second `converter run` while the first one runs,
// as an operator does to upgrade the binary. The new process takes over
// the listening sockets and the BPF programs' maps and links; the old one
// drains. A client opens 200 connections per second across the hand-over
// (MPTCP, the Convert message in the SYN, an echo through the converter):
// none may be refused, reset or left unconverted. Long downloads running
// on the old process (MPTCP, SYN data, a second subflow) finish intact.
func TestUpgrade(t *testing.T) {
	for _, mode := range []string{"explicit", "transparent", "share"} {
		t.Run(mode, func(t *testing.T) { testUpgrade(t, mode) })
	}
}

func testUpgrade(t *testing.T, mode string) {
	e := newEnv(t)
	control := filepath.Join(t.TempDir(), "control.sock")
	args := []string{"--control", control, "--drain-timeout", "60s", "--rate-per-client", "0"}
	echoDest := netip.MustParseAddrPort("10.201.3.2:8077")
	via := e.via4()
	if mode == "transparent" {
		args = append(args, "--transparent", "--client-iface", lab.IfConvPath1, "--client-iface", lab.IfConvPath2, "--server-iface", lab.IfConvServer)
		via = echoDest // steered: the client addresses the server itself
	}
	natLog := filepath.Join(t.TempDir(), "nat.log")
	if mode == "share" {
		// Small blocks: the load takes new ones on both sides of the
		// hand-over.
		args = append(args, "--nat", "share", "--pool", "10.201.100.0/28", "--nat-log", natLog, "--port-block", "64", "--max-blocks-per-client", "32")
	}
	old := e.startConverter(args...)
	serveDownloads(e.listen(e.serverNS(), "10.201.3.2:8000", false))
	echo(e.listen(e.serverNS(), echoDest.String(), false))
	waitControl(t, control)
	var bpfBefore map[string]any
	if mode == "transparent" {
		bpfBefore = bpfStatusAt(t, control)
	}

	// Long downloads on the old process, read slowly so that they last
	// well past the hand-over.
	const size = 48 << 20
	type download struct {
		seed uint64
		res  chan result
	}
	var downloads []download
	for i := range 3 {
		dlVia := e.via4()
		if mode == "transparent" {
			dlVia = netip.MustParseAddrPort("10.201.3.2:8000")
		}
		c, err := e.convert(client.Options{Via: dlVia, Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		waitSubflows(t, c.TCPConn, 2)
		d := download{seed: uint64(70 + i), res: make(chan result, 1)}
		fmt.Fprintf(c, "%d %d\n", d.seed, size)
		go func() {
			c.SetReadBuffer(256 << 10)
			sum, n, err := digest(&slowReader{r: c, every: 2 << 20, pause: 100 * time.Millisecond})
			c.Close()
			d.res <- result{gotDigest: sum, got: n, err: err}
		}()
		downloads = append(downloads, d)
	}

	// 200 connections per second, from before the hand-over to after it.
	load := startLoad(e, via, echoDest)
	time.Sleep(time.Second)

	start := time.Now()
	next := e.startConverter(args...)
	ready := time.Since(start)
	took := next.waitRecords(t, "took over", 1)
	handed := old.waitRecords(t, "handed over", 1)
	if len(took) == 0 || len(handed) == 0 {
		t.Fatalf("no hand-over: new process log:\n%s\nold process log:\n%s", next.rawLog(), old.rawLog())
	}
	t.Logf("hand-over: new process listening %v after its start; took over: %v; old: %v", ready.Round(time.Millisecond), took[0], handed[0])

	time.Sleep(1500 * time.Millisecond)
	opened, failures := load()

	for _, d := range downloads {
		r := <-d.res
		if r.err != nil || r.got != size || r.gotDigest != streamDigest(d.seed, size) {
			t.Errorf("download on the old process across the hand-over: %d of %d bytes, %v", r.got, size, r.err)
		}
	}
	waitExit(t, old, 30*time.Second)
	t.Logf("old process gone %v after the new one started (its downloads ended first)", time.Since(start).Round(time.Millisecond))

	checkLoad(t, opened, failures)
	if mode == "share" {
		if n := checkBlocksOnce(t, natLog); n < 4 {
			t.Errorf("only %d blocks allocated: the hand-over of the pool was not exercised", n)
		}
		if len(next.records("address pool taken over")) != 1 {
			t.Errorf("the new process did not take the address pool over")
		}
	}
	// The new process serves alone now, on the same control socket.
	if kind := echoOnce(e, via, echoDest, -1); kind != "" {
		t.Errorf("a connection after the old process left: %s", kind)
	}
	out, err := exec.Command(converterBin, "status", "--control", control).CombinedOutput()
	if err != nil {
		t.Errorf("status after the hand-over: %v\n%s", err, out)
	}
	if mode == "transparent" {
		after := bpfStatusAt(t, control)
		if a, b := linkIDs(after), linkIDs(bpfBefore); a == "" || a != b {
			t.Errorf("steering links %q after the hand-over, want the same links as before %q", a, b)
		}
	}
}

// echoOnce opens one converted connection with its message in the SYN
// and checks the echo; it returns "" or what went wrong, in a word.
func echoOnce(e *env, via, dest netip.AddrPort, i int) string {
	msg := []byte(fmt.Sprintf("upgrade ping %d", i))
	c, err := e.convert(client.Options{Via: via, Dest: dest, MPTCP: true}, msg)
	if err != nil {
		var ce *client.Error
		switch {
		case errors.As(err, &ce):
			return "refused:" + ce.Code.String()
		case errors.Is(err, syscall.ECONNRESET):
			return "reset"
		case errors.Is(err, syscall.ECONNREFUSED):
			return "connection-refused"
		}
		return "convert-failed:" + strings.SplitN(err.Error(), ":", 2)[0]
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case err != nil:
		return "read-failed"
	case string(got) != string(msg):
		return "unconverted-or-corrupt"
	}
	return ""
}

// linkIDs lists the tcx link ids of the steering program in a bpf status.
func linkIDs(st map[string]any) string {
	steer, _ := st["steering"].(map[string]any)
	links, _ := steer["Links"].([]any)
	var ids []string
	for _, l := range links {
		m, _ := l.(map[string]any)
		ids = append(ids, fmt.Sprint(m["LinkID"]))
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// waitControl waits until the daemon answers on its control socket, which
// it opens right after its listeners.
func waitControl(t *testing.T, control string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := exec.Command(converterBin, "status", "--control", control).Run()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer on %s: %v", control, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startLoad opens a converted connection every 5 ms (200 per second) until
// the returned function is called; that returns how many were opened and
// the failures by kind.
func startLoad(e *env, via, dest netip.AddrPort) func() (int, map[string]int) {
	var mu sync.Mutex
	failures := map[string]int{}
	opened := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				kind := echoOnce(e, via, dest, i)
				mu.Lock()
				opened++
				if kind != "" {
					failures[kind]++
				}
				mu.Unlock()
			}()
		}
	}()
	return func() (int, map[string]int) {
		close(stop)
		wg.Wait()
		return opened, failures
	}
}

// checkLoad fails the test for any connection that was refused, reset or
// left unconverted, and for a load too short to span a hand-over.
func checkLoad(t *testing.T, opened int, failures map[string]int) {
	t.Helper()
	var kinds []string
	lost := 0
	for k, n := range failures {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		lost += n
	}
	sort.Strings(kinds)
	t.Logf("%d connections across the hand-over, %d failed %v", opened, lost, kinds)
	if lost != 0 {
		t.Errorf("%d of %d connections refused, reset or unconverted across the hand-over: %v", lost, opened, kinds)
	}
	if opened < 400 {
		t.Errorf("only %d connections opened: the load did not cover the hand-over", opened)
	}
}

// TestUpgradeReexec: `converter upgrade` (SIGUSR2) under systemd
// semantics. The daemon runs its binary again; the new process takes over
// and becomes the unit's main process (MAINPID from the old one, then
// READY=1 from the new one); the old one drains its download and exits.
// No connection of a 200 per second load is refused, reset or left
// unconverted.
func TestUpgradeReexec(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	notifyPath, next := fakeNotifySocket(t, dir)
	control := filepath.Join(dir, "control.sock")
	old := e.startConverterEnv([]string{"NOTIFY_SOCKET=" + notifyPath}, "--control", control, "--drain-timeout", "60s", "--rate-per-client", "0")
	next("READY=1")
	serveDownloads(e.listen(e.serverNS(), "10.201.3.2:8000", false))
	echoDest := netip.MustParseAddrPort("10.201.3.2:8077")
	echo(e.listen(e.serverNS(), echoDest.String(), false))

	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitSubflows(t, c.TCPConn, 2)
	const size = 48 << 20
	fmt.Fprintf(c, "%d %d\n", 91, size)
	got := make(chan result, 1)
	go func() {
		c.SetReadBuffer(256 << 10)
		sum, n, err := digest(&slowReader{r: c, every: 2 << 20, pause: 100 * time.Millisecond})
		c.Close()
		got <- result{gotDigest: sum, got: n, err: err}
	}()

	load := startLoad(e, e.via4(), echoDest)
	time.Sleep(time.Second)
	out, err := exec.Command(converterBin, "upgrade", "--json", "--control", control).Output()
	if err != nil {
		t.Fatalf("converter upgrade: %v\n%s\nlog:\n%s", err, out, old.rawLog())
	}
	var o struct {
		Version string `json:"version"`
		OK      bool   `json:"ok"`
		PID     int    `json:"pid"`
		TookMS  int64  `json:"took_ms"`
	}
	if err := json.Unmarshal(out, &o); err != nil || !o.OK || o.PID == 0 || o.Version == "" {
		t.Fatalf("converter upgrade --json: %s (%v)", out, err)
	}
	t.Cleanup(func() { stopPID(t, o.PID) })
	t.Logf("converter upgrade: %s", strings.TrimSpace(string(out)))
	next(fmt.Sprintf("MAINPID=%d", o.PID))
	next("READY=1")
	time.Sleep(1500 * time.Millisecond)
	opened, failures := load()
	checkLoad(t, opened, failures)

	r := <-got
	if r.err != nil || r.got != size || r.gotDigest != streamDigest(91, size) {
		t.Errorf("download on the old process across the upgrade: %d of %d bytes, %v", r.got, size, r.err)
	}
	oldPID := old.cmd.Process.Pid
	deadline := time.Now().Add(30 * time.Second)
	for processAlive(oldPID) {
		if time.Now().After(deadline) {
			t.Fatalf("the old process %d did not exit after its drain", oldPID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !processAlive(o.PID) {
		t.Fatalf("the new process %d is gone", o.PID)
	}
	if kind := echoOnce(e, e.via4(), echoDest, -1); kind != "" {
		t.Errorf("a connection once the old process left: %s", kind)
	}
	if out, err := exec.Command(converterBin, "status", "--control", control).CombinedOutput(); err != nil {
		t.Errorf("status after the upgrade: %v\n%s", err, out)
	}
}

// processAlive reports whether pid runs (a zombie has ended).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// stopPID stops a daemon the test did not start itself (an upgrade's new
// process): SIGTERM twice, then SIGKILL.
func stopPID(t *testing.T, pid int) {
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGTERM, syscall.SIGKILL} {
		syscall.Kill(pid, sig)
		deadline := time.Now().Add(time.Duration(3*(i+1)) * time.Second)
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !processAlive(pid) {
			return
		}
	}
	t.Errorf("process %d did not stop", pid)
}

// checkBlocksOnce reads a mapping log written by both processes of a
// hand-over: no port block may be allocated twice (the hold of every port
// outlasts the test, so no block is released in between).
func checkBlocksOnce(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["event"] != "alloc" {
			continue
		}
		lines++
		seen[fmt.Sprint(rec["external"], " ", rec["ports"])]++
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("port block %s allocated %d times across the hand-over", k, n)
		}
	}
	t.Logf("mapping log: %d block allocations, none twice", lines)
	return lines
}
