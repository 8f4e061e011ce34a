// Command repro reproduces the MPTCP + TCP Fast Open download stall of the
// passive side (see kernel/README.md): in two network namespaces of its own,
// joined by two veth pairs, an MPTCP client sends its request in the SYN
// (TFO without cookie), a second subflow joins on the second path, and the
// server (an MPTCP listener accepting TFO) sends -size bytes. An affected
// kernel overruns the client's receive window at the MPTCP level; the client
// drops the excess (MPTcpExtNoDSSInWindow) and the download stalls.
//
// It needs root and the ip command (iproute2). Build it static with
// CGO_ENABLED=0 so that it also runs in a minimal guest.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	mptcpInfo  = 1  // MPTCP_INFO, level SOL_MPTCP
	tcpIsMPTCP = 43 // TCP_IS_MPTCP, level SOL_TCP
	port       = 5000
	serverIP   = "10.0.1.1"
)

var (
	cliNS = fmt.Sprintf("repro-cli-%d", os.Getpid())
	srvNS = fmt.Sprintf("repro-srv-%d", os.Getpid())

	cleanupOnce sync.Once
)

func main() {
	n := flag.Int("n", 20, "number of downloads")
	size := flag.Int("size", 4<<20, "bytes per download")
	noTFO := flag.Bool("no-tfo", false, "control: plain connect, request sent after the handshake")
	stall := flag.Duration("stall", 500*time.Millisecond, "a download slower than this counts as a stall")
	cut := flag.Duration("cut", 3*time.Second, "abandon a download after this long")
	joinWait := flag.Duration("join-wait", time.Second, "how long the client waits for its second subflow")
	flag.Parse()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		cleanup()
		fmt.Fprintf(os.Stderr, "repro: %v, namespaces removed\n", s)
		os.Exit(130)
	}()
	defer cleanup()

	if err := run(*n, *size, *noTFO, *stall, *cut, *joinWait); err != nil {
		cleanup()
		fmt.Fprintf(os.Stderr, "repro: %v\n", err)
		os.Exit(1)
	}
}

func cleanup() {
	cleanupOnce.Do(func() {
		for _, ns := range []string{cliNS, srvNS} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inNS runs f on an OS thread that is in the named network namespace.
func inNS(name string, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime retires it with the goroutine.
		return fmt.Errorf("restoring the namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

func sysctl(ns, key, val string) error {
	return inNS(ns, func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(val), 0o644)
	})
}

// netstat returns the counters of /proc/net/netstat in namespace ns, keyed
// like nstat (MPTcpExtNoDSSInWindow).
func netstat(ns string) (map[string]int64, error) {
	m := map[string]int64{}
	err := inNS(ns, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(keys) != len(vals) || len(keys) == 0 {
				continue
			}
			prefix := strings.TrimSuffix(keys[0], ":")
			for j := 1; j < len(keys); j++ {
				v, _ := strconv.ParseInt(vals[j], 10, 64)
				m[prefix+keys[j]] = v
			}
		}
		return nil
	})
	return m, err
}

func setup(tfo bool) error {
	steps := [][]string{
		{"netns", "add", cliNS},
		{"netns", "add", srvNS},
		{"link", "add", "c1", "netns", cliNS, "type", "veth", "peer", "name", "s1", "netns", srvNS},
		{"link", "add", "c2", "netns", cliNS, "type", "veth", "peer", "name", "s2", "netns", srvNS},
		{"-n", cliNS, "addr", "add", "10.0.1.2/24", "dev", "c1"},
		{"-n", cliNS, "addr", "add", "10.0.2.2/24", "dev", "c2"},
		{"-n", srvNS, "addr", "add", serverIP + "/24", "dev", "s1"},
		{"-n", srvNS, "addr", "add", "10.0.2.1/24", "dev", "s2"},
	}
	for _, l := range []struct{ ns, dev string }{{cliNS, "lo"}, {cliNS, "c1"}, {cliNS, "c2"}, {srvNS, "lo"}, {srvNS, "s1"}, {srvNS, "s2"}} {
		steps = append(steps, []string{"-n", l.ns, "link", "set", l.dev, "up"})
	}
	steps = append(steps,
		// The second path: traffic from 10.0.2.2 leaves through c2 and
		// reaches the server's address on its second interface.
		[]string{"-n", cliNS, "rule", "add", "from", "10.0.2.2", "table", "102"},
		[]string{"-n", cliNS, "route", "add", "default", "via", "10.0.2.1", "dev", "c2", "table", "102"},
		[]string{"-n", cliNS, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"},
		[]string{"-n", srvNS, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2"},
		[]string{"-n", cliNS, "mptcp", "endpoint", "add", "10.0.2.2", "dev", "c2", "subflow"},
	)
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	cliTFO := "0x5" // client, data in the SYN without a cookie
	if !tfo {
		cliTFO = "0x1"
	}
	for _, s := range []struct{ ns, key, val string }{
		{cliNS, "net.mptcp.enabled", "1"},
		{srvNS, "net.mptcp.enabled", "1"},
		{cliNS, "net.ipv4.tcp_fastopen", cliTFO},
		{srvNS, "net.ipv4.tcp_fastopen", "0x203"}, // server, no cookie needed
		{cliNS, "net.ipv4.conf.all.rp_filter", "0"},
		{srvNS, "net.ipv4.conf.all.rp_filter", "0"},
	} {
		if err := sysctl(s.ns, s.key, s.val); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", s.key, s.val, s.ns, err)
		}
	}
	return nil
}

// mptcpSocket creates an MPTCP socket in namespace ns.
func mptcpSocket(ns string) (int, error) {
	fd := -1
	err := inNS(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
		if err != nil {
			return fmt.Errorf("MPTCP socket: %w (is net.mptcp.enabled set, CONFIG_MPTCP built?)", err)
		}
		return nil
	})
	return fd, err
}

func listen() (net.Listener, error) {
	fd, err := mptcpSocket(srvNS)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 64); err != nil {
		return nil, fmt.Errorf("TCP_FASTOPEN on the listener: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_FASTOPEN_NO_COOKIE, 1); err != nil {
		fmt.Fprintf(os.Stderr, "repro: TCP_FASTOPEN_NO_COOKIE on the listener: %v (relying on tcp_fastopen=0x203)\n", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{10, 0, 1, 1}}); err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 64); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return net.FileListener(f)
}

