package nat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLogBuffer is the number of lines a MappingLog queues; beyond it
// new lines are refused, and so are the allocations that needed them.
const DefaultLogBuffer = 4096

// LogFileMode is the mode a new mapping log file is created with (before
// the umask): the log ties subscribers to public addresses.
const LogFileMode = 0o640

// logRetry is how often a writer that hit a write error tries again.
const logRetry = time.Second

// logFlushSize is how many bytes the writer gathers before a write when
// more lines are waiting.
const logFlushSize = 32 << 10

// Mapping log events.
const (
	EventAlloc   = "alloc"
	EventRelease = "release"
	// EventUnverified marks the external port of a session whose client
	// never completed its handshake: its source may have been forged, so
	// the port's use cannot be pinned on that client.
	EventUnverified = "unverified"
)

// LogLine is the JSON form of one mapping log line.
type LogLine struct {
	Time     string `json:"time"`     // RFC 3339 with nanoseconds, UTC
	Event    string `json:"event"`    // "alloc", "release" or "unverified"
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

var (
	// ErrLogFull: the mapping log could not take a line, so the
	// allocation (or block release) that needed it did not happen. The
	// engine maps it to Resource Exceeded, like ErrExhausted. It is
	// returned when the log's buffer is full (the writer is behind, or
	// stopped by a write error) and, also matching ErrLogClosed, when
	// the log is closed.
	ErrLogFull = errors.New("nat: mapping log cannot take the line")
	// ErrLogClosed is returned by Reopen, Sync and Close on a closed log.
	ErrLogClosed = errors.New("nat: mapping log closed")

	errLineBufferFull = fmt.Errorf("%w: buffer full", ErrLogFull)
	errLineLogClosed  = fmt.Errorf("%w: %w", ErrLogFull, ErrLogClosed)
)

// MappingLog is an operator's log of port-block mappings. Its methods are
// safe for concurrent use. A nil *MappingLog logs nothing and refuses
// nothing.
//
// A line is either accepted (queued; it is then written, retried after a
// write error until it is, and lost only if Close cannot write it, which
// Lost counts) or refused with ErrLogFull, and the caller must then not
// make the change it describes.
type MappingLog struct {
	path string
	ch   chan logEntry // lines
	ctl  chan func()   // control functions, run by the writer
	done chan struct{}

	// mu is held for reading while a line is queued and for writing
	// while closed is set, so no line is accepted after the close.
	mu      sync.RWMutex
	closed  bool
	closeMu sync.Mutex // serializes control calls

	accepted      atomic.Uint64
	written       atomic.Uint64
	refusedFull   atomic.Uint64
	refusedClosed atomic.Uint64
	errs          atomic.Uint64
	lost          atomic.Uint64
	failing       atomic.Bool

	// owned by the writer goroutine
	f       *os.File
	out     io.Writer // f; tests put a failing writer here
	buf     []byte    // lines not yet written
	werr    error     // the last write failed: stop taking lines, retry
	retry   time.Duration
	stopped bool
}

// OpenMappingLog opens (creating, appending) the log file at path and
// starts its writer goroutine. See openLogFile for the checks.
func OpenMappingLog(path string) (*MappingLog, error) {
	return openMappingLog(path, DefaultLogBuffer)
}

func openMappingLog(path string, size int) (*MappingLog, error) {
	f, err := openLogFile(path)
	if err != nil {
		return nil, err
	}
	l := &MappingLog{
		path:  path,
		ch:    make(chan logEntry, size),
		ctl:   make(chan func()),
		done:  make(chan struct{}),
		f:     f,
		out:   f,
		buf:   make([]byte, 0, logFlushSize+512),
		retry: logRetry,
	}
	go l.run()
	return l, nil
}

// openLogFile opens path for appending, creating it with LogFileMode. It
// does not follow a symbolic link in the last component (O_NOFOLLOW): a
// link planted there would make a privileged daemon append to any file.
// Anything but a regular file is refused too (O_NONBLOCK keeps a FIFO from
// blocking the open).
func openLogFile(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, LogFileMode)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("nat: mapping log %s is a symbolic link; not following it (O_NOFOLLOW): %w", path, err)
		}
		return nil, fmt.Errorf("nat: mapping log: open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nat: mapping log: fstat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("nat: mapping log %s is not a regular file (mode %#o)", path, st.Mode)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nat: mapping log: fcntl(%s, F_SETFL): %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// logBlock queues one line without ever blocking. It returns an error
// wrapping ErrLogFull, and counts it, when the buffer is full or the log
// closed: the caller must then not make the change.
func (l *MappingLog) logBlock(t time.Time, event string, client, ext netip.Addr, first, last uint16) error {
	if l == nil {
		return nil
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.refusedClosed.Add(1)
		return errLineLogClosed
	}
	l.accepted.Add(1) // before the send: never fewer than written
	select {
	case l.ch <- logEntry{t, event, client, ext, first, last}:
		return nil
	default:
		l.accepted.Add(^uint64(0))
		l.refusedFull.Add(1)
		return errLineBufferFull
	}
}

// LogStats counts what a MappingLog did with its lines.
type LogStats struct {
	// Written lines were handed to the file.
	Written uint64 `json:"written"`
	// Queued lines are accepted and not yet written (in the buffer or
	// in the writer's hands).
	Queued int `json:"queued"`
	// RefusedFull lines were refused because the buffer was full;
	// RefusedClosed because the log was closed. The allocation (or the
	// block release) of a refused line did not happen.
	RefusedFull   uint64 `json:"refused_full"`
	RefusedClosed uint64 `json:"refused_closed"`
	// WriteErrors counts failed writes (each retry too) and reopens.
	WriteErrors uint64 `json:"write_errors"`
	// Failing is true while the last write failed: the writer takes no
	// new lines and retries every second.
	Failing bool `json:"failing"`
	// Lost lines were accepted but could not be written before Close.
	Lost uint64 `json:"lost"`
}

// Stats returns the log's counters; a nil log has none.
func (l *MappingLog) Stats() LogStats {
	if l == nil {
		return LogStats{}
	}
	s := LogStats{
		Written:       l.written.Load(),
		Lost:          l.lost.Load(),
		RefusedFull:   l.refusedFull.Load(),
		RefusedClosed: l.refusedClosed.Load(),
		WriteErrors:   l.errs.Load(),
		Failing:       l.failing.Load(),
	}
	// Loaded after written and lost, so it is never smaller than both.
	s.Queued = int(l.accepted.Load() - s.Written - s.Lost)
	return s
}

// Refused is the number of lines refused, for any reason.
func (l *MappingLog) Refused() uint64 {
	if l == nil {
		return 0
	}
	return l.refusedFull.Load() + l.refusedClosed.Load()
}

// Written is the number of lines handed to the file.
func (l *MappingLog) Written() uint64 {
	if l == nil {
		return 0
	}
	return l.written.Load()
}

// WriteErrors is the number of failed writes (retries included) and
// reopens.
func (l *MappingLog) WriteErrors() uint64 {
	if l == nil {
		return 0
	}
	return l.errs.Load()
}

// control runs f in the writer goroutine and waits for it. Control
// functions never hold a lock that logBlock takes.
func (l *MappingLog) control(f func() error) error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.closed { // only set with closeMu held
		return ErrLogClosed
	}
	res := make(chan error, 1)
	l.ctl <- func() { res <- f() }
	return <-res
}

// Sync waits until every line queued so far is written to the file. While
// writes fail it returns the write error; the lines stay queued and are
// retried.
func (l *MappingLog) Sync() error {
	return l.control(func() error {
		if l.werr == nil {
			l.drain(len(l.ch))
		}
		return l.flush()
	})
}

// Reopen opens path again (creating it) and switches to it: lines queued
// before Reopen go to the old file, lines queued after it to the new one.
// The daemon calls it on SIGHUP after the file was rotated away. The new
// file is opened before the writer is asked to switch, outside any lock:
// a slow open never holds up allocations or the writer. If the open fails
// the log keeps writing to the old file. Lines the old file refused (a
// write error) go to the new one.
func (l *MappingLog) Reopen() error {
	nf, err := openLogFile(l.path)
	if err != nil {
		l.errs.Add(1)
		return err
	}
	took := false
	err = l.control(func() error {
		took = true
		l.drain(len(l.ch))
		if l.werr == nil {
			l.flush() // an error leaves the lines in buf, for the new file
		}
		old := l.f
		l.f, l.out, l.werr = nf, nf, nil
		ferr := l.flush()
		if cerr := old.Close(); cerr != nil && ferr == nil {
			l.errs.Add(1)
			ferr = fmt.Errorf("nat: mapping log: close the old file: %w", cerr)
		}
		return ferr
	})
	if !took {
		nf.Close()
	}
	return err
}

// Close writes every queued line, closes the file and stops the writer.
// Lines offered after Close starts are refused (ErrLogFull, ErrLogClosed).
func (l *MappingLog) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	l.mu.Lock() // waits for logBlock calls in flight: none after this
	if l.closed {
		l.mu.Unlock()
		return ErrLogClosed
	}
	l.closed = true
	l.mu.Unlock()
	res := make(chan error, 1)
	l.ctl <- func() {
		l.drain(len(l.ch)) // nothing is added any more
		ferr := l.flush()
		if ferr != nil {
			l.lost.Add(uint64(bytes.Count(l.buf, []byte{'\n'})))
			l.buf = l.buf[:0]
		}
		if cerr := l.f.Close(); ferr == nil && cerr != nil {
			l.errs.Add(1)
			ferr = cerr
		}
		l.stopped = true
		res <- ferr
	}
	err := <-res
	<-l.done
	return err
}

