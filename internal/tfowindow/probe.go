// Package tfowindow detects a Linux MPTCP fault on the passive side of
// connections whose SYN carried TCP Fast Open data, which is every Convert
// client's connection. The kernel builds the child socket from the SYN and
// shifts the SYN's window by the client's window scale (wrong for a SYN);
// the MPTCP socket's send window edge (msk->wnd_end) is taken from that
// value before TCP corrects it, and it only ever grows. The MPTCP level
// then sends up to 2^14 times past the client's real receive window; once
// a second subflow joins, the client drops the excess as out of window
// (MPTcpExtNoDSSInWindow) and only the MPTCP retransmission timer recovers
// it, 32 KiB per 200 ms: a 4 MiB download takes 5 to 30 s.
//
// Probe measures the fault in a private network namespace; the daemon
// answers it with the synwin eBPF program (bpf/synwin.c), which lowers the
// window of Convert SYNs so that the wrong shift lands within the window
// the client offered. kernel/ holds the kernel fix.
package tfowindow

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

// Verdict is what Probe measured: how far the MPTCP level of a passive
// socket sent into a receiver that does not read, with and without data
// in the SYN. A right kernel stops both at the receiver's window; the
// faulty one sends on with SYN data, up to what the subflow takes.
type Verdict struct {
	Faulty bool
	// SentWithSYNData and SentWithout are the bytes the MPTCP level handed
	// to its subflow (mptcpi_bytes_sent) once the receiver's window was
	// full.
	SentWithSYNData, SentWithout uint64
	// Window is the receiver's advertised window on the SYN-data run.
	Window uint32
}

func (v Verdict) String() string {
	return fmt.Sprintf("faulty=%v sent_with_syn_data=%d sent_without=%d window=%d",
		v.Faulty, v.SentWithSYNData, v.SentWithout, v.Window)
}

// probeWrite is what the probe's server tries to write, far more than a
// receiver's initial window, and probeSettle how long it lets the
// kernel push before reading its counters.
const (
	probeWrite  = 8 << 20
	probeSettle = 150 * time.Millisecond
)

// ErrNoFastOpen is returned by Probe when the kernel would not accept
// data in an MPTCP SYN at all: there is then nothing to work around.
var ErrNoFastOpen = errors.New("the kernel did not accept data in an MPTCP SYN")

// Setup prepares the private namespace before the probe's connections,
// on the probe's thread (attach a program to lo, say); the returned undo
// runs before the namespace goes.
type Setup func(lo int) (undo func(), err error)

// Probe runs the fault's signature in a private network namespace that
// lives only as long as the probe (its thread ends with it): an MPTCP
// listener with TCP Fast Open on loopback, a client that sends a Convert
// message in its SYN and then reads nothing, and the server writing far
// more than the client's window. setup, when not nil, runs first in that
// namespace with the index of its lo. It needs CAP_SYS_ADMIN (unshare)
// and CAP_NET_ADMIN; the caller's namespace is not touched.
func Probe(ctx context.Context, setup Setup) (Verdict, error) {
	type answer struct {
		v   Verdict
		err error
	}
	done := make(chan answer, 1)
	go func() {
		// The thread enters a namespace of its own and is never
		// unlocked: the runtime ends it with this goroutine.
		runtime.LockOSThread()
		v, err := probeInPrivateNetns(ctx, setup)
		done <- answer{v, err}
	}()
	select {
	case a := <-done:
		return a.v, a.err
	case <-ctx.Done():
		return Verdict{}, ctx.Err()
	}
}

