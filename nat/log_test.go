package nat

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func readLines(t *testing.T, path string) []map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]string
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestMappingLogPool(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.log")
	l, err := OpenMappingLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 512, MaxBlocksPerClient: 2,
		Hold: 2 * time.Second, Now: clk.Now, Log: l,
	})
	c := ip("10.0.0.5")
	var ms []Mapping
	for range 600 { // two blocks
		ms = append(ms, mustAlloc(t, p, c, IPv4))
	}
	mustAlloc(t, p, ip("2001:db8::7"), IPv4)
	clk.Advance(time.Second)
	for _, m := range ms {
		p.Release(m)
	}
	clk.Advance(2 * time.Second)
	p.Sweep()
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	got := readLines(t, path)
	t0 := clockBase.Format(time.RFC3339Nano)
	t3 := clockBase.Add(3 * time.Second).Format(time.RFC3339Nano)
	want := []map[string]string{
		{"time": t0, "event": "alloc", "client": "10.0.0.5", "external": "192.0.2.10", "ports": "1024-1535"},
		{"time": t0, "event": "alloc", "client": "10.0.0.5", "external": "192.0.2.10", "ports": "1536-2047"},
		{"time": t0, "event": "alloc", "client": "2001:db8::7", "external": "192.0.2.10", "ports": "2048-2559"},
	}
	rel := []map[string]string{
		{"time": t3, "event": "release", "client": "10.0.0.5", "external": "192.0.2.10", "ports": "1024-1535"},
		{"time": t3, "event": "release", "client": "10.0.0.5", "external": "192.0.2.10", "ports": "1536-2047"},
	}
	if len(got) != 5 || !reflect.DeepEqual(got[:3], want) {
		t.Fatalf("lines\n got %v\nwant %v + releases", got, want)
	}
	// Both blocks drain at the same instant; order between them is free.
	if !(reflect.DeepEqual(got[3:], rel) || reflect.DeepEqual(got[3:], []map[string]string{rel[1], rel[0]})) {
		t.Fatalf("release lines %v", got[3:])
	}
	if st := p.Stats(); l.Refused() != 0 || l.Written() != 5 || st.Log == nil || st.Log.Written != 5 || st.Log.Queued != 0 || st.RefusalsLogFull != 0 {
		t.Fatalf("refused %d written %d, stats %+v", l.Refused(), l.Written(), st.Log)
	}
	if t0[len(t0)-1] != 'Z' {
		t.Fatalf("time not UTC: %s", t0)
	}
}

func TestMappingLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "map.log")
	l, err := OpenMappingLog(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mustLog(t, l, now, EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), 1024, 1535)
	l.Sync()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	mustLog(t, l, now, EventRelease, ip("10.0.0.1"), ip("192.0.2.1"), 1024, 1535) // still the old file
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	mustLog(t, l, now, EventAlloc, ip("10.0.0.2"), ip("192.0.2.1"), 1536, 2047)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	old, cur := readLines(t, path+".1"), readLines(t, path)
	if len(old) != 2 || old[0]["event"] != "alloc" || old[1]["event"] != "release" {
		t.Fatalf("rotated file: %v", old)
	}
	if len(cur) != 1 || cur[0]["client"] != "10.0.0.2" || cur[0]["ports"] != "1536-2047" {
		t.Fatalf("new file: %v", cur)
	}
	// After Close: lines are refused, control calls fail.
	err = l.logBlock(now, EventAlloc, ip("10.0.0.3"), ip("192.0.2.1"), 1, 2)
	if !errors.Is(err, ErrLogFull) || !errors.Is(err, ErrLogClosed) {
		t.Fatalf("line after Close: %v", err)
	}
	if st := l.Stats(); st.RefusedClosed != 1 || st.RefusedFull != 0 || st.Written != 3 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := l.Reopen(); !errors.Is(err, ErrLogClosed) {
		t.Fatal(err)
	}
	if err := l.Close(); !errors.Is(err, ErrLogClosed) {
		t.Fatal(err)
	}
}

