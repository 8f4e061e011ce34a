package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/convert-tc/converter/internal/addrpolicy"
	"github.com/convert-tc/converter/nat"
	sessions "github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

// Server is one converter: its listeners, policy state and sessions.
type Server struct {
	cfg     Config
	log     *slog.Logger
	own     ownAddrs
	routes  *addrpolicy.Routes
	clients *clientTable
	// policy is Config's reloadable part in force (SetPolicy).
	policy atomic.Pointer[Policy]
	// refusalLog rate-limits the refusal log lines.
	refusalLog *logLimiter
	active     atomic.Int64
	nextID     atomic.Uint64
	stats      counters
	timings    timings
	buffers    *bufferPool
	// handshakeBufs holds the buffers that receive Convert messages.
	handshakeBufs sync.Pool

	mu        sync.Mutex
	serveCtx  context.Context // set by Serve, for listeners opened later
	listeners []*net.TCPListener
	ports     map[uint16]bool // ports of the configured listeners
	// portListeners are the transparent per-port listeners in use.
	portListeners map[uint16]*portListener
	sessions      map[*session]struct{}
	wg            sync.WaitGroup
	// sessCtx is the sessions' context: unlike serveCtx it outlives the
	// start of a drain and ends only when the sessions are aborted.
	sessCtx    context.Context
	abortSess  context.CancelFunc
	draining   atomic.Bool
	handedOver atomic.Bool // a successor accepts on our sockets (HandedOver)
	// parker holds the idle directions of relays (park.go); nil: none
	// parks.
	parker     *parker
	trimmer    *trimmer               // with the parker: returns the memory of parked sessions
	relay      relayRun               // what every session's relay needs of the Server
	endLog     atomic.Pointer[endLog] // while serving: writes the session end records
	abortDrain chan struct{}          // closed by Abort
	abortOnce  sync.Once
}

// New checks cfg and returns a Server that is not listening yet.
func New(cfg Config) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("converter config: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, sessions: make(map[*session]struct{}), portListeners: make(map[uint16]*portListener), abortDrain: make(chan struct{}), buffers: newBufferPool(), routes: addrpolicy.NewRoutes(), clients: newClientTable(cfg), refusalLog: newLogLimiter(refusalLogRate, refusalLogBurst), timings: newTimings()}
	s.handshakeBufs.New = func() any { return new([readBufLen]byte) }
	if p, err := newParker(); err == nil {
		s.parker, s.trimmer = p, newTrimmer()
	} else {
		s.log.Warn("idle sessions keep their goroutines", "error", err.Error())
	}
	s.relay = relayRun{parker: s.parker, spawn: s.spawn, end: s.relayEnded}
	pol := cfg.Policy()
	s.policy.Store(&pol)
	return s, nil
}

// Listen opens every configured listener after checking that the kernel
// can take Convert messages in SYNs.
//
// Listeners given in Config.Listeners are used as they are instead (tests,
// and a daemon handed its sockets); the caller checks the kernel
// (CheckKernel) before.
func (s *Server) Listen(ctx context.Context) error {
	if len(s.cfg.Listeners) > 0 {
		for _, l := range s.cfg.Listeners {
			s.addListener(l)
		}
		return nil
	}
	open, err := s.adoptInherited()
	if err != nil {
		s.closeListeners()
		return err
	}
	for _, addr := range open {
		l, err := listen(ctx, addr, s.cfg.Transparent, s.cfg.FreeBind)
		if err != nil {
			s.closeListeners()
			return err
		}
		s.addListener(l)
	}
	return nil
}

func (s *Server) addListener(l *net.TCPListener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, l)
	if s.ports == nil {
		s.ports = make(map[uint16]bool)
	}
	s.ports[unmapAddrPort(l.Addr()).Port()] = true
}

