package engine

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	sessions "github.com/convert-tc/converter/session"
)

// relayChunk is how many bytes one io.Copy may move before the session's
// counters and activity time are updated. io.LimitedReader over a
// *net.TCPConn keeps the splice path.
const relayChunk = 1 << 20

// direction is one way of a session's relay, src to dst. It runs in a
// goroutine of its own while bytes move, and parks (no goroutine; its
// source in the parker's epoll set) once none came for parkAfter.
type direction struct {
	sess     *session
	src, dst *net.TCPConn
	rawSrc   syscall.RawConn
	key      uint64 // the parker's, while parked
	fd       int32  // src's, while parked
	from     sessions.Side
	state    dirState // guarded by sess.relayMu
}

type dirState uint8

const (
	dirRunning dirState = iota
	dirParked
	dirEnded
)

// relayRun is what a relay needs of its Server: where to park, how to
// start a tracked goroutine and what ends a session. One value per
// Server: an idle session holds no closure of its own.
type relayRun struct {
	parker *parker // nil: never park
	spawn  func(func())
	end    func(*session) // once both directions ended
}

// startRelay moves bytes between the two legs until both directions
// ended, then runs rr.end once; it returns when the server-to-client
// direction ended or parked. A clean end of one direction is passed on
// as a half-close; a reset or an error on either leg aborts both.
func (s *session) startRelay() {
	rr := &s.srv.relay
	s.relayMu.Lock()
	for i, from := range []sessions.Side{sessions.Client, sessions.Server} {
		d := &s.dirs[i]
		*d = direction{sess: s, from: from, src: s.entry.Client(), dst: s.entry.Server()}
		if from == sessions.Server {
			d.src, d.dst = d.dst, d.src
		}
		d.rawSrc, _ = d.src.SyscallConn()
	}
	aborted := s.relayAborted
	s.relayMu.Unlock()
	if aborted { // aborted between the reply and now
		s.relayMu.Lock()
		s.dirs[0].state, s.dirs[1].state = dirEnded, dirEnded
		s.relayMu.Unlock()
		s.endRelay()
		return
	}
	// The calling goroutine (the session's, its stack already grown)
	// runs the server's direction: one goroutine start fewer per session.
	rr.spawn(s.dirs[0].run)
	s.dirs[1].run()
}

// run pumps until the direction ends or parks.
func (d *direction) run() {
	s := d.sess
	err := s.pump(d)
	s.relayMu.Lock()
	if errors.Is(err, errParked) && !s.relayAborted {
		if perr := s.srv.relay.parker.park(d); perr == nil {
			d.state = dirParked
			if s.dirs[0].state == dirParked && s.dirs[1].state == dirParked {
				s.detach() // the whole session is idle
			}
			s.relayMu.Unlock()
			return
		}
		// Cannot park (out of memory for epoll): run on, never parking.
		s.relayMu.Unlock()
		s.srv.relay.spawn(func() { d.runUnparked() })
		return
	}
	d.state = dirEnded
	s.relayMu.Unlock()
	s.endRelay()
}

func (d *direction) runUnparked() {
	s := d.sess
	s.pumpWith(d, 0)
	s.relayMu.Lock()
	d.state = dirEnded
	s.relayMu.Unlock()
	s.endRelay()
}

// wake resumes a parked direction: its source has bytes, an end or an
// error.
func (d *direction) wake() {
	s := d.sess
	s.relayMu.Lock()
	if d.state != dirParked { // an abort ended it meanwhile
		s.relayMu.Unlock()
		return
	}
	p := s.srv.relay.parker
	if s.detached {
		if err := s.attach(); err != nil {
			s.relayMu.Unlock()
			s.abortBoth(err)
			return
		}
		// The other direction is still idle: park it on its new
		// connection (or run it, if it cannot park).
		if o := &s.dirs[1-d.index()]; o.state == dirParked {
			if err := p.park(o); err != nil {
				o.state = dirRunning
				s.srv.relay.spawn(o.runUnparked)
			}
		}
	} else {
		p.unpark(d)
	}
	d.state = dirRunning
	s.relayMu.Unlock()
	s.srv.relay.spawn(d.run)
}

// index is d's place in its session's dirs.
func (d *direction) index() int {
	if d == &d.sess.dirs[0] {
		return 0
	}
	return 1
}

// aborted reports whether the relay was aborted.
func (s *session) aborted() bool {
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	return s.relayAborted
}

