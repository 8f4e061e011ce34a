// Package handover carries a running daemon's sockets and BPF objects to
// its successor over a unix stream socket: JSON messages, each with the
// file descriptors it names passed as SCM_RIGHTS.
package handover

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/internal/dupfd"
)

// maxMessage bounds one message's JSON, against a peer that is not a
// converter.
const maxMessage = 1 << 20

// fdsPerBatch stays under the kernel's SCM_MAX_FD (253) per sendmsg.
const fdsPerBatch = 250

// Conn is one end of a hand-over connection.
type Conn struct {
	c *net.UnixConn
}

// NewConn wraps a connected unix stream socket.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// Close closes the connection; the peer reads EOF.
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline bounds the reads and writes to come.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// envelope is what goes on the wire ahead of the files.
type envelope struct {
	Files int             `json:"files"`
	Body  json.RawMessage `json:"body"`
}

// Send writes msg as JSON, then the files in batches. The files stay open
// on this side: the caller closes its copies.
func (c *Conn) Send(msg any, files []*os.File) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("hand-over: encode message: %w", err)
	}
	env, err := json.Marshal(envelope{Files: len(files), Body: body})
	if err != nil {
		return fmt.Errorf("hand-over: encode message: %w", err)
	}
	if len(env) > maxMessage {
		return fmt.Errorf("hand-over: message of %d bytes is too long", len(env))
	}
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(env)))
	if _, err := c.c.Write(append(frame, env...)); err != nil {
		return fmt.Errorf("hand-over: send message: %w", err)
	}
	for len(files) > 0 {
		n := min(len(files), fdsPerBatch)
		if err := c.sendBatch(files[:n]); err != nil {
			return err
		}
		files = files[n:]
	}
	return nil
}

// sendBatch sends up to fdsPerBatch files with one byte. It never calls
// os.File.Fd: that puts the descriptor in blocking mode, and O_NONBLOCK
// belongs to the open file, shared by every duplicate: a listening socket
// would block the sender's own accept loop for good.
func (c *Conn) sendBatch(files []*os.File) error {
	fds := make([]int, 0, len(files))
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, f := range files {
		d, err := dupfd.Of(f)
		if err != nil {
			return fmt.Errorf("hand-over: %s: %w", f.Name(), err)
		}
		fds = append(fds, d)
	}
	// One byte carries each batch: rights travel with data.
	if _, _, err := c.c.WriteMsgUnix([]byte{byte(len(fds))}, unix.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("hand-over: send %d file descriptors: %w", len(fds), err)
	}
	return nil
}

// Receive reads one message into msg and returns the files that came with
// it, in the order they were sent; the caller owns them.
func (c *Conn) Receive(msg any) ([]*os.File, error) {
	var head [4]byte
	if _, err := io.ReadFull(c.c, head[:]); err != nil {
		return nil, fmt.Errorf("hand-over: read message: %w", err)
	}
	n := binary.BigEndian.Uint32(head[:])
	if n > maxMessage {
		return nil, fmt.Errorf("hand-over: message of %d bytes is too long", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(c.c, buf); err != nil {
		return nil, fmt.Errorf("hand-over: read message: %w", err)
	}
	var env envelope
	if err := json.Unmarshal(buf, &env); err != nil {
		return nil, fmt.Errorf("hand-over: decode message: %w", err)
	}
	files, err := c.receiveFiles(env.Files)
	if err != nil {
		return nil, err
	}
	if msg != nil && len(env.Body) > 0 {
		if err := json.Unmarshal(env.Body, msg); err != nil {
			closeAll(files)
			return nil, fmt.Errorf("hand-over: decode message: %w", err)
		}
	}
	return files, nil
}

func (c *Conn) receiveFiles(want int) ([]*os.File, error) {
	var files []*os.File
	oob := make([]byte, unix.CmsgSpace(fdsPerBatch*4))
	for len(files) < want {
		var b [1]byte
		_, oobn, _, _, err := c.c.ReadMsgUnix(b[:], oob)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("hand-over: read file descriptors: %w", err)
		}
		fds, err := parseRights(oob[:oobn])
		if err != nil || len(fds) != int(b[0]) {
			for _, fd := range fds {
				unix.Close(fd)
			}
			closeAll(files)
			return nil, fmt.Errorf("hand-over: expected %d file descriptors, got %d (%v)", b[0], len(fds), err)
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "handed-over"))
		}
	}
	if len(files) != want {
		closeAll(files)
		return nil, fmt.Errorf("hand-over: expected %d file descriptors, got %d", want, len(files))
	}
	return files, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var errs []error
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fds = append(fds, got...)
	}
	return fds, errors.Join(errs...)
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
