package histogram

import (
	"sync"
	"testing"
	"time"
)

func TestObserveBuckets(t *testing.T) {
	h := New(10, 100, 1000)
	for _, v := range []int64{0, 10, 11, 100, 500, 1000, 1001, 5000} {
		h.Observe(v)
	}
	s := h.Snapshot()
	want := []uint64{2, 2, 2, 2}
	for i := range want {
		if s.Counts[i] != want[i] {
			t.Fatalf("counts %v, want %v", s.Counts, want)
		}
	}
	if s.Sum != 0+10+11+100+500+1000+1001+5000 {
		t.Errorf("sum %d", s.Sum)
	}
	cum, n := s.Cumulative()
	if n != 8 || cum[0] != 2 || cum[1] != 4 || cum[2] != 6 || s.Count() != 8 {
		t.Errorf("cumulative %v count %d", cum, n)
	}
}

func TestConcurrent(t *testing.T) {
	h := New(Durations(0.001, 0.01)...)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				h.ObserveDuration(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	s := h.Snapshot()
	if s.Count() != 8000 || s.Counts[1] != 8000 {
		t.Errorf("counts %v", s.Counts)
	}
}

func TestBoundsMustIncrease(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	New(2, 1)
}

func BenchmarkObserve(b *testing.B) {
	h := New(Durations(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)...)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(3_000_000)
		}
	})
}