// acquirePort holds a transparent listener on the port a steered MPTCP
// connection was addressed to, for as long as a session needs it. The
// kernel accepts an MP_JOIN only on a listener whose port is the
// connection's local port (or an announced one), so the client's extra
// subflows toward the original destination need it; the steering program
// finds it by the packet's own port. Listeners are opened only for
// admitted sessions, shared by the sessions of one port, closed with the
// last of them, and capped: past MaxTransparentPorts a session goes on
// without one (its joins to that port are refused by the kernel; joins
// to an announced address still work).
func (s *Server) acquirePort(port uint16) (release func()) {
	s.mu.Lock()
	ctx := s.serveCtx
	if s.ports[port] || slices.Contains(s.cfg.ReservedPorts, port) || ctx == nil || ctx.Err() != nil {
		s.mu.Unlock()
		return func() {}
	}
	pl := s.portListeners[port]
	if pl == nil {
		if len(s.portListeners) >= s.cfg.MaxTransparentPorts && !s.evictLingering() {
			s.mu.Unlock()
			s.stats.portsCapped.Add(1)
			return func() {}
		}
		pl = &portListener{ready: make(chan struct{})}
		s.portListeners[port] = pl
		pl.refs++
		s.mu.Unlock()
		s.openPort(ctx, port, pl)
	} else {
		pl.refs++
		revive := pl.linger != nil
		if revive {
			pl.linger.Stop()
			pl.linger = nil
		}
		s.mu.Unlock()
		<-pl.ready // a join may follow within a round trip: wait for it
		if revive && pl.l != nil && s.cfg.Joins != nil && !s.handedOver.Load() {
			s.cfg.Joins.AddListenerPort(port)
		}
	}
	return func() { s.releasePort(port, pl) }
}

// portListener is one transparent per-port listener and its sessions.
type portListener struct {
	refs   int              // sessions that need it; guarded by Server.mu
	l      *net.TCPListener // nil when opening failed
	ready  chan struct{}    // closed once l is set (or failed)
	linger *time.Timer      // set while it waits to close; guarded by Server.mu
	// inherited: handed over by a predecessor, which holds one reference
	// until it is gone (Config.PredecessorDone).
	inherited bool
}

// portLinger is how long a per-port listener stays open after its last
// session, unregistered from the steering program: a SYN steered to it
// just before is still accepted and served (closing at once reset it),
// and a new session to the port in that time takes it back.
const portLinger = time.Second

func (s *Server) openPort(ctx context.Context, port uint16, pl *portListener) {
	defer close(pl.ready)
	l, err := listen(ctx, net.JoinHostPort("::", strconv.Itoa(int(port))), true, false)
	if err != nil {
		s.log.Warn("no transparent listener for joins", "port", port, "error", err.Error())
		return
	}
	pl.l = l
	if s.cfg.Joins != nil {
		// Only registered ports are tried by the steering program, so an
		// ordinary listener on the host never takes a Convert SYN.
		if err := s.cfg.Joins.AddListenerPort(port); err != nil {
			s.log.Warn("listener port not steerable", "port", port, "error", err.Error())
		}
	}
	s.log.Debug("listening", "address", l.Addr().String(), "for", "joins to the original destination port")
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop(ctx, l)
	}()
}

// evictLingering closes one per-port listener that only lingers, to make
// room under the cap; s.mu is held. It reports whether it found one.
func (s *Server) evictLingering() bool {
	for port, pl := range s.portListeners {
		if pl.refs == 0 && pl.linger != nil {
			pl.linger.Stop()
			delete(s.portListeners, port)
			pl.l.Close()
			return true
		}
	}
	return false
}

func (s *Server) releasePort(port uint16, pl *portListener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pl.refs--
	if pl.refs > 0 {
		return
	}
	if pl.l == nil {
		delete(s.portListeners, port)
		return
	}
	// Unregister first, so that new SYNs to this port go to the main
	// listener; close once those already steered here were accepted.
	// Handed over, the port is the successor's to unregister.
	if s.cfg.Joins != nil && !s.handedOver.Load() {
		s.cfg.Joins.RemoveListenerPort(port)
	}
	pl.linger = time.AfterFunc(portLinger, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if pl.refs == 0 && s.portListeners[port] == pl {
			delete(s.portListeners, port)
			pl.l.Close()
		}
	})
}

// TransparentPorts returns how many per-port listeners are open.
func (s *Server) TransparentPorts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.portListeners)
}

