package mptcpevents

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Names of the family and its event group (MPTCP_PM_NAME and
// MPTCP_PM_EV_GRP_NAME); their numbers are assigned at boot and resolved
// through the generic netlink controller.
const (
	familyName = "mptcp_pm"
	groupName  = "mptcp_pm_events"
)

// defaultReadBuffer holds bursts of events: one connection with two
// subflows makes about five ~100-byte messages, and a busy converter opens
// thousands of connections per second.
const defaultReadBuffer = 8 << 20

// Config tunes Listen. The zero value is ready to use.
type Config struct {
	// NetNS, when not zero, is a file descriptor of the network namespace
	// to listen in. Zero means the namespace of the calling thread: call
	// Listen from a thread locked into the right namespace.
	NetNS int
	// ReadBuffer is the socket receive buffer in bytes; 0 means 8 MiB.
	// When it fills, the kernel drops events and the Listener reports an
	// Overflow.
	ReadBuffer int
}

// Stats counts what a Listener saw.
type Stats struct {
	Events    uint64 `json:"events"`
	Overflows uint64 `json:"overflows"`
	Malformed uint64 `json:"malformed"`
}

// Listener receives the MPTCP path-manager events of one network
// namespace. Run it from one goroutine; Close may be called from any.
type Listener struct {
	conn                         *genetlink.Conn
	familyID                     uint16
	events, overflows, malformed atomic.Uint64
}

// Listen opens a netlink socket, resolves the mptcp_pm family and joins its
// event group. It needs CAP_NET_ADMIN and a kernel with MPTCP.
func Listen(cfg *Config) (*Listener, error) {
	if cfg == nil {
		cfg = &Config{}
	}
	conn, err := genetlink.Dial(&netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, fmt.Errorf("open generic netlink socket: %w", err)
	}
	l, err := subscribe(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return l, nil
}

func subscribe(conn *genetlink.Conn, cfg *Config) (*Listener, error) {
	fam, err := conn.GetFamily(familyName)
	if err != nil {
		return nil, fmt.Errorf("resolve generic netlink family %s (kernel without MPTCP?): %w", familyName, err)
	}
	group, ok := findGroup(fam, groupName)
	if !ok {
		return nil, fmt.Errorf("generic netlink family %s has no multicast group %s", familyName, groupName)
	}
	size := cfg.ReadBuffer
	if size <= 0 {
		size = defaultReadBuffer
	}
	if err := setReadBuffer(conn, size); err != nil {
		return nil, err
	}
	if err := conn.JoinGroup(group); err != nil {
		return nil, fmt.Errorf("join multicast group %s/%s (id %d; needs CAP_NET_ADMIN): %w", familyName, groupName, group, err)
	}
	return &Listener{conn: conn, familyID: fam.ID}, nil
}

func findGroup(f genetlink.Family, name string) (uint32, bool) {
	for _, g := range f.Groups {
		if g.Name == name {
			return g.ID, true
		}
	}
	return 0, false
}

// setReadBuffer tries SO_RCVBUFFORCE, which may exceed net.core.rmem_max
// but needs CAP_NET_ADMIN, then SO_RCVBUF, which the kernel caps.
func setReadBuffer(conn *genetlink.Conn, size int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr == nil {
		return nil
	}
	if err := conn.SetReadBuffer(size); err != nil {
		return fmt.Errorf("set netlink receive buffer to %d bytes: %w", size, err)
	}
	return nil
}

// Run calls fn for every event until ctx ends (it then returns nil) or the
// socket fails. fn runs on Run's goroutine, in the kernel's order; a slow
// fn makes the kernel drop events, which Run reports as an Overflow event.
// Messages that do not decode are skipped and counted in Stats.
func (l *Listener) Run(ctx context.Context, fn func(Event)) error {
	// A past deadline wakes the blocked receive when ctx ends; clear the
	// one an earlier Run may have left.
	if err := l.conn.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("receive mptcp_pm events: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { l.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := l.conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("receive mptcp_pm events: %w", err)
	}
	// One recvfrom per datagram into one buffer: the library's Receive
	// peeks first and allocates a page per message, which at thousands
	// of connections per second was an eighth of the daemon's CPU.
	buf := make([]byte, 64<<10)
	for {
		n, err := receive(rc, buf)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.ENOBUFS):
			l.overflows.Add(1)
			fn(Event{Type: Overflow})
			continue
		case err != nil:
			return fmt.Errorf("receive mptcp_pm events: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			l.malformed.Add(1)
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != l.familyID {
				continue
			}
			// The generic netlink header: command, version, reserved.
			if len(m.Data) < 4 {
				l.malformed.Add(1)
				continue
			}
			ev, err := Decode(m.Data[0], m.Data[4:])
			if err != nil {
				l.malformed.Add(1)
				continue
			}
			l.events.Add(1)
			fn(ev)
		}
	}
}

// receive reads one datagram, waiting in the runtime's poller (and so
// within the socket's read deadline).
func receive(rc syscall.RawConn, buf []byte) (int, error) {
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// Stats returns the counts so far.
func (l *Listener) Stats() Stats {
	return Stats{Events: l.events.Load(), Overflows: l.overflows.Load(), Malformed: l.malformed.Load()}
}

// Close closes the socket; a running Run returns an error.
func (l *Listener) Close() error { return l.conn.Close() }

// Subscribe opens a Listener and delivers its events on a channel until
// ctx ends or the socket fails; the channel is then closed. The channel is
// buffered; a consumer that falls behind gets an Overflow event.
func Subscribe(ctx context.Context, cfg *Config) (<-chan Event, error) {
	l, err := Listen(cfg)
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, 1024)
	go func() {
		defer close(ch)
		defer l.Close()
		_ = l.Run(ctx, func(ev Event) {
			select {
			case ch <- ev:
			case <-ctx.Done():
			}
		})
	}()
	return ch, nil
}