// serve answers each connection: it reads the 3-byte request (in the SYN
// with TFO), answers one byte (which lets the client's connection become
// fully established, so that its path manager adds the second subflow),
// waits for the client's 1-byte go, then sends payload and closes.
func serve(l net.Listener, payload []byte) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			defer c.Close()
			var b [3]byte
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, b[:3]); err != nil {
				return
			}
			if _, err := c.Write([]byte("R")); err != nil {
				return
			}
			if _, err := io.ReadFull(c, b[:1]); err != nil {
				return
			}
			_, _ = c.Write(payload)
		}(c)
	}
}

func getsockoptBytes(fd, level, opt int, buf []byte) (int, error) {
	l := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return int(l), nil
}

// subflows returns mptcpi_subflows (the additional subflows) of an MPTCP socket.
func subflows(fd int) int {
	var buf [256]byte
	l, err := getsockoptBytes(fd, unix.SOL_MPTCP, mptcpInfo, buf[:])
	if err != nil || l < 1 {
		return 0
	}
	return int(buf[0])
}

type result struct {
	d       time.Duration
	cut     bool
	joined  int
	mptcp   bool
	errText string
}

func download(tfo bool, size int, sum [32]byte, cut, joinWait time.Duration) result {
	var r result
	fd, err := mptcpSocket(cliNS)
	if err != nil {
		r.errText = err.Error()
		return r
	}
	sa := &unix.SockaddrInet4{Port: port, Addr: [4]byte{10, 0, 1, 1}}
	req := []byte("GET")
	if tfo {
		// Blocks until the handshake completes; "GET" rides in the SYN.
		err = unix.Sendto(fd, req, unix.MSG_FASTOPEN, sa)
	} else {
		if err = unix.Connect(fd, sa); err == nil {
			_, err = unix.Write(fd, req)
		}
	}
	if err != nil {
		unix.Close(fd)
		r.errText = "connect: " + err.Error()
		return r
	}
	f := os.NewFile(uintptr(fd), "client")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		r.errText = err.Error()
		return r
	}
	defer c.Close()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		r.errText = err.Error()
		return r
	}
	sockopt := func(g func(fd int)) { _ = rc.Control(func(fd uintptr) { g(int(fd)) }) }
	// The server's 1-byte answer makes the connection fully established
	// at the MPTCP level; then the client's path manager adds the join.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ready [1]byte
	if _, err := io.ReadFull(c, ready[:]); err != nil {
		r.errText = "reading the server's answer: " + err.Error()
		return r
	}
	deadline := time.Now().Add(joinWait)
	for {
		sockopt(func(fd int) { r.joined = subflows(fd) })
		if r.joined > 0 || !time.Now().Before(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	sockopt(func(fd int) {
		if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, tcpIsMPTCP); err == nil {
			r.mptcp = v == 1
		}
	})
	start := time.Now()
	if _, err := c.Write([]byte("G")); err != nil {
		r.errText = "write: " + err.Error()
		return r
	}
	_ = c.SetReadDeadline(start.Add(cut))
	h := sha256.New()
	got, err := io.Copy(h, c)
	r.d = time.Since(start)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		r.cut = true
	case err != nil:
		r.errText = "read: " + err.Error()
	case got != int64(size):
		r.errText = fmt.Sprintf("got %d of %d bytes", got, size)
	case !bytes.Equal(h.Sum(nil), sum[:]):
		r.errText = "payload hash mismatch"
	}
	return r
}