// Addrs returns the addresses the Server listens on.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for _, l := range s.listeners {
		out = append(out, l.Addr())
	}
	return out
}

// Serve accepts and converts connections until ctx ends, then drains:
// the configured listeners close (per-port transparent listeners stay, so
// that joins of running sessions are still accepted, and answer new
// sessions with Resource Exceeded), sessions run to their end for up to
// ShutdownDrain or until Abort, and those left are aborted.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ls := append([]*net.TCPListener(nil), s.listeners...)
	s.serveCtx = ctx
	s.sessCtx, s.abortSess = context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Unlock()
	defer s.abortSess()
	if len(ls) == 0 {
		return errors.New("serve: no listener (call Listen first)")
	}
	s.serveInherited()
	parkCtx, stopParker := context.WithCancel(context.Background())
	defer stopParker()
	if p := s.parker; p != nil {
		t := s.trimmer
		s.spawn(func() {
			p.run(parkCtx, (*direction).wake, func(parked int) { t.tick(time.Now(), parked, s.spawn) })
		})
	}
	if idle := s.cfg.IdleTimeout; idle > 0 {
		s.spawn(func() { s.sweepIdle(parkCtx, idle) })
	}
	endLog := startEndLog(s.log.Handler())
	s.endLog.Store(endLog)
	errc := make(chan error, len(ls))
	for _, l := range ls {
		// Counted like the sessions: an accept loop adds a session to
		// s.wg, which must not happen once Wait below has begun.
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			errc <- s.acceptLoop(ctx, l)
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	if s.handedOver.Load() {
		s.closeListeners() // the successor accepts on all of them
	}
	s.draining.Store(true)
	s.closeMainListeners()
	if err == nil {
		s.drain()
	}
	s.closeListeners()
	s.abortSess()
	s.stopSessions()
	if s.parker != nil {
		// Sessions that reach their relay from now on run it unparked,
		// and Wait waits for them as before.
		s.parker.stop()
	}
	stopParker()
	s.wg.Wait()
	s.endLog.Store(nil)
	endLog.stop()
	if s.parker != nil {
		s.parker.close()
	}
	return err
}

// drain waits for the sessions to end, at most ShutdownDrain, or until
// Abort.
func (s *Server) drain() {
	n := s.active.Load()
	if n == 0 || s.cfg.ShutdownDrain <= 0 {
		return
	}
	s.log.Info("draining", "sessions", n, "timeout", s.cfg.ShutdownDrain.String())
	deadline := time.NewTimer(s.cfg.ShutdownDrain)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-deadline.C:
			s.log.Warn("drain timed out: aborting the sessions left", "sessions", s.active.Load())
			return
		case <-s.abortDrain:
			s.log.Warn("drain cut short: aborting the sessions left", "sessions", s.active.Load())
			return
		case <-tick.C:
			if s.active.Load() == 0 {
				s.log.Info("drained")
				return
			}
		}
	}
}

// Readiness says whether the Server takes new sessions: "serving", or
// "starting" before Serve and "draining" once its context ended.
func (s *Server) Readiness() (bool, string) {
	s.mu.Lock()
	started := s.serveCtx != nil
	s.mu.Unlock()
	switch {
	case s.handedOver.Load() && s.draining.Load():
		return false, "handed over"
	case s.draining.Load():
		return false, "draining"
	case !started:
		return false, "starting"
	}
	return true, "serving"
}

// Abort ends a drain at once: the sessions left are aborted.
func (s *Server) Abort() {
	s.abortOnce.Do(func() { close(s.abortDrain) })
}

// Run is Listen then Serve.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(ctx); err != nil {
		return err
	}
	return s.Serve(ctx)
}

func (s *Server) acceptLoop(ctx context.Context, l *net.TCPListener) error {
	var delay time.Duration
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of fds or memory: back off instead of spinning; the
			// sessions that end free what the next accept needs.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "listener", l.Addr().String(), "error", err.Error(), "retry_in", delay.String())
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(s.sessionContext(), c)
		}()
	}
}

// sessionContext is the context sessions run under (see sessCtx).
func (s *Server) sessionContext() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessCtx
}

