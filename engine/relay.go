package engine

import (
	"io"
	"net"
	"sync"

	sessions "github.com/convert-tc/converter/session"
)

// relayChunk is how many bytes one io.Copy may move before the session's
// counters and activity time are updated. io.LimitedReader over a
// *net.TCPConn keeps the splice path.
const relayChunk = 1 << 20

// relay moves bytes between the two legs until both directions ended. A
// clean end of one direction is passed on as a half-close; a reset or an
// error on either leg aborts both.
func (s *session) relay() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.copyClientToServer()
	}()
	s.copyServerToClient()
	wg.Wait()
}

func (s *session) copyClientToServer() {
	s.pump(s.entry.Server(), s.entry.Client(), sessions.Client)
}

func (s *session) copyServerToClient() {
	s.pump(s.entry.Client(), s.entry.Server(), sessions.Server)
}

// pump copies src to dst until src ends. On EOF it half-closes dst; on any
// error it aborts both legs so that the other direction ends too. Between
// two TCP sockets it splices; when the client leg is MPTCP it copies
// through a pooled buffer, because splice to and from MPTCP sockets is
// slow and stalls on Linux (measured: a 64 MiB download took 30 s).
func (s *session) pump(dst, src *net.TCPConn, from sessions.Side) {
	// Per chunk: two atomic updates on the entry and one on the
	// converter's byte counter, no lock.
	bytes := &s.stats.bytes[from][s.legKind()]
	moved := func(n int64) {
		s.entry.Count(from, n)
		bytes.Add(uint64(n))
	}
	var err error
	if s.mptcp {
		_, err = copyBuffered(dst, src, s.buffers, moved)
	} else {
		err = spliceChunks(dst, src, moved)
	}
	if err != nil {
		if s.abortBoth(err) { // the first failure, not the other direction's echo of it
			s.stats.relayResets[from].Add(1)
		}
		return
	}
	s.entry.HalfClosed(from)
	dst.CloseWrite()
}

// spliceChunks is io.Copy (splice underneath) in steps, so that the
// counters and the activity time move during long transfers. Each step
// starts once src has bytes and dst has room, and moves no more than
// both allow: Go's splice takes a pipe from its pool for the whole call
// and waits inside it, so an idle session, or one whose peer stopped
// reading, would otherwise hold a pipe (two fds and up to 64 KiB).
func spliceChunks(dst, src *net.TCPConn, moved func(n int64)) error {
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
		if err := waitReadable(rc); err != nil {
			return err
		}
		if err := waitWritable(wc); err != nil {
			return err
		}
		// At the end of the stream nothing is readable: a full-size
		// step then returns at once with EOF.
		step := int64(relayChunk)
		if avail := readable(rc); avail > 0 {
			step = int64(min(avail, sendRoom(wc, relayChunk)))
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
		server := s.entry.Server()
		abort(s.entry.Client())
		if server != nil {
			abort(server)
		}
	})
	return first
}
