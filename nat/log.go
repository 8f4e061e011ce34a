package nat

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultLogBuffer is the number of lines a MappingLog queues before it
// starts dropping.
const DefaultLogBuffer = 4096

// Mapping log events.
const (
	EventAlloc   = "alloc"
	EventRelease = "release"
)

// LogLine is the JSON form of one mapping log line.
type LogLine struct {
	Time     string `json:"time"`     // RFC 3339 with nanoseconds, UTC
	Event    string `json:"event"`    // "alloc" or "release"
	Client   string `json:"client"`   // the Client's address
	External string `json:"external"` // the external address
	Ports    string `json:"ports"`    // "first-last", inclusive
}

type logEntry struct {
	t           time.Time
	event       string
	client, ext netip.Addr
	first, last uint16
}

// logItem is either an entry or, when ctrl is set, a function the writer
// goroutine runs in order with the entries.
type logItem struct {
	e    logEntry
	ctrl func()
}

// MappingLog is an operator's log of port-block mappings. Its methods are
// safe for concurrent use. A nil *MappingLog logs nothing.
type MappingLog struct {
	path    string
	ch      chan logItem
	done    chan struct{}
	dropped atomic.Uint64
	written atomic.Uint64
	errs    atomic.Uint64
	closed  atomic.Bool
	closeMu sync.Mutex

	// owned by the writer goroutine
	f *os.File
	w *bufio.Writer
}

// OpenMappingLog opens (creating, appending) the log file at path and
// starts its writer goroutine.
func OpenMappingLog(path string) (*MappingLog, error) {
	return openMappingLog(path, DefaultLogBuffer)
}

func openMappingLog(path string, size int) (*MappingLog, error) {
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	l := &MappingLog{
		path: path,
		ch:   make(chan logItem, size),
		done: make(chan struct{}),
		f:    f,
		w:    bufio.NewWriterSize(f, 32<<10),
	}
	go l.run()
	return l, nil
}

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("nat: mapping log: %w", err)
	}
	return f, nil
}

// logBlock queues one line without blocking; it counts a drop when the
// buffer is full or the log is closed.
func (l *MappingLog) logBlock(t time.Time, event string, client, ext netip.Addr, first, last uint16) {
	if l == nil {
		return
	}
	if l.closed.Load() {
		l.dropped.Add(1)
		return
	}
	select {
	case l.ch <- logItem{e: logEntry{t, event, client, ext, first, last}}:
	default:
		l.dropped.Add(1)
	}
}

// Dropped is the number of lines lost because the buffer was full (or the
// log closed).
func (l *MappingLog) Dropped() uint64 {
	if l == nil {
		return 0
	}
	return l.dropped.Load()
}

// Written is the number of lines handed to the file.
func (l *MappingLog) Written() uint64 {
	if l == nil {
		return 0
	}
	return l.written.Load()
}

// WriteErrors is the number of failed writes, flushes or reopens.
func (l *MappingLog) WriteErrors() uint64 {
	if l == nil {
		return 0
	}
	return l.errs.Load()
}

// ErrLogClosed is returned by Reopen, Sync and Close on a closed log.
var ErrLogClosed = errors.New("nat: mapping log closed")

// control runs f in the writer goroutine after every line queued before
// it, and waits for it. Control items block when the buffer is full: they
// are not on the data path.
func (l *MappingLog) control(f func() error) error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.closed.Load() {
		return ErrLogClosed
	}
	res := make(chan error, 1)
	l.ch <- logItem{ctrl: func() { res <- f() }}
	return <-res
}

// Sync waits until every line queued so far is written and flushed to the
// file.
func (l *MappingLog) Sync() error {
	return l.control(l.flush)
}

// Reopen flushes the current file, closes it and opens path again
// (creating it), so that lines queued after Reopen go to the new file.
// The daemon calls it on SIGHUP after the file was rotated away.
func (l *MappingLog) Reopen() error {
	return l.control(func() error {
		ferr := l.flush()
		nf, err := openLogFile(l.path)
		if err != nil {
			l.errs.Add(1)
			return err // keep writing to the old file
		}
		l.f.Close()
		l.f = nf
		l.w.Reset(nf)
		return ferr
	})
}

// Close writes every queued line, closes the file and stops the writer.
// Lines logged after Close are dropped.
func (l *MappingLog) Close() error {
	err := l.control(func() error {
		ferr := l.flush()
		if cerr := l.f.Close(); ferr == nil {
			ferr = cerr
		}
		l.closed.Store(true)
		return ferr
	})
	if err == nil {
		<-l.done
	}
	return err
}

func (l *MappingLog) flush() error {
	if err := l.w.Flush(); err != nil {
		l.errs.Add(1)
		return err
	}
	return nil
}

func (l *MappingLog) run() {
	defer close(l.done)
	for it := range l.ch {
		if it.ctrl != nil {
			it.ctrl()
			if l.closed.Load() {
				return
			}
			continue
		}
		l.write(&it.e)
		if len(l.ch) == 0 {
			l.flush()
		}
	}
}

func (l *MappingLog) write(e *logEntry) {
	line := LogLine{
		Time:     e.t.UTC().Format(time.RFC3339Nano),
		Event:    e.event,
		Client:   e.client.String(),
		External: e.ext.String(),
		Ports:    fmt.Sprintf("%d-%d", e.first, e.last),
	}
	b, err := json.Marshal(line)
	if err != nil { // cannot happen: only strings
		l.errs.Add(1)
		return
	}
	b = append(b, '\n')
	if _, err := l.w.Write(b); err != nil {
		l.errs.Add(1)
		return
	}
	l.written.Add(1)
}