// closeMainListeners closes the configured listeners: no new session
// arrives through them.
func (s *Server) closeMainListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		l.Close()
	}
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		l.Close()
	}
	for _, pl := range s.portListeners {
		if pl.l != nil {
			pl.l.Close()
		}
	}
}

func (s *Server) stopSessions() {
	// Not under s.mu: a parked session ends in abortBoth, and its end
	// untracks it.
	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	for _, sess := range all {
		sess.abortBoth(errors.New("converter stopping"))
	}
}

func (s *Server) track(sess *session) {
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) untrack(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

// readBufLen holds the largest Convert message and the application data
// that fits in a SYN with it.
const readBufLen = 4096

// serve runs one Client connection from accept to close.
func (s *Server) serve(ctx context.Context, c *net.TCPConn) {
	s.active.Add(1)
	// A held SYN+ACK (syn hold) goes out before any byte is written to
	// the client; every path below decides it.
	var hold HeldSynAck
	if s.cfg.SynHold != nil {
		hold = s.cfg.SynHold.Take(unmapAddrPort(c.RemoteAddr()), unmapAddrPort(c.LocalAddr()))
	}
	// The per-client limits come first, before anything is allocated
	// for the connection.
	key := s.clientKey(unmapAddrPort(c.RemoteAddr()).Addr())
	// What was accepted before a hand-over is served: the successor
	// takes only what comes after.
	if s.draining.Load() && !s.handedOver.Load() {
		releaseHold(hold)
		s.refuseAtAccept(c, refuse(tlv.CodeResourceExceeded, []byte{s.pol().Backoff}, "draining: no new session"))
		s.active.Add(-1)
		return
	}
	if err := s.clients.arrive(key); err != nil {
		releaseHold(hold)
		s.refuseAtAccept(c, refuse(tlv.CodeResourceExceeded, []byte{s.pol().Backoff}, "%v", err))
		s.active.Add(-1)
		return
	}
	sess := s.newSession(c)
	sess.end.clientKey, sess.end.pending = key, true
	s.track(sess)
	// The session's end runs when serve returns, or, once the relay
	// started, when the relay ends (a parked session has no goroutine to
	// defer in).
	relayOwns := false
	defer func() {
		if !relayOwns {
			s.endSession(sess)
		}
	}()
	s.steerJoins(sess)

	// The handshake buffer goes back to the pool once the early bytes are
	// with the server: an idle session should cost no buffer.
	bufp := s.handshakeBufs.Get().(*[readBufLen]byte)
	bufHeld := true
	freeBuf := func() {
		if bufHeld {
			bufHeld = false
			s.handshakeBufs.Put(bufp)
		}
	}
	defer freeBuf()
	var m tlv.Message
	n, got, r := s.readRequest(c, bufp[:], &m)
	if r == nil {
		r = s.admit(&m, sess.entry.ClientAddr().Addr())
	}
	if _, isConnect := m.Connect(); r == nil && isConnect && s.cfg.Transparent && sess.mptcp {
		sess.end.releasePort = s.acquirePort(sess.entry.Original().Port())
	}
	if r != nil {
		s.finishHeld(sess, hold, r)
		return
	}
	conn, ok := m.Connect()
	if !ok {
		releaseHold(hold)
		s.finishInfo(sess)
		return
	}
	info := m.Info() // m aliases the buffer, which is released below
	sess.entry.SetDestination(conn.AddrPort())
	sess.handshake = s.watchHandshake(sess.entry.Client())
	synAckOptions, r := s.connect(ctx, sess, conn, bufp[n:got])
	if r != nil {
		s.finishHeld(sess, hold, r)
		return
	}
	freeBuf()
	if hold != nil {
		synAckOptions = s.releaseHeld(sess, hold, synAckOptions)
	}
	reply := successReply(info, s.cfg.SupportedKinds, synAckOptions)
	if err := s.replyToClient(ctx, sess, reply); err != nil {
		sess.setEndReason("reply: " + err.Error())
		abort(sess.entry.Client())
		abort(sess.entry.Server())
		s.logEnd(sess)
		return
	}
	s.clients.established(key)
	sess.end.pending = false
	s.stats.converted.Add(1)
	sess.entry.SetState(sessions.StateEstablished)
	// What the reply needed is not kept by an idle session.
	sess.handshake = nil
	relayOwns = true
	s.runRelay(sess)
}

// endSession undoes a session's setup in reverse order, once both legs
// are closed.
func (s *Server) endSession(sess *session) {
	e := &sess.end
	if e.releasePort != nil {
		e.releasePort()
	}
	if e.steered {
		s.cfg.Joins.RemoveToken(e.joinToken)
	}
	s.releaseMapping(sess)
	s.untrack(sess)
	s.cfg.Table.Remove(sess.entry)
	s.clients.leave(e.clientKey, e.pending)
	s.active.Add(-1)
}

// readRequest reads until the Client's Convert message is complete, the
// Client stops sending, or the handshake deadline passes. It returns the
// message length and how many bytes were read.
func (s *Server) readRequest(c *net.TCPConn, buf []byte, m *tlv.Message) (int, int, *refusal) {
	c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer c.SetReadDeadline(time.Time{})
	got := 0
	for {
		k, rerr := c.Read(buf[got:])
		got += k
		n, perr := tlv.ParseRequest(buf[:got], m)
		if perr == nil {
			return n, got, nil
		}
		var pe *tlv.ParseError
		if !errors.As(perr, &pe) || !pe.Truncated || got == len(buf) {
			return 0, got, fromParse(perr)
		}
		if rerr != nil {
			if isEOFOrTimeout(rerr) {
				return 0, got, fromParse(perr)
			}
			return 0, got, &refusal{action: tlv.ActionAbort, reason: "read: " + rerr.Error()}
		}
	}
}

// connect dials the server leg; early holds the Client bytes that came with
// the Convert message. It returns the server's SYN+ACK options for the
// reply's Extended TCP Header.
func (s *Server) connect(ctx context.Context, sess *session, conn tlv.Connect, early []byte) (synAckOptions []byte, _ *refusal) {
	mptcp := false
	for o := range conn.ConnectOptions() {
		mptcp = mptcp || o.Kind == tlv.OptMPTCP
	}
	dest := sess.entry.Destination()
	source, r := s.sourceFor(sess)
	if r != nil {
		return nil, r
	}
	if s.cfg.VerifyClientFirst {
		// No server-leg SYN before the client proved its address: the
		// 0-RTT gain is traded for spoofing safety (preserve mode
		// without ingress filtering).
		if err := sess.handshake.wait(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, &refusal{action: tlv.ActionAbort, reason: errDialCanceled.Error()}
			}
			sess.unverified.Store(true)
			s.stats.unverified.Add(1)
			return nil, &refusal{action: tlv.ActionAbort, reason: errUnverified.Error()}
		}
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	// The attempts run one after the other (dialVerified): the first
	// sends the server-leg SYN, the last is the connect that counts.
	var attempt time.Time
	server, err := dialVerified(dctx, sess.handshake, unverifiedSynWindow, func(ctx context.Context) (*net.TCPConn, error) {
		first := attempt.IsZero()
		attempt = time.Now()
		if first {
			s.timings.synToServerSyn.ObserveDuration(attempt.Sub(sess.entry.Start()))
		}
		if s.cfg.Dial != nil {
			return s.cfg.Dial(ctx, dest, early)
		}
		return dialServer(ctx, dest, source, sess.preserved, mptcp, early)
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, &refusal{action: tlv.ActionAbort, reason: errDialCanceled.Error()}
		}
		if errors.Is(err, errUnverified) {
			sess.unverified.Store(true)
			s.stats.unverified.Add(1)
			return nil, &refusal{action: tlv.ActionAbort, reason: err.Error()}
		}
		s.stats.dialFailures.Add(1)
		r := dialRefusal(dest, err)
		r.dial = true
		errors.As(err, &r.errno)
		if r.code == tlv.CodeResourceExceeded { // out of ports or fds here: the configured back-off
			r.reply = tlv.AppendErrorMessage(nil, r.code, []byte{s.pol().Backoff}, nil)
		}
		return nil, r
	}
	s.timings.connect.Since(attempt)
	sess.entry.SetServer(server)
	if len(early) > 0 {
		sess.entry.Count(sessions.Client, int64(len(early)))
		s.stats.bytes[sessions.Client][sess.legKind()].Add(uint64(len(early)))
	}
	opts, synthesized := s.synAckOptions(server, dest)
	sess.entry.SetSource(sess.sourceKind())
	src := sessions.SynAckExact
	if synthesized {
		src = sessions.SynAckSynthesized
	}
	sess.entry.SetSynAck(src)
	return opts, nil
}

// sourceFor picks the server leg's source: none (the converter's own
// address) or a mapping from the shared pool, released when the session
// ends. An exhausted pool refuses the session; it never evicts another.
func (s *Server) sourceFor(sess *session) (netip.AddrPort, *refusal) {
	client, dest := sess.entry.ClientAddr().Addr(), sess.entry.Destination()
	if s.cfg.Preserve && client.Is4() == dest.Addr().Is4() {
		sess.preserved = true
		return netip.AddrPortFrom(client, 0), nil
	}
	if s.cfg.NAT == nil {
		return netip.AddrPort{}, nil
	}
	// Paired pooling per subscriber: an IPv6 client is its prefix.
	m, err := s.cfg.NAT.Allocate(s.clientKey(client).Addr(), nat.FamilyOf(dest.Addr()))
	switch {
	case errors.Is(err, nat.ErrExhausted), errors.Is(err, nat.ErrLogFull):
		return netip.AddrPort{}, refuse(tlv.CodeResourceExceeded, []byte{s.pol().Backoff}, "address pool: %v", err)
	case err != nil:
		return netip.AddrPort{}, refuse(tlv.CodeNetworkFailure, nil, "address pool: %v", err)
	}
	sess.mapping = &m
	return m.External, nil
}

// sourceKind is how the server leg's source was chosen.
func (s *session) sourceKind() sessions.ServerSource {
	switch {
	case s.preserved:
		return sessions.SourcePreserved
	case s.mapping != nil:
		return sessions.SourceShared
	}
	return sessions.SourceOwn
}

func (s *Server) releaseMapping(sess *session) {
	if sess.mapping == nil {
		return
	}
	if sess.unverified.Load() {
		s.cfg.NAT.LogUnverified(*sess.mapping)
	}
	s.cfg.NAT.Release(*sess.mapping)
}

// synAckOptions returns the server's SYN+ACK options: the captured bytes
// when capture is on and saw this connection, otherwise options rebuilt
// from TCP_INFO (synthesized is then true).
func (s *Server) synAckOptions(server *net.TCPConn, dest netip.AddrPort) (opts []byte, synthesized bool) {
	if s.cfg.SynAcks != nil {
		local := unmapAddrPort(server.LocalAddr())
		if b, ok := s.cfg.SynAcks.Lookup(local, dest); ok {
			s.cfg.SynAcks.Delete(local, dest)
			return b, false
		}
		s.stats.synAckMissed.Add(1)
	}
	info, err := sockinfo.GetTCPInfo(server)
	if err != nil {
		return nil, true
	}
	return synthesizeSynAckOptions(info, multipath(server)), true
}

// replyToClient waits for the Client's handshake to complete (an MPTCP
// socket written in SYN_RECV can stall forever on Linux) and writes the
// reply in one write, before any server byte.
func (s *Server) replyToClient(ctx context.Context, sess *session, reply []byte) error {
	if err := sess.handshake.wait(ctx); err != nil {
		if ctx.Err() != nil {
			return err
		}
		sess.unverified.Store(true)
		s.stats.unverified.Add(1)
		return fmt.Errorf("%w: %v", errUnverified, err)
	}
	c := sess.entry.Client()
	c.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer c.SetWriteDeadline(time.Time{})
	if _, err := c.Write(reply); err != nil {
		return fmt.Errorf("write reply: %w", err)
	}
	s.timings.synToReply.Since(sess.entry.Start())
	return nil
}

func (s *Server) runRelay(sess *session) {
	sess.entry.Touch()
	sess.relaying.Store(true)
	sess.startRelay()
}

// relayEnded closes a session whose relay ended (relayRun.end).
func (s *Server) relayEnded(sess *session) {
	s.observeEnd(sess)
	if sess.aborted() {
		// The abort's RST, even if this end, run by the other
		// direction, closes first.
		abort(sess.entry.Client())
		abort(sess.entry.Server())
	} else {
		// Only an abort ends a detached session, so both legs are here.
		sess.entry.Client().Close()
		sess.entry.Server().Close()
	}
	s.logEnd(sess)
	s.endSession(sess)
}

// spawn runs f in a goroutine that Serve waits for.
func (s *Server) spawn(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// refuseAtAccept answers a connection refused before it became a
// session: counted and logged like any refusal, no session record.
func (s *Server) refuseAtAccept(c *net.TCPConn, r *refusal) {
	s.stats.refusal(r)
	if extra, ok := s.refusalLogAttrs(); ok {
		s.log.Info("refused", append([]any{"client", unmapAddrPort(c.RemoteAddr()).String(), "action", r.action.String(),
			"reason", r.reason, "code", int(r.code), "error", r.code.String()}, extra...)...)
	}
	closeWithError(c, r.reply, s.cfg.DrainTimeout)
}

// releaseHold lets a held SYN+ACK go (a session that needs no server, or
// a refusal the RFC answers with an Error TLV).
func releaseHold(hold HeldSynAck) {
	if hold != nil {
		hold.Release()
	}
}

// releaseHeld lets the held SYN+ACK of a session whose server leg is up
// go, and records how it was timed. When it was held until now the
// Extended TCP Header is the server's own or none: never rebuilt.
func (s *Server) releaseHeld(sess *session, hold HeldSynAck, synAckOptions []byte) []byte {
	if hold.Release() {
		sess.entry.SetSynHold(sessions.SynHoldAtCap)
		return synAckOptions
	}
	sess.entry.SetSynHold(sessions.SynHoldHeld)
	if sess.entry.SynAck() == sessions.SynAckSynthesized {
		sess.entry.SetSynAck(sessions.SynAckMissing)
		return nil
	}
	return synAckOptions
}

// finishHeld ends a refused session whose SYN+ACK may be held. A failed
// server-leg connect (or an abort) while it is still held is answered the
// way a direct connect would have failed: the SYN+ACK never goes, an
// ICMP unreachable goes where the server's answer was one, and the
// client leg is reset (its RST answers the client's SYN: ECONNREFUSED).
// The reason is in the log record and the refusal counters. Every other
// refusal releases it first and sends the Error TLV, as RFC 8803 wants
// (policy refusals; a connect that failed after the longest hold).
func (s *Server) finishHeld(sess *session, hold HeldSynAck, r *refusal) {
	if hold == nil {
		s.finishRefused(sess, r)
		return
	}
	// Resource Exceeded from the dial is this converter out of ports or
	// descriptors: a policy answer, with its back-off.
	if r.action == tlv.ActionReply && (!r.dial || r.code == tlv.CodeResourceExceeded) {
		hold.Release()
		s.finishRefused(sess, r)
		return
	}
	how, late := "reset", false
	if r.code == tlv.CodeDestinationUnreachable && r.errno != 0 {
		// The client's family may not be the server's: the code is
		// the one that gives the client the server's errno.
		code := clientICMPCode(r.errno, sess.entry.ClientAddr().Addr().Is4())
		how, late = "unreachable", hold.Unreachable(code)
	} else {
		late = hold.Refuse()
	}
	if late {
		sess.entry.SetSynHold(sessions.SynHoldAtCap)
		s.finishRefused(sess, r)
		return
	}
	s.stats.refusal(r)
	if extra, ok := s.refusalLogAttrs(); ok {
		sess.logger().Info("refused", append([]any{"action", how + " (syn held)", "reason", r.reason,
			"code", int(r.code), "error", r.code.String()}, extra...)...)
	}
	abort(sess.entry.Client())
}

func (s *Server) finishRefused(sess *session, r *refusal) {
	s.stats.refusal(r)
	if r.action == tlv.ActionReply {
		sess.entry.SetRefused(r.code)
	}
	attrs := []any{"action", r.action.String(), "reason", r.reason}
	if r.action == tlv.ActionReply {
		attrs = append(attrs, "code", int(r.code), "error", r.code.String())
	}
	if extra, ok := s.refusalLogAttrs(); ok {
		sess.logger().Info("refused", append(attrs, extra...)...)
	}
	if r.action == tlv.ActionReply {
		closeWithError(sess.entry.Client(), r.reply, s.cfg.DrainTimeout)
		return
	}
	abort(sess.entry.Client())
}

func (s *Server) finishInfo(sess *session) {
	s.stats.infoOnly.Add(1)
	sess.logger().Info("info answered")
	closeWithError(sess.entry.Client(), infoReply(s.cfg.SupportedKinds), s.cfg.DrainTimeout)
}

func (s *Server) logEnd(sess *session) {
	// One record per session at the default level: built only when it
	// is written, in one call (no derived logger per session).
	if !s.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	e := sess.entry
	attrs := sess.logAttrs(make([]slog.Attr, 0, 11))
	if o := e.Original(); o.IsValid() {
		attrs = append(attrs, slog.String("original_destination", o.String()))
	}
	toServer, toClient := e.Bytes()
	attrs = append(attrs,
		slog.Int64("bytes_to_server", toServer),
		slog.Int64("bytes_to_client", toClient),
		slog.Int64("duration_ms", time.Since(e.Start()).Milliseconds()),
		slog.String("syn_ack_options", e.SynAck().String()), // set by connect, before any logEnd
		slog.String("end", sess.reason()))
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "session end", 0)
	r.AddAttrs(attrs...)
	l := s.endLog.Load()
	if l == nil { // not serving: no writer
		s.log.Handler().Handle(context.Background(), r)
		return
	}
	l.write(r)
}

func isEOFOrTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || (errors.As(err, &ne) && ne.Timeout())
}

