// Package histogram is a fixed-bucket histogram that costs a few atomic
// additions per observation and no lock, for the engine's hot paths. It
// knows nothing of any metrics library: a collector reads a Snapshot at
// scrape time and exports it (internal/metrics turns it into a
// Prometheus histogram).
package histogram

import (
	"sync/atomic"
	"time"
)

// Histogram counts int64 observations into buckets with fixed upper
// bounds (inclusive, as Prometheus' le) plus one above the last bound.
// The zero value is not usable: make one with New.
type Histogram struct {
	bounds []int64
	counts []atomic.Uint64 // len(bounds)+1: the last is above every bound
	sum    atomic.Int64
}

// New returns a histogram with the given upper bounds, which must be
// increasing.
func New(bounds ...int64) *Histogram {
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			panic("histogram: bounds must increase")
		}
	}
	return &Histogram{bounds: append([]int64(nil), bounds...), counts: make([]atomic.Uint64, len(bounds)+1)}
}

// Durations returns bounds for durations, from the given seconds.
func Durations(seconds ...float64) []int64 {
	out := make([]int64, len(seconds))
	for i, s := range seconds {
		out[i] = int64(s * float64(time.Second))
	}
	return out
}

// Observe counts v: two atomic additions.
func (h *Histogram) Observe(v int64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(v)
}

// ObserveDuration counts d in nanoseconds.
func (h *Histogram) ObserveDuration(d time.Duration) { h.Observe(int64(d)) }

// Since counts the time elapsed since t.
func (h *Histogram) Since(t time.Time) { h.ObserveDuration(time.Since(t)) }

// Snapshot is a histogram's content at one time.
type Snapshot struct {
	// Bounds are the buckets' upper bounds; Counts has one more element,
	// the observations above the last bound. Counts are per bucket, not
	// cumulative.
	Bounds []int64
	Counts []uint64
	Sum    int64
}

// Snapshot reads the histogram. Observations made during the read may
// be in the sum and not yet in a bucket; Count is always the buckets'
// total.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: h.bounds, Counts: make([]uint64, len(h.counts)), Sum: h.sum.Load()}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	return s
}

// Count returns the number of observations.
func (s Snapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Cumulative returns, for each bound, the observations at or below it
// (Prometheus' buckets), and the total count.
func (s Snapshot) Cumulative() (buckets []uint64, count uint64) {
	buckets = make([]uint64, len(s.Bounds))
	for i := range s.Bounds {
		count += s.Counts[i]
		buckets[i] = count
	}
	if len(s.Counts) > len(s.Bounds) {
		count += s.Counts[len(s.Bounds)]
	}
	return buckets, count
}
