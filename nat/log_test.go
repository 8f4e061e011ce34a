package nat

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
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
	if l.Dropped() != 0 || l.Written() != 5 || p.Stats().LogDropped != 0 {
		t.Fatalf("dropped %d written %d", l.Dropped(), l.Written())
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
	l.logBlock(now, EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), 1024, 1535)
	l.Sync()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.logBlock(now, EventRelease, ip("10.0.0.1"), ip("192.0.2.1"), 1024, 1535) // still the old file
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.logBlock(now, EventAlloc, ip("10.0.0.2"), ip("192.0.2.1"), 1536, 2047)
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
	// After Close: lines are dropped, control calls fail.
	l.logBlock(now, EventAlloc, ip("10.0.0.3"), ip("192.0.2.1"), 1, 2)
	if l.Dropped() != 1 {
		t.Fatalf("dropped %d", l.Dropped())
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
	// Stall the writer.
	started, resume := make(chan struct{}), make(chan struct{})
	l.ch <- logItem{ctrl: func() { close(started); <-resume }}
	<-started
	done := make(chan struct{})
	go func() {
		for i := range size + 5 {
			l.logBlock(time.Now(), EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), uint16(i), uint16(i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("logBlock blocked on a full buffer")
	}
	if l.Dropped() != 5 {
		t.Fatalf("dropped %d, want 5", l.Dropped())
	}
	close(resume)
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if n := len(readLines(t, path)); n != size {
		t.Fatalf("%d lines, want %d", n, size)
	}
}

func TestNilMappingLog(t *testing.T) {
	var l *MappingLog
	l.logBlock(time.Now(), EventAlloc, ip("10.0.0.1"), ip("192.0.2.1"), 1, 2)
	if l.Dropped() != 0 || l.Written() != 0 {
		t.Fatal("nil log counts")
	}
}
