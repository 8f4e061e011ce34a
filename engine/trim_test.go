package engine

import (
	"testing"
	"time"
)

// A trim follows a crowd of newly parked directions, at most once per
// interval, and not for churn within a steady crowd.
func TestTrimmer(t *testing.T) {
	calls := 0
	tr := &trimmer{free: func() { calls++ }}
	now := time.Unix(1000, 0)
	sync := func(f func()) { f() }
	step := func(d time.Duration, parked int) {
		now = now.Add(d)
		tr.tick(now, parked, sync)
	}
	step(0, 10)
	if calls != 0 {
		t.Fatalf("trimmed for 10 parked directions")
	}
	step(2*time.Second, 200) // under the minimum growth
	if calls != 0 {
		t.Fatalf("trimmed for 200 parked directions")
	}
	step(200*time.Millisecond, 2000) // a crowd went idle
	if calls != 1 {
		t.Fatalf("%d trims after 2000 parked, want 1", calls)
	}
	step(200*time.Millisecond, 4000) // more, but too soon
	if calls != 1 {
		t.Fatalf("trimmed again within the interval")
	}
	step(time.Second, 4000) // due now: 2000 more than at the last trim
	if calls != 2 {
		t.Fatalf("%d trims, want 2", calls)
	}
	// Churn: 500 end and 500 others park, under a quarter of 4000.
	step(2*time.Second, 3500)
	step(2*time.Second, 4000)
	if calls != 2 {
		t.Fatalf("trimmed for churn in a steady crowd")
	}
	step(2*time.Second, 4500) // 1000 more than the low point: more than a quarter of 3500 (875) and the minimum (256)
	if calls != 3 {
		t.Fatalf("%d trims, want 3", calls)
	}
	if tr.trims.Load() != 3 {
		t.Fatalf("trims counter %d", tr.trims.Load())
	}
	// The tail of a crowd: under a quarter more, but steady for a while.
	step(2*time.Second, 4900) // 400 more than at the last trim (4500)
	if calls != 3 {
		t.Fatalf("trimmed while the count still moves")
	}
	step(500*time.Millisecond, 4900)
	step(600*time.Millisecond, 4900) // steady for 1.1 s
	if calls != 4 {
		t.Fatalf("%d trims, want 4 once the tail settled", calls)
	}
	step(2*time.Second, 4900) // nothing new parked: no trim
	if calls != 4 {
		t.Fatalf("trimmed again with nothing new parked")
	}
}