func TestMappingLogNonBlocking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.log")
	const size = 8
	l, err := openMappingLog(path, size)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	resume := stallWriter(l)
	done := make(chan struct{})
	var refused []error
	go func() {
		for i := range size + 5 {
			if err := l.logBlock(time.Now(), EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), uint16(i), uint16(i)); err != nil {
				refused = append(refused, err)
			}
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("logBlock blocked on a full buffer")
	}
	if l.Refused() != 5 || l.Stats().RefusedFull != 5 || len(refused) != 5 {
		t.Fatalf("refused %d, want 5", l.Refused())
	}
	for _, err := range refused {
		if !errors.Is(err, ErrLogFull) || errors.Is(err, ErrLogClosed) || errors.Is(err, ErrExhausted) {
			t.Fatalf("refusal %v", err)
		}
	}
	resume()
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(readLines(t, path)); n != size {
		t.Fatalf("%d lines, want %d", n, size)
	}
}

func TestNilMappingLog(t *testing.T) {
	var l *MappingLog
	if err := l.logBlock(time.Now(), EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), 1, 2); err != nil {
		t.Fatal(err)
	}
	if l.Refused() != 0 || l.Written() != 0 || l.Stats() != (LogStats{}) {
		t.Fatal("nil log counts")
	}
}

func mustLog(t *testing.T, l *MappingLog, now time.Time, event string, client, ext netip.Addr, first, last uint16) {
	t.Helper()
	if err := l.logBlock(now, event, client, ext, first, last); err != nil {
		t.Fatal(err)
	}
}

// stallWriter holds the writer goroutine until resume is called: lines
// pile up in the buffer.
func stallWriter(l *MappingLog) (resume func()) {
	started, release := make(chan struct{}), make(chan struct{})
	l.ctl <- func() { close(started); <-release }
	<-started
	return func() { close(release) }
}

// A full log refuses the allocation that needs a new block: nothing is
// allocated, the refusal is counted, and no line ever shows it.
func TestAllocationRefusedWhenLogFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.log")
	l, err := openMappingLog(path, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 4, PortMin: 1024, PortMax: 1039,
		Hold: time.Second, Now: clk.Now, Log: l,
	})
	resume := stallWriter(l)
	a, b, c := ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")
	mustAlloc(t, p, a, IPv4)
	mustAlloc(t, p, b, IPv4) // the buffer (2 lines) is full now
	before := p.Stats()
	m, err := p.Allocate(c, IPv4)
	if !errors.Is(err, ErrLogFull) || errors.Is(err, ErrExhausted) || m != (Mapping{}) {
		t.Fatalf("Allocate with a full log: %v, %v", m, err)
	}
	after := p.Stats()
	if after.RefusalsLogFull != 1 || after.Refusals != before.Refusals+1 || after.Log.RefusedFull != 1 {
		t.Fatalf("refusal not counted: %+v %+v", after, after.Log)
	}
	if after.UsedBlocks != 2 || after.UsedPorts != 2 || after.BlockAllocations != 2 || after.Allocations != 2 || len(after.Clients) != 2 {
		t.Fatalf("something was allocated: %+v", after)
	}
	// A port inside a block already logged needs no line.
	mustAlloc(t, p, a, IPv4)
	// A second block for a known Client needs one: refused too.
	for range 2 {
		mustAlloc(t, p, b, IPv4)
	}
	mustAlloc(t, p, b, IPv4) // b's block (4 ports) is used up now
	if _, err := p.Allocate(b, IPv4); !errors.Is(err, ErrLogFull) {
		t.Fatalf("second block with a full log: %v", err)
	}
	checkInvariants(t, p, nil)
	resume()
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	mc := mustAlloc(t, p, c, IPv4) // room again
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 3 || lines[2]["client"] != "10.0.0.3" {
		t.Fatalf("lines %v", lines)
	}
	ports := fmt.Sprintf("%d-%d", mc.External.Port()&^3, mc.External.Port()|3)
	if lines[2]["ports"] != ports {
		t.Fatalf("logged %s, allocated %v", lines[2]["ports"], mc)
	}
	if st := p.Stats(); st.RefusalsLogFull != 2 || st.Log.RefusedFull != 2 || st.Log.Written != 3 {
		t.Fatalf("stats %+v %+v", st, st.Log)
	}
}

