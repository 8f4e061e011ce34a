package engine

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// bufferedChunk is the buffer of one buffered copy step: large, because
// each step costs a wakeup and two system calls.
const bufferedChunk = 256 << 10

// bufferPool holds the buffers of the buffered copy. A session takes one
// only while bytes are ready to move, so idle sessions hold none.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, bufferedChunk); return &b }}}
}

func (bp *bufferPool) get() *[]byte  { return bp.p.Get().(*[]byte) }
func (bp *bufferPool) put(b *[]byte) { bp.p.Put(b) }

// copyBuffered copies src to dst with read and write through a pooled
// buffer. It is used where splice is slow on Linux: into and out of MPTCP
// sockets (see the design notes), where a plain copy is several times
// faster and steadier. It calls moved after each write, returns the
// bytes copied and the first error; a clean end of src is (n, nil).
//
// A buffer is taken only once src has bytes and dst has room, and no more
// is read than dst takes without blocking: a peer that stops reading
// pins no buffer, only the kernel's socket buffers.
func copyBuffered(dst, src *net.TCPConn, pool *bufferPool, moved func(n int64), park time.Duration) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	wc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		if readable(rc) == 0 { // bytes already there need no wait
			if err := waitSource(src, rc, park); err != nil {
				return total, err
			}
		}
		room, err := writeRoom(wc, bufferedChunk, 2)
		if err != nil {
			return total, err
		}
		buf := pool.get()
		n, rerr := src.Read((*buf)[:room])
		if n > 0 {
			_, werr := dst.Write((*buf)[:n])
			pool.put(buf)
			total += int64(n)
			moved(int64(n))
			if werr != nil {
				return total, werr
			}
		} else {
			pool.put(buf)
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// minRoom is the least a relay step moves once dst polled writable: the
// kernel wakes writers when a third of the send buffer is free, far more.
// With less free than this a step first waits for that wake-up.
const minRoom = 4 << 10

// writeRoom returns how many bytes dst takes now without blocking, at
// most limit, once that is at least minRoom: its send buffer divided by
// share, less what is queued (SIOCOUTQ: unsent and unacked). Below
// minRoom it waits for the kernel's own writability (without holding a
// buffer); where the figures cannot be read it says limit and leaves
// blocking to the write.
//
// The kernel counts buffer overhead against the send buffer too, so the
// whole of it (share 1) may take a little less than it says: a splice
// step then waits briefly inside with a few pages in its pipe. Halving
// it (share 2) never overshoots, but a TCP relay then moves half as much
// per step, which measured 30 % more CPU per byte (two relays side by
// side, 2 GiB each way); MPTCP legs keep the half, where the whole
// measured slower downloads.
func writeRoom(wc syscall.RawConn, limit, share int) (int, error) {
	for waited := false; ; waited = true {
		free, ok := sendFree(wc, share)
		if !ok {
			return limit, nil
		}
		if free >= minRoom || waited {
			return min(limit, max(free, minRoom)), nil
		}
		if err := waitWritable(wc); err != nil {
			return 0, err
		}
	}
}

// sendFree is dst's send buffer divided by share, less what it has
// queued.
func sendFree(wc syscall.RawConn, share int) (free int, ok bool) {
	wc.Control(func(fd uintptr) {
		sndbuf, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		if err != nil {
			return
		}
		queued, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		if err != nil {
			return
		}
		free, ok = sndbuf/share-queued, true
	})
	return free, ok
}

// readable returns how many bytes src holds for reading (SIOCINQ), 0 when
// unknown or at the end of the stream.
func readable(rc syscall.RawConn) int {
	n := 0
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}

// waitWritable parks until dst has room in its send buffer (or an error
// to report), without holding a buffer.
func waitWritable(wc syscall.RawConn) error {
	return wc.Write(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, 0)
		return err != nil || n > 0
	})
}

// waitReadable parks until src has bytes, EOF or an error to report,
// without holding a buffer. The first poll catches data that is already
// there (the runtime poller is edge triggered).
func waitReadable(rc interface {
	Read(func(uintptr) bool) error
}) error {
	return rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		n, err := unix.Poll(fds, 0)
		return err != nil || n > 0
	})
}
