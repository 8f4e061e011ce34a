package engine

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// Parked sessions free their goroutine stacks and buffers, but the Go
// runtime hands freed pages back to the kernel only gradually (its
// scavenger keeps up to the next GC goal), so a crowd of sessions that
// just went idle keeps the memory of its busy moment for minutes. The
// trimmer returns it at once when many directions parked since the last
// trim, as HAProxy trims its pools when it goes quiet.
const (
	// trimGrowth is the fewest newly parked directions worth a trim;
	// a quarter of those parked at the last trim if that is more, so a
	// steady crowd of idle sessions with some churn does not trim.
	trimGrowth = 256
	// trimInterval spaces trims: each is a full GC.
	trimInterval = time.Second
)

type trimmer struct {
	free     func() // freeMemory; tests count calls
	last     time.Time
	parkedAt int // directions parked at the last trim, or fewer since
	// seen and steadySince: the count at the last tick and since when it
	// has not changed (a crowd that finished parking).
	seen        int
	steadySince time.Time
	running     atomic.Bool
	trims       atomic.Uint64
}

func newTrimmer() *trimmer { return &trimmer{free: freeMemory} }

// freeMemory collects twice, then returns every free page: the first
// collection moves pooled buffers (sync.Pool: the sessions' handshake
// buffers) to the pools' victim caches, the second frees them.
func freeMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// tick is called by the parker's loop with the directions parked now; it
// starts a trim in the background when one is due: many more parked than
// at the last trim, or at least trimGrowth more and the count steady for
// trimInterval (the tail of a crowd that parked after the last trim).
// Not concurrent with itself.
func (t *trimmer) tick(now time.Time, parked int, spawn func(func())) {
	t.parkedAt = min(t.parkedAt, parked) // ended sessions: follow down
	if parked != t.seen {
		t.seen, t.steadySince = parked, now
	}
	grown := parked - t.parkedAt
	crowd := grown >= max(trimGrowth, t.parkedAt/4)
	settled := grown >= trimGrowth && now.Sub(t.steadySince) >= trimInterval
	if !(crowd || settled) || now.Sub(t.last) < trimInterval {
		return
	}
	if !t.running.CompareAndSwap(false, true) {
		return
	}
	t.last, t.parkedAt = now, parked
	spawn(func() {
		defer t.running.Store(false)
		t.free()
		t.trims.Add(1)
	})
}