// A block whose release line the log cannot take stays with its Client,
// and is released (and logged) by a later sweep: the log never shows one
// block held by two Clients.
func TestReleaseDeferredWhenLogFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.log")
	l, err := openMappingLog(path, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 4, PortMin: 1024, PortMax: 1027, // one block
		Hold: time.Second, Now: clk.Now, Log: l,
	})
	a, b := ip("10.0.0.1"), ip("10.0.0.2")
	m := mustAlloc(t, p, a, IPv4)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(m); err != nil {
		t.Fatal(err)
	}
	resume := stallWriter(l)
	mustLog(t, l, clockBase, EventAlloc, ip("10.9.9.9"), ip("192.0.2.99"), 1, 2) // fills the buffer
	clk.Advance(time.Second)
	p.Sweep()
	st := p.Stats()
	if st.BlockReleases != 0 || st.UsedBlocks != 1 || st.ReleasesDeferred != 1 || len(st.Clients) != 1 {
		t.Fatalf("block released unlogged: %+v", st)
	}
	if _, err := p.Allocate(b, IPv4); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("another client got the block: %v", err)
	}
	resume()
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	p.Sweep()
	if st := p.Stats(); st.BlockReleases != 1 || st.UsedBlocks != 0 {
		t.Fatalf("deferred release not retried: %+v", st)
	}
	if err := l.Sync(); err != nil { // room for the next line
		t.Fatal(err)
	}
	mustAlloc(t, p, b, IPv4)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	var got []string
	for _, ln := range lines {
		if ln["external"] == "192.0.2.10" {
			got = append(got, ln["event"]+" "+ln["client"]+" "+ln["time"])
		}
	}
	t2 := clockBase.Add(2 * time.Second).Format(time.RFC3339Nano)
	want := []string{
		"alloc 10.0.0.1 " + clockBase.Format(time.RFC3339Nano),
		"release 10.0.0.1 " + t2, // when it really went back
		"alloc 10.0.0.2 " + t2,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("lines\n got %q\nwant %q", got, want)
	}
}

func TestMappingLogFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "map.log")
	l, err := OpenMappingLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^LogFileMode != 0 {
		t.Fatalf("log created with mode %04o", perm)
	}
	// Not a regular file: refused, without blocking on a FIFO.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, fifo} {
		if _, err := OpenMappingLog(p); err == nil {
			t.Errorf("%s opened as a mapping log", p)
		}
	}
}

// A symbolic link at the log path is not followed: the open fails with an
// error that says so, and nothing is written to the link's target.
func TestMappingLogSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "passwd")
	os.WriteFile(target, []byte("root:x:0:0\n"), 0o644)
	path := filepath.Join(dir, "map.log")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	_, err := OpenMappingLog(path)
	if err == nil || !errors.Is(err, syscall.ELOOP) || !strings.Contains(err.Error(), "symbolic link") || !strings.Contains(err.Error(), path) {
		t.Fatalf("open through a symlink: %v", err)
	}
	// Planted between two rotations: Reopen refuses it and keeps
	// writing to the old file.
	os.Remove(path)
	l, err := OpenMappingLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Rename(path, path+".1")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil || !errors.Is(err, syscall.ELOOP) {
		t.Fatalf("Reopen through a symlink: %v", err)
	}
	mustLog(t, l, time.Now(), EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), 1024, 1535)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "root:x:0:0\n" {
		t.Fatalf("target written: %q", b)
	}
	if n := len(readLines(t, path+".1")); n != 1 {
		t.Fatalf("%d lines in the old file", n)
	}
	if l.WriteErrors() != 1 {
		t.Fatalf("write errors %d", l.WriteErrors())
	}
}

// failWriter fails (ENOSPC) while fail is set, after writing a few bytes,
// as a full disk does.
type failWriter struct {
	fail atomic.Bool
	w    io.Writer
}

func (f *failWriter) Write(b []byte) (int, error) {
	if !f.fail.Load() {
		return f.w.Write(b)
	}
	n, _ := f.w.Write(b[:min(len(b), 7)])
	return n, syscall.ENOSPC
}

// After a write error the writer keeps the lines and retries; it takes no
// new ones meanwhile, so allocations are refused once the buffer is full
// instead of piling up unlogged. When the disk recovers every accepted
// line is written, whole.
func TestMappingLogWriteErrorRetried(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.log")
	const size = 4
	l, err := openMappingLog(path, size)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fw := &failWriter{}
	fw.fail.Store(true)
	l.control(func() error {
		fw.w, l.out, l.retry = l.f, fw, 5*time.Millisecond
		return nil
	})
	accepted := 0
	for i := range 50 {
		if l.logBlock(time.Now(), EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), uint16(i), uint16(i)) == nil {
			accepted++
		}
		time.Sleep(time.Millisecond)
	}
	st := l.Stats()
	if !st.Failing || st.WriteErrors == 0 || st.RefusedFull == 0 || accepted > size+1 || accepted+int(st.RefusedFull) != 50 {
		t.Fatalf("accepted %d, stats %+v", accepted, st)
	}
	if err := l.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Sync while failing: %v", err)
	}
	fw.fail.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().Failing && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(readLines(t, path)); n != accepted {
		t.Fatalf("%d lines, %d accepted", n, accepted)
	}
	if st := l.Stats(); st.Failing || st.Written != uint64(accepted) || st.Queued != 0 || st.Lost != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Rotation while Clients come and go on other goroutines (run with -race):