// run is the writer goroutine. While a write error stands it takes no new
// lines (the buffer fills, new allocations are refused) and retries.
func (l *MappingLog) run() {
	defer close(l.done)
	for !l.stopped {
		if l.werr != nil {
			select {
			case f := <-l.ctl:
				f()
			case <-time.After(l.retry):
				l.flush()
			}
			continue
		}
		select {
		case e := <-l.ch:
			l.append(&e)
			if len(l.ch) == 0 || len(l.buf) >= logFlushSize {
				l.flush()
			}
		case f := <-l.ctl:
			f()
		}
	}
}

// drain moves up to n queued lines into buf.
func (l *MappingLog) drain(n int) {
	for range n {
		select {
		case e := <-l.ch:
			l.append(&e)
		default:
			return
		}
	}
}

// flush writes buf. On error it keeps what was not written, to retry.
func (l *MappingLog) flush() error {
	for len(l.buf) > 0 {
		n, err := l.out.Write(l.buf)
		l.written.Add(uint64(bytes.Count(l.buf[:n], []byte{'\n'})))
		l.buf = l.buf[:copy(l.buf, l.buf[n:])]
		if err != nil {
			l.errs.Add(1)
			l.werr = err
			l.failing.Store(true)
			return fmt.Errorf("nat: mapping log: write %s: %w", l.path, err)
		}
	}
	l.werr = nil
	l.failing.Store(false)
	return nil
}

func (l *MappingLog) append(e *logEntry) {
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
	l.buf = append(l.buf, b...)
	l.buf = append(l.buf, '\n')
}
