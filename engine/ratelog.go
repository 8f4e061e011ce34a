package engine

import (
	"sync"
	"time"
)

// Refusal log lines are rate-limited so that a flood of bad SYNs cannot
// turn into a flood of log lines; the counters still count every
// refusal, and the next line that is written says how many were not.
const (
	refusalLogRate  = 20 // lines per second
	refusalLogBurst = 100
)

// logLimiter is a token bucket for log lines.
type logLimiter struct {
	rate, burst float64
	now         func() time.Time

	mu         sync.Mutex
	tokens     float64
	at         time.Time
	suppressed uint64
}

func newLogLimiter(rate, burst float64) *logLimiter {
	return &logLimiter{rate: rate, burst: burst, tokens: burst, now: time.Now}
}

// allow reports whether a line may be written now and, if so, how many
// were suppressed since the last one written.
func (l *logLimiter) allow() (ok bool, suppressed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.at.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.at).Seconds()*l.rate)
	}
	l.at = now
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// refusalLogAttrs returns the attributes to add to a refusal line, or
// false when the line must not be written.
func (s *Server) refusalLogAttrs() ([]any, bool) {
	ok, n := s.refusalLog.allow()
	if !ok {
		return nil, false
	}
	if n > 0 {
		return []any{"refusals_not_logged_before", n}, true
	}
	return nil, true
}
