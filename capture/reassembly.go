package capture

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
)

// maxPending bounds the out-of-order segments a stream keeps.
const maxPending = 64

// segment is a segment that arrived before the bytes preceding it.
type segment struct {
	off     int
	data    []byte
	snapped bool
}

// stream is one direction of a connection, up to the bytes wanted of it.
type stream struct {
	dir     Direction
	limit   int    // Options.Limit
	started bool   // its SYN (or SYN+ACK) was seen
	isn     uint32 // the SYN's sequence number
	prefix  []byte // the contiguous bytes from the start of the stream
	pending []segment
	first   packetMeta // the packet that carried the first byte
	sawData bool
	snapped bool // a packet of prefix was cut short by the capture
	done    bool // it was given as a Stream
	conn    int  // index of its connection in tracker.handshakes
}

// offset is where the payload of p starts in the stream: SYN data comes
// after the SYN's sequence number.
func (s *stream) offset(p *tcpPacket) int {
	seq := p.seq
	if p.syn {
		seq++
	}
	return int(int32(seq - s.isn - 1))
}

// add files the payload of p and reports whether the prefix grew.
func (s *stream) add(p *tcpPacket) bool {
	s.sawData = true
	off, data := s.offset(p), p.payload
	if off < 0 {
		if -off >= len(data) {
			return false // older than the stream: a keep-alive or the SYN itself
		}
		data, off = data[-off:], 0
	}
	if off > len(s.prefix) {
		s.park(segment{off: off, data: data, snapped: p.snapped})
		return false
	}
	empty := len(s.prefix) == 0
	if !s.extend(segment{off: off, data: data, snapped: p.snapped}) {
		return false
	}
	if empty {
		s.first = p.packetMeta
	}
	s.drain()
	return true
}

// extend appends what seg adds to the prefix; seg starts inside or right
// after it.
func (s *stream) extend(seg segment) bool {
	end := seg.off + len(seg.data)
	if end <= len(s.prefix) {
		return false
	}
	s.prefix = append(s.prefix, seg.data[len(s.prefix)-seg.off:]...)
	s.snapped = s.snapped || seg.snapped
	return true
}

// park keeps an out-of-order segment that can hold wanted bytes.
func (s *stream) park(seg segment) {
	if seg.off >= s.limit || len(s.pending) >= maxPending {
		return
	}
	seg.data = bytes.Clone(seg.data)
	s.pending = append(s.pending, seg)
}

// drain moves the parked segments the prefix now reaches into it.
func (s *stream) drain() {
	for {
		i := slices.IndexFunc(s.pending, func(p segment) bool { return p.off <= len(s.prefix) })
		if i < 0 {
			return
		}
		seg := s.pending[i]
		s.pending = slices.Delete(s.pending, i, i+1)
		s.extend(seg)
	}
}

type connKey struct{ a, b netip.AddrPort }

func connKeyOf(x, y netip.AddrPort) connKey {
	if x.Compare(y) > 0 {
		x, y = y, x
	}
	return connKey{x, y}
}

// conn is a TCP connection seen from its Client's SYN.
type conn struct {
	index   int // packet number of the SYN
	client  netip.AddrPort
	streams [2]stream // by Direction
}

// tracker follows the TCP connections of a capture.
type tracker struct {
	opts       Options
	conns      map[connKey]*conn
	streams    []Stream
	handshakes []Handshake // of every conn, also those ended
}

func newTracker(opts Options) *tracker {
	if opts.Limit <= 0 {
		opts.Limit = DefaultLimit
	}
	return &tracker{opts: opts, conns: map[connKey]*conn{}}
}

func (t *tracker) warn(w Warning) {
	if t.opts.Warn != nil {
		t.opts.Warn(w)
	}
}