// every block allocation and release made has exactly one line, in one of
// the files; what the log refused (the writer may fall behind) was not
// allocated, or not released yet, and is counted.
func TestMappingLogReopenConcurrent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "map.log")
	l, err := OpenMappingLog(path)
	if err != nil {
		t.Fatal(err)
	}
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.0/30")}, BlockSize: 4, PortMin: 1024, PortMax: 2047,
		MaxBlocksPerClient: 1, Hold: -1, Log: l,
	})
	const workers, rounds = 8, 400
	var wg sync.WaitGroup
	var refused atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				c := netip.AddrFrom4([4]byte{10, byte(w), byte(r >> 8), byte(r)})
				m, err := p.Allocate(c, IPv4)
				if err != nil {
					if !errors.Is(err, ErrLogFull) {
						t.Error(err)
						return
					}
					refused.Add(1)
					continue
				}
				if err := p.Release(m); err != nil { // no hold: the block goes back at once
					t.Error(err)
					return
				}
			}
		}()
	}
	files := []string{}
	for i := 0; ; i++ {
		rotated := fmt.Sprintf("%s.%d", path, i)
		if err := os.Rename(path, rotated); err != nil {
			t.Fatal(err)
		}
		files = append(files, rotated)
		if err := l.Reopen(); err != nil {
			t.Fatal(err)
		}
		if st := p.Stats(); int(st.Allocations)+int(refused.Load()) == workers*rounds || i > 10000 {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	wg.Wait()
	// Releases the full log deferred go through once it has room.
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	p.Sweep()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files = append(files, path)
	st := p.Stats()
	seen := map[string]int{}
	alloc, rel, nonEmpty := 0, 0, 0
	for _, f := range files {
		lines := readLines(t, f)
		if len(lines) > 0 {
			nonEmpty++
		}
		for _, ln := range lines {
			seen[ln["event"]+" "+ln["client"]]++
			switch ln["event"] {
			case EventAlloc:
				alloc++
			case EventRelease:
				rel++
			}
		}
	}
	if uint64(alloc) != st.BlockAllocations || uint64(rel) != st.BlockReleases || st.UsedBlocks != 0 {
		t.Fatalf("%d alloc and %d release lines for %d and %d blocks (%d used), log %+v", alloc, rel, st.BlockAllocations, st.BlockReleases, st.UsedBlocks, st.Log)
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%q logged %d times", k, n)
		}
	}
	if st.Log.Lost != 0 || st.Log.WriteErrors != 0 || int(st.Log.RefusedFull) != int(refused.Load())+int(st.ReleasesDeferred) {
		t.Fatalf("log %+v, %d refused, %d deferred", st.Log, refused.Load(), st.ReleasesDeferred)
	}
	t.Logf("%d files (%d with lines), %d blocks, %d refused", len(files), nonEmpty, st.BlockAllocations, refused.Load())
}

func TestMappingLogUnverified(t *testing.T) {
	path := filepath.Join(t.TempDir(), "map.log")
	l, err := OpenMappingLog(path)
	if err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	p := mustPool(t, PoolConfig{
		Prefixes: []netip.Prefix{pfx("192.0.2.10/32")}, BlockSize: 4, MaxBlocksPerClient: 1,
		Hold: time.Second, Now: clk.Now, Log: l,
	})
	m := mustAlloc(t, p, ip("10.0.0.9"), IPv4)
	p.LogUnverified(m)
	p.Release(m)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 2 || lines[1]["event"] != EventUnverified || lines[1]["client"] != "10.0.0.9" ||
		lines[1]["external"] != "192.0.2.10" || lines[1]["ports"] != fmt.Sprintf("%d-%d", m.External.Port(), m.External.Port()) {
		t.Errorf("lines %v: want the allocation, then one unverified line for port %d", lines, m.External.Port())
	}
}
