package engine

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/sockinfo"
)

// fastOpenQueue is the TFO queue length of each listener: how many
// connections may hold SYN data before their handshake completes.
const fastOpenQueue = 4096

// Keepalive of the client legs, Go's defaults for accepted connections:
// a dead idle client is found after 15 s + 9 x 15 s.
const (
	clientKeepAlive       = 15 * time.Second
	clientKeepAliveProbes = 9
)

// tfoServerBit is the server bit of net.ipv4.tcp_fastopen: without it the
// kernel refuses data in SYNs whatever the socket options say.
const tfoServerBit = 0x2

// listen opens one client-facing listener: MPTCP explicitly on (plain TCP
// clients fall back transparently), TCP Fast Open with no cookie so that a
// Convert message in the SYN is accepted at once.
//
// A transparent listener (IP_TRANSPARENT) also takes SYNs addressed to
// other hosts that the steering program assigned to it, and answers them
// from the original destination.
func listen(ctx context.Context, addr string, transparent, freeBind bool) (*net.TCPListener, error) {
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
		opts := []sockopt{
			{unix.IPPROTO_TCP, unix.TCP_FASTOPEN, fastOpenQueue, "TCP_FASTOPEN"},
			{unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1, "TCP_FASTOPEN_NO_COOKIE"},
			// Accepted sockets inherit keepalive from their listener:
			// set once here, not four setsockopt calls per connection.
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(clientKeepAlive.Seconds()), "TCP_KEEPIDLE"},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(clientKeepAlive.Seconds()), "TCP_KEEPINTVL"},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, clientKeepAliveProbes, "TCP_KEEPCNT"},
		}
		if freeBind { // an address the node announces only once ready
			if network == "tcp4" {
				opts = append(opts, sockopt{unix.SOL_IP, unix.IP_FREEBIND, 1, "IP_FREEBIND"})
			} else {
				opts = append(opts, sockopt{unix.SOL_IPV6, unix.IPV6_FREEBIND, 1, "IPV6_FREEBIND"})
			}
		}
		if transparent {
			if network == "tcp4" {
				opts = append(opts, sockopt{unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"})
			} else {
				opts = append(opts, sockopt{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT"})
			}
		}
		return setSockopts(c, opts)
	}}
	lc.KeepAlive = -1 // set on the listener above
	lc.SetMultipathTCP(true)
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	tl := l.(*net.TCPListener)
	// Go quietly falls back to plain TCP when the kernel refuses an MPTCP
	// socket; a converter without MPTCP is no converter, so say so.
	if !sockinfo.IsMPTCP(tl) {
		tl.Close()
		return nil, fmt.Errorf("listen on %s: the kernel gave a plain TCP socket: MPTCP is unavailable (is net.mptcp.enabled=1 in this network namespace?)", addr)
	}
	return tl, nil
}

// CheckKernel reports what stops this network namespace from accepting
// Convert messages in SYNs.
func CheckKernel() error {
	v, err := readSysctl("net/ipv4/tcp_fastopen")
	if err != nil {
		return fmt.Errorf("read net.ipv4.tcp_fastopen: %w", err)
	}
	if v&tfoServerBit == 0 {
		return fmt.Errorf("net.ipv4.tcp_fastopen=%#x lacks the server bit 0x2, so data in SYNs would be refused: run sysctl -w net.ipv4.tcp_fastopen=%d", v, v|tfoServerBit|0x1)
	}
	m, err := readSysctl("net/mptcp/enabled")
	if err != nil {
		return fmt.Errorf("read net.mptcp.enabled (kernel without MPTCP?): %w", err)
	}
	if m == 0 {
		return fmt.Errorf("net.mptcp.enabled=0: run sysctl -w net.mptcp.enabled=1")
	}
	return nil
}

func readSysctl(name string) (int, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %q: %w", s, err)
	}
	return int(v), nil
}

type sockopt struct {
	level, opt, value int
	name              string
}

func setSockopts(c syscall.RawConn, opts []sockopt) error {
	var err error
	ctlErr := c.Control(func(fd uintptr) {
		for _, o := range opts {
			if e := unix.SetsockoptInt(int(fd), o.level, o.opt, o.value); e != nil {
				err = fmt.Errorf("setsockopt(%s, %d): %w", o.name, o.value, e)
				return
			}
		}
	})
	if ctlErr != nil {
		return ctlErr
	}
	return err
}