// read feeds every TCP packet of src to t. A capture cut in the middle of
// a packet (a capture that was killed) ends with a warning.
func (t *tracker) read(src source) error {
	skipped := map[uint32]bool{}
	for i := 1; ; i++ {
		data, ci, err := src.read()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, io.ErrUnexpectedEOF):
			t.warn(Warning{Kind: EndsInPacket, Packet: i})
			return nil
		case err != nil:
			return fmt.Errorf("packet %d: %w", i, err)
		}
		link := src.link(ci)
		if !linkSupported(link) && !skipped[link] {
			skipped[link] = true
			t.warn(Warning{Kind: LinkSkipped, Packet: i, LinkType: link})
		}
		if p, ok := parsePacket(link, data, ci); ok {
			p.index = i
			t.packet(&p)
		}
	}
}

func (t *tracker) packet(p *tcpPacket) {
	c := t.connFor(p)
	if c == nil {
		return
	}
	dir := FromServer
	if p.src == c.client {
		dir = FromClient
	}
	s := &c.streams[dir]
	if h := &t.handshakes[s.conn]; p.syn && p.ack && dir == FromServer && h.SYNACK == 0 {
		h.SYNACK, h.SYNACKTime = p.index, p.time // a retransmitted SYN+ACK keeps the first
	}
	if p.syn && !s.started {
		s.started, s.isn = true, p.seq
	}
	if s.done || len(p.payload) == 0 {
		return
	}
	if !s.started {
		s.sawData = true // data whose stream start is unknown: finish warns
		return
	}
	if s.add(p) {
		t.try(s)
	}
}

// connFor finds the connection of p; a Client SYN with a new initial
// sequence number starts a new one on the same addresses.
func (t *tracker) connFor(p *tcpPacket) *conn {
	key := connKeyOf(p.src, p.dst)
	c := t.conns[key]
	if !p.syn || p.ack {
		return c
	}
	if c != nil && c.client == p.src && c.streams[FromClient].isn == p.seq {
		return c // a retransmitted SYN
	}
	if c != nil {
		t.finish(c)
	}
	c = &conn{index: p.index, client: p.src}
	for d := range c.streams {
		c.streams[d].dir, c.streams[d].limit, c.streams[d].conn = Direction(d), t.opts.Limit, len(t.handshakes)
	}
	t.handshakes = append(t.handshakes, Handshake{Client: p.src, Server: p.dst, SYN: p.index, SYNTime: p.time})
	t.conns[key] = c
	return c
}

// try gives the stream once its prefix holds all that is wanted of it.
func (t *tracker) try(s *stream) {
	if len(s.prefix) < t.opts.Limit && (t.opts.Enough == nil || !t.opts.Enough(s.dir, s.prefix)) {
		return
	}
	t.emit(s)
}

func (t *tracker) emit(s *stream) {
	t.streams = append(t.streams, Stream{
		Dir:       s.dir,
		Data:      s.prefix,
		Packet:    s.first.index,
		Time:      s.first.time,
		Src:       s.first.src,
		Dst:       s.first.dst,
		SYN:       s.first.syn,
		Snapped:   s.snapped,
		Handshake: s.conn,
	})
	s.done, s.prefix, s.pending = true, nil, nil
}

// finish gives what a connection's streams hold at its end.
func (t *tracker) finish(c *conn) {
	for i := range c.streams {
		s := &c.streams[i]
		switch {
		case s.done || !s.sawData:
		case len(s.prefix) == 0:
			t.warn(Warning{Kind: StartMissing, Packet: c.index, Client: c.client, Dir: s.dir})
		default:
			if s.snapped {
				t.warn(Warning{Kind: SnappedShort, Packet: s.first.index, Src: s.first.src, Dst: s.first.dst, Dir: s.dir})
			}
			t.emit(s)
		}
	}
}

// close ends every connection and returns the streams in the order of
// their first packets.
func (t *tracker) close() []Stream {
	cs := slices.SortedFunc(maps.Values(t.conns), func(a, b *conn) int { return cmp.Compare(a.index, b.index) })
	for _, c := range cs {
		t.finish(c)
	}
	t.conns = map[connKey]*conn{}
	slices.SortStableFunc(t.streams, func(a, b Stream) int { return cmp.Compare(a.Packet, b.Packet) })
	return t.streams
}
