package engine

import (
	"context"
	"log/slog"
)

// endLog writes the sessions' end records from one goroutine of its own.
// A session ends in whichever relay goroutine finishes last, often a
// short-lived one whose small stack the JSON handler's depth would grow
// (a stack copy per session, about a third of the record's cost); one
// long-lived writer pays for its stack once. Records keep the time they
// were made and their order; a full queue makes the session wait rather
// than lose its record.
type endLog struct {
	h    slog.Handler
	ch   chan slog.Record
	done chan struct{}
}

// endLogQueue bounds the records waiting: a burst of ends queues, a
// writer that cannot keep up slows the ends down.
const endLogQueue = 1024

func startEndLog(h slog.Handler) *endLog {
	l := &endLog{h: h, ch: make(chan slog.Record, endLogQueue), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for r := range l.ch {
			l.h.Handle(context.Background(), r)
		}
	}()
	return l
}

func (l *endLog) write(r slog.Record) { l.ch <- r }

// stop writes what is queued and returns once it is written; no write
// may follow.
func (l *endLog) stop() {
	close(l.ch)
	<-l.done
}