// endRelay runs the relay's end once both directions ended; before the
// relay started (no directions yet) the session's setup ends it.
func (s *session) endRelay() {
	s.relayMu.Lock()
	started := s.dirs[0].sess != nil
	done := started && !s.relayDone && s.dirs[0].state == dirEnded && s.dirs[1].state == dirEnded
	if done {
		s.relayDone = true
	}
	s.relayMu.Unlock()
	if done {
		s.srv.relay.end(s)
	}
}

// pump copies d.src to d.dst until src ends (nil, after passing the end on
// as a half-close), the relay aborts (the error), or nothing came for
// parkAfter (errParked).
func (s *session) pump(d *direction) error {
	after := time.Duration(0)
	if s.srv.relay.parker != nil {
		after = parkAfter
	}
	return s.pumpWith(d, after)
}

func (s *session) pumpWith(d *direction, park time.Duration) error {
	// Per chunk: two atomic updates on the entry and one on the
	// converter's byte counter, no lock.
	bytes := &s.srv.stats.bytes[d.from][s.legKind()]
	moved := func(n int64) {
		s.entry.Count(d.from, n)
		bytes.Add(uint64(n))
	}
	var err error
	if s.mptcp {
		_, err = copyBuffered(d.dst, d.src, s.srv.buffers, moved, park)
	} else {
		err = spliceChunks(d.dst, d.src, moved, park)
	}
	if errors.Is(err, errParked) {
		return err
	}
	if err != nil {
		if s.abortBoth(err) { // the first failure, not the other direction's echo of it
			s.srv.stats.relayResets[d.from].Add(1)
		}
		return err
	}
	s.entry.HalfClosed(d.from)
	d.dst.CloseWrite()
	return nil
}

// waitSource waits until src has bytes (or an end, or an error), at most
// park when park > 0: then errParked.
func waitSource(src *net.TCPConn, rc syscall.RawConn, park time.Duration) error {
	if park <= 0 {
		return waitReadable(rc)
	}
	src.SetReadDeadline(time.Now().Add(park))
	err := waitReadable(rc)
	src.SetReadDeadline(time.Time{})
	if isParkTimeout(err) {
		return errParked
	}
	return err
}

// spliceChunks is io.Copy (splice underneath) in steps, so that the
// counters and the activity time move during long transfers. Each step
// starts once src has bytes and dst has room, and moves no more than
// both allow: Go's splice takes a pipe from its pool for the whole call
// and waits inside it, so an idle session, or one whose peer stopped
// reading, would otherwise hold a pipe (two fds and up to 64 KiB).
func spliceChunks(dst, src *net.TCPConn, moved func(n int64), park time.Duration) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	wc, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	lr := &io.LimitedReader{R: src}
	for {
		avail := readable(rc)
		if avail == 0 { // bytes already there need no wait
			if err := waitSource(src, rc, park); err != nil {
				return err
			}
			avail = readable(rc)
		}
		// At the end of the stream (or on an error) nothing is
		// readable: a full-size step then returns at once.
		step := int64(relayChunk)
		if avail > 0 {
			room, err := writeRoom(wc, relayChunk, 1)
			if err != nil {
				return err
			}
			step = int64(min(avail, room))
		}
		lr.N = step
		n, err := io.Copy(dst, lr)
		if n > 0 {
			moved(n)
		}
		if err != nil || lr.N > 0 { // an error, or EOF before the step's end
			return err
		}
	}
}

// abortBoth resets both legs once; later calls do nothing. It reports
// whether this call did it.
func (s *session) abortBoth(cause error) (first bool) {
	s.abortOnce.Do(func() {
		first = true
		s.setEndReason("aborted: " + cause.Error())
		s.entry.SetState(sessions.StateClosing)
		// Parked directions end here: nothing else would wake them once
		// their sockets are closed.
		s.relayMu.Lock()
		s.relayAborted = true
		detached := s.detachedFDs() // before unparking forgets them
		for i := range s.dirs {
			if d := &s.dirs[i]; d.sess != nil && d.state == dirParked {
				s.srv.relay.parker.unpark(d)
				d.state = dirEnded
			}
		}
		for _, fd := range detached { // its connections are closed: reset the sockets
			resetFD(fd)
		}
		s.relayMu.Unlock()
		server := s.entry.Server()
		abort(s.entry.Client())
		if server != nil {
			abort(server)
		}
		s.endRelay()
	})
	return first
}
