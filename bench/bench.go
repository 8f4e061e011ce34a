// Package bench is a load generator and its server, so that every figure of
// the converter's benchmarks (direct, through a proxy, through the
// converter) is measured with the same client code.
//
// # Wire protocol
//
// One server serves every mode; the first byte a client sends selects what
// the server does with the connection:
//
//   - 'T' (sink, throughput mode): the server reads and counts every byte up
//     to the client's half-close (the 'T' included), then answers with the
//     count as an 8-byte big-endian integer and closes. The count is how the
//     client knows that everything it sent arrived.
//   - 'E' (echo, connect mode): the request starts with a 4-byte header,
//     'E' then the request's total length (header included) as a 24-bit
//     big-endian integer. The server reads exactly that many bytes, writes
//     them back and closes.
//   - anything else: the server closes the connection.
//
// A connection that sends nothing (idle mode) is held open until the
// client or the server goes away.
//
// The server closes first in both modes, and the client closes only once
// it has read the server's end of stream. TIME_WAIT therefore lands on the
// server side of every connection (on the listening port, where it costs no
// ephemeral port) and not in the load generator's namespace, so a connect
// run does not exhaust the generator's ports even without
// net.ipv4.tcp_tw_reuse. The generator's namespace still needs a wide
// net.ipv4.ip_local_port_range: at 15,000 connections/s the default range
// of 28,000 ports is recycled every two seconds.
package bench

import (
	"encoding/binary"
	"fmt"
)

// Operation bytes: the first byte of every connection.
const (
	opSink = 'T'
	opEcho = 'E'
)

// Echo request limits.
const (
	echoHeaderLen = 4
	// MinRequestSize is the smallest echo request: its header.
	MinRequestSize = echoHeaderLen
	// MaxRequestSize bounds an echo request (and the server's buffer).
	MaxRequestSize = 1 << 20
)

// countLen is the size of the sink's answer.
const countLen = 8

// newEchoRequest returns a request of size bytes: the header, then a
// pattern that lets the client check the echo.
func newEchoRequest(size int) ([]byte, error) {
	if size < MinRequestSize || size > MaxRequestSize {
		return nil, fmt.Errorf("request size %d: must be %d to %d bytes", size, MinRequestSize, MaxRequestSize)
	}
	b := make([]byte, size)
	b[0] = opEcho
	putUint24(b[1:4], uint32(size))
	for i := echoHeaderLen; i < size; i++ {
		b[i] = byte('a' + i%26)
	}
	return b, nil
}

func putUint24(b []byte, v uint32) {
	b[0], b[1], b[2] = byte(v>>16), byte(v>>8), byte(v)
}

func uint24(b []byte) uint32 {
	return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
}

func putCount(b []byte, n uint64) { binary.BigEndian.PutUint64(b, n) }

func count(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