func run(n, size int, noTFO bool, stall, cut, joinWait time.Duration) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	tfo := !noTFO
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Printf("kernel %s; %d downloads of %d bytes; tfo=%v; stall > %v, cut at %v\n",
		unix.ByteSliceToString(uts.Release[:]), n, size, tfo, stall, cut)

	if err := setup(tfo); err != nil {
		return err
	}
	payload := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(payload)
	sum := sha256.Sum256(payload)
	l, err := listen()
	if err != nil {
		return err
	}
	defer l.Close()
	go serve(l, payload)

	cli0, err := netstat(cliNS)
	if err != nil {
		return err
	}
	srv0, err := netstat(srvNS)
	if err != nil {
		return err
	}

	var times []float64
	stalled, cuts, joined, fallbacks, failed, dropping := 0, 0, 0, 0, 0, 0
	for i := 1; i <= n; i++ {
		before, err := netstat(cliNS)
		if err != nil {
			return err
		}
		r := download(tfo, size, sum, cut, joinWait)
		after, err := netstat(cliNS)
		if err != nil {
			return err
		}
		// Data the client dropped at the MPTCP level as out of its window:
		// the direct signature of the fault, whatever the machine's speed.
		drops := after["MPTcpExtNoDSSInWindow"] - before["MPTcpExtNoDSSInWindow"]
		if drops > 0 {
			dropping++
		}
		ms := float64(r.d.Microseconds()) / 1000
		note := ""
		switch {
		case r.errText != "":
			failed++
			note = "ERROR " + r.errText
		case r.cut:
			stalled++
			cuts++
			note = "STALL (cut)"
		case r.d > stall:
			stalled++
			note = "STALL"
		}
		if r.joined > 0 {
			joined++
		}
		if !r.mptcp {
			fallbacks++
		}
		if r.errText == "" {
			times = append(times, ms)
		}
		fmt.Printf("download %2d: %9.1f ms  subflows+%d  mptcp=%v  out-of-window drops %4d  %s\n", i, ms, r.joined, r.mptcp, drops, note)
		time.Sleep(20 * time.Millisecond)
	}

	cli1, err := netstat(cliNS)
	if err != nil {
		return err
	}
	srv1, err := netstat(srvNS)
	if err != nil {
		return err
	}
	d := func(a, b map[string]int64, k string) int64 { return b[k] - a[k] }
	sort.Float64s(times)
	med, slowest := 0.0, 0.0
	if len(times) > 0 {
		med, slowest = times[len(times)/2], times[len(times)-1]
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "counters: client MPTcpExtNoDSSInWindow +%d, TcpExtTCPZeroWindowDrop +%d, TcpExtTCPFastOpenActive +%d; server TcpExtTCPFastOpenPassive +%d, MPTcpExtMPTCPRetrans +%d, MPTcpExtMPJoinAckRx +%d\n",
		d(cli0, cli1, "MPTcpExtNoDSSInWindow"), d(cli0, cli1, "TcpExtTCPZeroWindowDrop"),
		d(cli0, cli1, "TcpExtTCPFastOpenActive"), d(srv0, srv1, "TcpExtTCPFastOpenPassive"),
		d(srv0, srv1, "MPTcpExtMPTCPRetrans"), d(srv0, srv1, "MPTcpExtMPJoinAckRx"))
	fmt.Fprintf(w, "stalled %d/%d (> %v; cut at %v: %d; errors %d), median %.1f ms, max %.1f ms, joined %d/%d, fallback %d, tfo=%v, MPTcpExtNoDSSInWindow +%d in %d/%d downloads\n",
		stalled, n, stall, cut, cuts, failed, med, slowest, joined, n, fallbacks, tfo, d(cli0, cli1, "MPTcpExtNoDSSInWindow"), dropping, n)
	if failed > 0 {
		w.Flush()
		return fmt.Errorf("%d downloads failed", failed)
	}
	return nil
}
