// Package capture reads pcap and pcapng captures and gives the first bytes
// of each direction of each TCP connection in them: the bytes a protocol
// that speaks first on a connection (such as the Convert protocol of
// RFC 8803) sends, put back in sequence order.
//
// Captures may be gzip-compressed and framed with Ethernet (VLAN tags
// skipped), Linux cooked (SLL, SLL2), raw IP or BSD loopback headers, over
// IPv4 or IPv6. A connection is followed from the SYN of its Client (the
// side that opens it); each direction from its own SYN or SYN+ACK, so a
// direction whose SYN was not captured is not followed. Segments are put
// back in sequence order: data in a SYN (TCP Fast Open), data split over
// segments, segments out of order, retransmitted or overlapping give each
// byte once. Read also tells when each connection's SYN and SYN+ACK were
// captured, so that the order in which connections were opened shows.
package capture

import (
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Direction tells the two streams of a connection apart.
type Direction uint8

const (
	FromClient Direction = iota // from the side whose SYN opened the connection
	FromServer                  // from the side that answered with SYN+ACK
)

// String is "client" or "server".
func (d Direction) String() string {
	if d == FromServer {
		return "server"
	}
	return "client"
}

// Stream is the start of one direction of a TCP connection.
type Stream struct {
	Dir Direction
	// Data holds the contiguous bytes from the start of the stream that
	// were captured when the stream was complete (see Options), or when
	// the connection or the capture ended. It is never empty.
	Data []byte
	// Packet, Time, Src, Dst and SYN are those of the packet that carried
	// the first byte of Data: Packet is its 1-based number in the capture
	// and Time its timestamp in UTC; SYN is set for data in a SYN or
	// SYN+ACK.
	Packet   int
	Time     time.Time
	Src, Dst netip.AddrPort
	SYN      bool
	// Snapped means the capture cut short a packet that carried part of
	// Data (its snap length): the stream may go on past Data.
	Snapped bool
	// Handshake is the index of the stream's connection in the
	// handshakes that Read returns.
	Handshake int
}

// Handshake is how a connection whose Client SYN was captured was opened:
// it tells when each side sent its SYN, which no Stream does when the SYN
// carries no data.
type Handshake struct {
	Client, Server netip.AddrPort
	// SYN and SYNACK are the 1-based packet numbers of the Client's SYN
	// and of the first SYN+ACK that answered it, 0 when it was not
	// captured; SYNTime and SYNACKTime are their timestamps in UTC. A
	// retransmitted SYN (same sequence number) keeps the first.
	SYN, SYNACK         int
	SYNTime, SYNACKTime time.Time
}

// DefaultLimit is the Limit of Options that leave it zero.
const DefaultLimit = 1 << 16

// Options say how much of each stream Streams keeps.
type Options struct {
	// Enough reports whether data, the contiguous bytes held from the
	// start of a stream, are all that is wanted of it: the stream is then
	// complete and its later bytes are not read. It is called each time
	// data grows, and must neither keep nor change data. Nil means a
	// stream is complete only at Limit.
	Enough func(dir Direction, data []byte) bool
	// Limit is how far into a stream bytes are wanted: a stream is
	// complete once it holds Limit contiguous bytes (Data runs on to the
	// end of the segment that reached Limit), and a segment that arrives
	// out of order is kept only when it starts before Limit. Zero means
	// DefaultLimit.
	Limit int
	// Warn, when not nil, is called with each Warning when it is found.
	Warn func(Warning)
}

// WarningKind is what a Warning is about.
type WarningKind uint8

const (
	// LinkSkipped: packets of link type LinkType are skipped (warned once per
	// link type, at Packet, the first of them).
	LinkSkipped WarningKind = iota + 1
	// EndsInPacket: the capture ends inside packet Packet (a capture
	// that was killed); the packets before it are read.
	EndsInPacket
	// StartMissing: the connection whose SYN is packet Packet, opened
	// by Client, carried data in direction Dir but the start of that
	// stream was not captured. The stream gives no Stream.
	StartMissing
	// SnappedShort: the stream in direction Dir whose first packet is
	// Packet (from Src to Dst) ended with its connection before it was
	// complete, and the capture cut one of its packets short (snap
	// length). Its Stream is given, with Snapped set.
	SnappedShort
)

// Warning is a part of a capture that Streams could not follow in full.
// Which fields are set depends on Kind.
type Warning struct {
	Kind     WarningKind
	Packet   int
	LinkType uint32
	Client   netip.AddrPort
	Dir      Direction
	Src, Dst netip.AddrPort
}

// String describes w in one line.
func (w Warning) String() string {
	switch w.Kind {
	case LinkSkipped:
		return fmt.Sprintf("packets of link type %d skipped", w.LinkType)
	case EndsInPacket:
		return fmt.Sprintf("the capture ends inside packet %d", w.Packet)
	case StartMissing:
		return fmt.Sprintf("connection from %s (packet %d): the start of the %s stream was not captured",
			w.Client, w.Packet, w.Dir)
	case SnappedShort:
		return fmt.Sprintf("%s -> %s: the capture cut the %s stream short (snap length)", w.Src, w.Dst, w.Dir)
	}
	return fmt.Sprintf("warning kind %d", w.Kind)
}

// Streams reads the capture in r and returns the start of every stream
// that carries data, in the order of their first packets. A stream is
// given once it is complete (see Options), or at the end of its
// connection (a new Client SYN on the same addresses) or of the capture
// with the bytes it holds then.
//
// An error that stops the reading (not a capture, a link type that is not
// supported, a corrupt packet) is returned with the streams of the packets
// read before it. A capture cut inside its last packet is not an error:
// it gives an EndsInPacket warning.
func Streams(r io.Reader, opts Options) ([]Stream, error) {
	streams, _, err := Read(r, opts)
	return streams, err
}

// Read is Streams that also returns the Handshake of every connection
// whose Client SYN was captured, in the order of their SYNs, data or not.
func Read(r io.Reader, opts Options) ([]Stream, []Handshake, error) {
	src, err := openSource(r)
	if err != nil {
		return nil, nil, err
	}
	t := newTracker(opts)
	err = t.read(src)
	streams := t.close()
	return streams, t.handshakes, err
}
