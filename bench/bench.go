// Package bench is a load generator and its server, so that every figure of
// the converter's benchmarks (direct, through a proxy, through the
// converter) is measured with the same client code.
//
// # Wire protocol
//
// One server serves every mode; the first byte a client sends selects what
// the server does with the connection:
//
//   - 'T' (sink, throughput up): the server reads and counts every byte up
//     to the client's half-close (the 'T' included), then answers with the
//     count as an 8-byte big-endian integer and closes. The count is how the
//     client knows that everything it sent arrived.
//   - 'S' and an 8-byte big-endian count N (source, throughput down): the
//     server writes N bytes, half-closes, and closes at the client's end of
//     stream. The client reads to the end of stream and checks it got N.
//   - 'B' and an 8-byte big-endian count N (both, throughput both ways):
//     the client sends its bytes and half-closes while the server writes N
//     bytes and counts what it reads (the 9-byte header excluded). Once it
//     has written N bytes and read the client's end of stream, the server
//     sends its count as 8 bytes and closes. The client reads N bytes, then
//     the count.
//   - 'E' (echo, connect mode): the request starts with a 4-byte header,
//     'E' then the request's total length (header included) as a 24-bit
//     big-endian integer. The server reads exactly that many bytes, writes
//     them back and closes.
//   - anything else: the server closes the connection.
//
// A connection that sends nothing (idle mode) is held open until the
// client or the server goes away.
//
// The server closes first in every mode, and the client closes only once
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
	opSink   = 'T'
	opSource = 'S'
	opBoth   = 'B'
	opEcho   = 'E'
)

// Echo request limits.
const (
	echoHeaderLen = 4
	// MinRequestSize is the smallest echo request: its header.
	MinRequestSize = echoHeaderLen
	// MaxRequestSize bounds an echo request (and the server's buffer).
	MaxRequestSize = 1 << 20
)

// countLen is the size of a count: the sink's answer, the byte count that
// follows 'S' and 'B'.
const countLen = 8

// countHeaderLen is the size of the header of 'S' and 'B'.
const countHeaderLen = 1 + countLen

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

// newCountHeader returns op followed by the count n.
func newCountHeader(op byte, n uint64) []byte {
	b := make([]byte, countHeaderLen)
	b[0] = op
	putCount(b[1:], n)
	return b
}

func putCount(b []byte, n uint64) { binary.BigEndian.PutUint64(b, n) }

func count(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
