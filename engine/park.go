package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// parkAfter is how long a direction of the relay waits for bytes before
// it parks: its goroutine ends and its source socket joins the parker's
// epoll set, so that an idle session costs no goroutine stack, only its
// records. A byte wakes it in one epoll round. Short, so that a burst of
// sessions going idle holds few goroutines at once (the runtime keeps
// every goroutine descriptor it ever needed at one time); a session that
// speaks every so often parks and wakes for two epoll_ctl calls each time.
const parkAfter = 100 * time.Millisecond

// errParked ends a pump that parked.
var errParked = errors.New("parked")

// parker watches the sources of parked relay directions in one epoll set
// and resumes a direction when its source has bytes, an end or an error.
type parker struct {
	epfd int
	mu   sync.Mutex
	// parked holds the directions waiting, by the key in their epoll
	// event (a counter: fd numbers are reused).
	parked  map[uint64]*direction
	next    uint64
	stopped bool
}

// stop refuses further parking: Serve is about to wait for its
// goroutines, and nothing would wake a direction parked after.
func (p *parker) stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
}

func newParker() (*parker, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll for parked sessions: %w", err)
	}
	return &parker{epfd: fd, parked: make(map[uint64]*direction)}, nil
}

// park adds d's source; the caller holds d's session lock and the source
// is open.
func (p *parker) park(d *direction) error {
	var err error
	ctlErr := d.rawSrc.Control(func(fd uintptr) { err = p.parkFD(d, int(fd)) })
	return errors.Join(ctlErr, err)
}

// parkFD adds d with fd standing for its source (its socket's, or a
// duplicate while the session is detached); the caller holds d's
// session lock and fd is open.
func (p *parker) parkFD(d *direction, fd int) error {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return errors.New("park: the server is stopping")
	}
	p.next++
	key := p.next
	p.parked[key] = d
	p.mu.Unlock()
	d.key, d.fd = key, int32(fd)
	// The event's 64-bit data word is Fd and Pad together.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(key)), Pad: int32(uint32(key >> 32))}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.forget(key)
		return fmt.Errorf("park: %w", err)
	}
	return nil
}

// rebind makes fd stand for d's source in the set instead of the one
// parked; the caller holds d's session lock, both fds are open. On an
// error d stays parked as it was.
func (p *parker) rebind(d *direction, fd int) error {
	oldKey, oldFD := d.key, d.fd
	if err := p.parkFD(d, fd); err != nil {
		d.key, d.fd = oldKey, oldFD
		return err
	}
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(oldFD), nil)
	p.forget(oldKey)
	return nil
}

// unpark removes d's source from the set; the caller holds d's session
// lock and the source is still open (so its fd is still its own).
func (p *parker) unpark(d *direction) {
	if d.fd >= 0 { // once: a descriptor number may be someone else's later
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(d.fd), nil)
	}
	d.fd = -1
	p.forget(d.key)
}

func (p *parker) forget(key uint64) {
	p.mu.Lock()
	delete(p.parked, key)
	p.mu.Unlock()
}

// run waits for parked sources until ctx ends; wake resumes a direction
// in a goroutine of its own. Between waits it lets trim (if any) return
// the memory of sessions that just parked.
func (p *parker) run(ctx context.Context, wake func(*direction), trim func(parked int)) {
	events := make([]unix.EpollEvent, 128)
	for ctx.Err() == nil {
		if trim != nil {
			trim(p.parkedCount())
		}
		n, err := unix.EpollWait(p.epfd, events, 200)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			p.mu.Lock()
			d := p.parked[key]
			p.mu.Unlock()
			if d != nil {
				wake(d)
			}
		}
	}
}

// parkedCount is how many directions are parked.
func (p *parker) parkedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

func (p *parker) close() { unix.Close(p.epfd) }

// isParkTimeout tells a read deadline that passed from other errors.
func isParkTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