func probeInPrivateNetns(ctx context.Context, setup Setup) (Verdict, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return Verdict{}, fmt.Errorf("unshare a private network namespace: %w", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return Verdict{}, fmt.Errorf("find lo in the private namespace: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return Verdict{}, fmt.Errorf("set lo up in the private namespace: %w", err)
	}
	// Client bit (0x1) and server bit (0x2); no cookie is asked for per
	// socket. This thread's /proc/sys/net is the private namespace's.
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_fastopen", []byte("3"), 0); err != nil {
		return Verdict{}, fmt.Errorf("enable TCP Fast Open in the private namespace: %w", err)
	}
	if setup != nil {
		undo, err := setup(lo.Attrs().Index)
		if err != nil {
			return Verdict{}, fmt.Errorf("probe setup: %w", err)
		}
		defer undo()
	}
	with, err := probeOnce(ctx, true)
	if err != nil {
		return Verdict{}, err
	}
	without, err := probeOnce(ctx, false)
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{SentWithSYNData: with.sent, SentWithout: without.sent, Window: with.window}
	// A right kernel stops both runs at the receiver's window (80 KiB on
	// 6.18); a faulty one hands the subflow what its send buffer takes
	// with SYN data (4 MiB on 6.18). Twice the control plus 64 KiB leaves
	// room for a window update racing the reading.
	v.Faulty = with.sent > 2*without.sent+64<<10
	return v, nil
}

type probeRun struct {
	sent   uint64
	window uint32
}

// probeOnce runs one connection on loopback; synData puts the client's
// first bytes in its SYN.
func probeOnce(ctx context.Context, synData bool) (probeRun, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setInts(c, [][2]int{{unix.TCP_FASTOPEN, 16}, {unix.TCP_FASTOPEN_NO_COOKIE, 1}})
	}}
	lc.SetMultipathTCP(true)
	l, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		return probeRun{}, fmt.Errorf("probe listener: %w", err)
	}
	defer l.Close()
	if !sockinfo.IsMPTCP(l.(*net.TCPListener)) {
		return probeRun{}, errors.New("probe listener: MPTCP is unavailable")
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		if !synData {
			return nil
		}
		return setInts(c, [][2]int{{unix.TCP_FASTOPEN_CONNECT, 1}, {unix.TCP_FASTOPEN_NO_COOKIE, 1}})
	}}
	d.SetMultipathTCP(true)
	cc, err := d.DialContext(ctx, "tcp4", l.Addr().String())
	if err != nil {
		return probeRun{}, fmt.Errorf("probe connect: %w", err)
	}
	defer cc.Close()
	if _, err := cc.Write(probeMessage()); err != nil {
		return probeRun{}, fmt.Errorf("probe client write: %w", err)
	}
	l.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	sc, err := l.(*net.TCPListener).AcceptTCP()
	if err != nil {
		return probeRun{}, fmt.Errorf("probe accept: %w", err)
	}
	defer sc.Close()
	if info, err := sockinfo.GetTCPInfo(sc); err != nil {
		return probeRun{}, fmt.Errorf("probe TCP_INFO: %w", err)
	} else if synData && !info.SynData() {
		return probeRun{}, ErrNoFastOpen
	}
	if err := sockinfo.WaitEstablished(ctx, sc); err != nil {
		return probeRun{}, fmt.Errorf("probe handshake: %w", err)
	}
	sc.SetWriteDeadline(time.Now().Add(probeSettle))
	sc.Write(make([]byte, probeWrite)) // ends at the deadline: the client reads nothing
	m, err := sockinfo.GetMPTCPInfo(sc)
	if err != nil {
		return probeRun{}, fmt.Errorf("probe MPTCP_INFO (did the connection fall back to TCP?): %w", err)
	}
	info, err := sockinfo.GetTCPInfo(sc)
	if err != nil {
		return probeRun{}, fmt.Errorf("probe TCP_INFO: %w", err)
	}
	return probeRun{sent: m.BytesSent, window: info.SndWnd}, nil
}

// probeMessage is what the probe's client sends first: a Convert message
// asking for Info, so that a program that acts on Convert SYNs only
// (bpf/synwin.c) acts on the probe's.
func probeMessage() []byte {
	b, err := tlv.EndMessage(tlv.AppendInfo(tlv.BeginMessage(nil)), 0)
	if err != nil {
		panic("tfowindow: encode the probe's Info message: " + err.Error())
	}
	return b
}

func setInts(c syscall.RawConn, opts [][2]int) error {
	var err error
	cerr := c.Control(func(fd uintptr) {
		for _, o := range opts {
			if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, o[0], o[1]); e != nil {
				err = fmt.Errorf("setsockopt(IPPROTO_TCP, %d): %w", o[0], e)
				return
			}
		}
	})
	return errors.Join(cerr, err)
}