// newSession records what is known at accept time, and registers it.
func (s *Server) newSession(c *net.TCPConn) *session {
	a := sessions.Accepted{ID: s.nextID.Add(1), Client: c, Start: time.Now()}
	if s.cfg.Transparent {
		// A steered SYN was accepted as if by the server it named.
		a.Original = unmapAddrPort(c.LocalAddr())
	}
	sess := &session{srv: s}
	var err error
	sess.entry, err = s.register(a)
	// The entry read MPTCP_INFO for the token: it tells MPTCP too.
	sess.mptcp = sess.entry.Multipath()
	if h, err := sockinfo.GetTCPHead(c); err == nil {
		sess.synData = h.SynData()
	}
	s.stats.accepted(sess)
	if err != nil {
		sess.logger().Debug("not in the session table", "error", err.Error())
	}
	return sess
}

// register puts the session in the operators' table. A full table costs
// the session its place there, not its service: the table counts the
// refusal and the session gets an entry outside the table.
func (s *Server) register(a sessions.Accepted) (*sessions.Entry, error) {
	e, err := s.cfg.Table.Add(a)
	if err != nil {
		return sessions.NewEntry(a), err
	}
	return e, nil
}

// steerJoins puts the session's MPTCP token in the steering program's map
// at once (the client's MP_JOIN may follow within an RTT); the session's
// end takes it out.
func (s *Server) steerJoins(sess *session) {
	if s.cfg.Joins == nil {
		return
	}
	token, ok := sess.entry.Token()
	if !ok {
		return
	}
	if err := s.cfg.Joins.AddToken(token); err != nil {
		sess.logger().Warn("token not steerable", "error", err.Error())
		return
	}
	sess.end.joinToken, sess.end.steered = token, true
}

// Table returns the table of sessions in progress.
func (s *Server) Table() *sessions.Table { return s.cfg.Table }

func unmapAddrPort(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// multipath reports whether c is (still) an MPTCP connection.
func multipath(c *net.TCPConn) bool {
	ok, err := c.MultipathTCP()
	return ok && err == nil
}
