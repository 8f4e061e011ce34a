package bench

import (
	"math"
	"math/bits"
	"time"
)

// histogram counts latencies in microseconds in log-linear buckets: exact
// below 256 µs, then 128 buckets per power of two (a relative error below
// 0.8%). Its size is fixed whatever the number of samples, so a long run
// uses no more memory than a short one.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    uint64
}

const (
	histSubBits  = 8 // values below 1<<histSubBits are exact
	histHalf     = 1 << (histSubBits - 1)
	histExponent = 64 - histSubBits // exponents 1..56 above the exact range
	histBuckets  = 1<<histSubBits + histExponent*histHalf
)

func bucketOf(v uint64) int {
	if v < 1<<histSubBits {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits // >= 1
	m := v >> e                      // in [histHalf, 2*histHalf)
	return 1<<histSubBits + (e-1)*histHalf + int(m-histHalf)
}

// bucketValue returns the middle of bucket i.
func bucketValue(i int) uint64 {
	if i < 1<<histSubBits {
		return uint64(i)
	}
	j := i - 1<<histSubBits
	e := j/histHalf + 1
	m := uint64(j%histHalf + histHalf)
	return m<<e + (1<<e)/2
}

func (h *histogram) record(d time.Duration) {
	us := uint64(max(d.Microseconds(), 0))
	h.counts[bucketOf(us)]++
	h.n++
	h.max = max(h.max, us)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q in [0, 1]: the smallest bucket
// holding at least q of the samples. It is 0 without samples, and never
// exceeds the largest sample.
func (h *histogram) quantile(q float64) uint64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(bucketValue(i), h.max)
		}
	}
	return h.max
}
