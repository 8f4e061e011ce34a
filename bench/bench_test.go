package bench

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "1": 1, "65536": 65536, "64M": 64 << 20, "1G": 1 << 30, "1g": 1 << 30,
		"1GiB": 1 << 30, "2GB": 2 << 30, "512k": 512 << 10, "3T": 3 << 40, "100B": 100, " 8K ": 8 << 10,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "B", "G", "-1", "1.5G", "1X", "1 G B", "9999999999T", "0x10"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
	for _, n := range []int64{1, 1000, 1 << 10, 3 << 20, 2 << 30, 5 << 40} {
		if got, err := ParseSize(FormatSize(n)); err != nil || got != n {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), got, err)
		}
	}
}

func TestHistogram(t *testing.T) {
	// Buckets are contiguous and their middles increase.
	for v := uint64(0); v < 1<<20; v++ {
		b := bucketOf(v)
		if b2 := bucketOf(v + 1); b2 != b && b2 != b+1 {
			t.Fatalf("bucketOf(%d)=%d, bucketOf(%d)=%d: not contiguous", v, b, v+1, b2)
		}
		if got := bucketValue(b); got > v+v/128+1 || got+got/128+1 < v {
			t.Fatalf("bucketValue(bucketOf(%d)) = %d: more than 1%% off", v, got)
		}
	}
	if b := bucketOf(^uint64(0)); b >= histBuckets {
		t.Fatalf("bucketOf(max) = %d, beyond %d buckets", b, histBuckets)
	}

	var h histogram
	if h.quantile(0.5) != 0 {
		t.Fatal("empty histogram: want 0")
	}
	// 1..10000 µs in random order: quantiles within 1%.
	for _, v := range rand.Perm(10000) {
		h.record(time.Duration(v+1) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.9, 0.99, 1} {
		want := q * 10000
		if got := float64(h.quantile(q)); got < want*0.99 || got > want*1.01 {
			t.Errorf("quantile(%v) = %v, want %v ±1%%", q, got, want)
		}
	}
	var m histogram
	m.record(time.Second)
	m.merge(&h)
	if m.n != 10001 || m.max != 1e6 || m.quantile(1) != 1e6 {
		t.Errorf("merge: n %d max %d q1 %d", m.n, m.max, m.quantile(1))
	}
}

func TestEchoRequest(t *testing.T) {
	for _, size := range []int{MinRequestSize, 64, 1500, MaxRequestSize} {
		b, err := newEchoRequest(size)
		if err != nil || len(b) != size || b[0] != opEcho || int(uint24(b[1:4])) != size {
			t.Errorf("newEchoRequest(%d): len %d, header %x, %v", size, len(b), b[:min(4, len(b))], err)
		}
	}
	for _, size := range []int{0, 3, MaxRequestSize + 1} {
		if _, err := newEchoRequest(size); err == nil {
			t.Errorf("newEchoRequest(%d): want an error", size)
		}
	}
}

// --- live sockets -----------------------------------------------------

// mptcpReason says why MPTCP cannot be used here, or "".
func mptcpReason() string {
	if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err != nil || strings.TrimSpace(string(b)) != "1" {
		return "net.mptcp.enabled is not 1"
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
	if err != nil {
		return "socket(IPPROTO_MPTCP): " + err.Error()
	}
	unix.Close(fd)
	return ""
}

// forTransports runs f over plain TCP and, when the kernel has it, MPTCP.
func forTransports(t *testing.T, f func(t *testing.T, mptcp bool)) {
	t.Run("tcp", func(t *testing.T) { f(t, false) })
	t.Run("mptcp", func(t *testing.T) {
		if r := mptcpReason(); r != "" {
			if os.Getenv("CI") != "" {
				t.Fatalf("MPTCP unavailable in CI: %s", r)
			}
			t.Skipf("MPTCP unavailable: %s", r)
		}
		f(t, true)
	})
}

// startServer runs a bench server on loopback until the test ends.
func startServer(t *testing.T) string {
	t.Helper()
	l, err := Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return l.Addr().String()
}

func TestThroughput(t *testing.T) {
	forTransports(t, func(t *testing.T, mptcp bool) {
		addr := startServer(t)
		for _, tc := range []struct {
			streams int
			bytes   int64
		}{{1, 1}, {1, 1000}, {1, 64<<20 + 12345}, {3, 8<<20 + 1}} {
			cfg := ThroughputConfig{Target: Target{Dest: addr, MPTCP: mptcp}, Streams: tc.streams, Bytes: tc.bytes, Timeout: 10 * time.Second}
			res, err := Throughput(t.Context(), cfg)
			if err != nil {
				t.Fatalf("%d x %d bytes: %v", tc.streams, tc.bytes, err)
			}
			if res.Mode != "throughput" || res.Bytes != tc.bytes*int64(tc.streams) || res.Streams != tc.streams ||
				res.Seconds <= 0 || res.BitsPerSecond <= 0 || res.Route != "direct" {
				t.Errorf("%d x %d bytes: %+v", tc.streams, tc.bytes, res)
			}
			if res.Direction != Up || res.Up == nil || *res.Up != (Transfer{res.Bytes, res.Seconds, res.BitsPerSecond}) || res.Down != nil || res.SynData != nil {
				t.Errorf("%d x %d bytes: direction %q, up %+v, down %+v, syn data %v; want up only, as the totals", tc.streams, tc.bytes, res.Direction, res.Up, res.Down, res.SynData)
			}
			checkSubflows(t, mptcp, res)
		}
	})
}

func checkSubflows(t *testing.T, mptcp bool, res ThroughputResult) {
	t.Helper()
	if mptcp != (res.Subflows != nil) || res.MPTCP != mptcp {
		t.Errorf("mptcp %v: result mptcp %v, subflows %v", mptcp, res.MPTCP, res.Subflows)
	}
	if res.Subflows != nil && *res.Subflows < 1 {
		t.Errorf("subflows %d, want at least the initial one", *res.Subflows)
	}
}

func TestThroughputDirections(t *testing.T) {
	forTransports(t, func(t *testing.T, mptcp bool) {
		addr := startServer(t)
		for _, dir := range []Direction{Down, Both} {
			for _, tc := range []struct {
				streams int
				bytes   int64
			}{{1, 1}, {1, 1000}, {1, 64<<20 + 12345}, {3, 8<<20 + 1}} {
				cfg := ThroughputConfig{Target: Target{Dest: addr, MPTCP: mptcp}, Direction: dir, Streams: tc.streams, Bytes: tc.bytes, Timeout: 10 * time.Second}
				res, err := Throughput(t.Context(), cfg)
				if err != nil {
					t.Fatalf("%s %d x %d bytes: %v", dir, tc.streams, tc.bytes, err)
				}
				perDir := tc.bytes * int64(tc.streams)
				checkTransfer(t, "down", res.Down, perDir)
				if dir == Both {
					checkTransfer(t, "up", res.Up, perDir)
				} else if res.Up != nil {
					t.Errorf("down run with an up figure: %+v", res.Up)
				}
				want := perDir
				if dir == Both {
					want *= 2
				}
				if res.Direction != dir || res.Bytes != want || res.Seconds <= 0 || res.Route != "direct" ||
					res.BitsPerSecond != float64(want)*8/res.Seconds {
					t.Errorf("%s %d x %d bytes: %+v", dir, tc.streams, tc.bytes, res)
				}
				// The total runs to the last byte either way.
				for _, tr := range []*Transfer{res.Up, res.Down} {
					if tr != nil && tr.Seconds > res.Seconds {
						t.Errorf("%s: a direction took %v s, longer than the run's %v s", dir, tr.Seconds, res.Seconds)
					}
				}
				checkSubflows(t, mptcp, res)
			}
		}
	})
}

func checkTransfer(t *testing.T, name string, tr *Transfer, bytes int64) {
	t.Helper()
	if tr == nil {
		t.Errorf("%s: missing", name)
		return
	}
	if tr.Bytes != bytes || tr.Seconds <= 0 || tr.BitsPerSecond != float64(bytes)*8/tr.Seconds {
		t.Errorf("%s: %+v, want %d bytes", name, *tr, bytes)
	}
}

func TestParseDirection(t *testing.T) {
	for _, d := range []Direction{Up, Down, Both} {
		if got, err := ParseDirection(string(d)); got != d || err != nil {
			t.Errorf("ParseDirection(%q) = %q, %v", d, got, err)
		}
	}
	for _, s := range []string{"", "UP", "all", "sideways"} {
		if _, err := ParseDirection(s); err == nil {
			t.Errorf("ParseDirection(%q): want an error", s)
		}
	}
	_, err := Throughput(t.Context(), ThroughputConfig{Target: Target{Dest: "127.0.0.1:1"}, Direction: "sideways", Streams: 1, Bytes: 1, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "sideways") {
		t.Errorf("direction sideways: %v, want an error", err)
	}
}

func TestSynData(t *testing.T) {
	via := Target{Dest: "127.0.0.1:1", Via: mustAddrPort("127.0.0.1:5124")}
	if p := via.synData(); p == nil || !*p {
		t.Errorf("via: syn data %v, want true", p)
	}
	via.AfterHandshake = true
	if p := via.synData(); p == nil || *p {
		t.Errorf("via after the handshake: syn data %v, want false", p)
	}
	if p := (Target{Dest: "127.0.0.1:1", AfterHandshake: true}).synData(); p != nil {
		t.Errorf("direct: syn data %v, want none", *p)
	}
}

// TestSinkCount speaks the protocol by hand: the count is every byte.
func TestSinkCount(t *testing.T) {
	addr := startServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := append([]byte{opSink}, make([]byte, 99999)...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	ans, err := io.ReadAll(c)
	if err != nil || len(ans) != countLen || count(ans) != 100000 {
		t.Fatalf("answer %x, %v; want the count 100000 then EOF", ans, err)
	}
}

// TestSourceCount speaks the protocol by hand: the source sends exactly
// the count asked for, then its end of stream.
func TestSourceCount(t *testing.T) {
	addr := startServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(newCountHeader(opSource, 3<<20+7)); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.Copy(io.Discard, c)
	if err != nil || got != 3<<20+7 {
		t.Fatalf("read %d bytes, %v; want %d then EOF", got, err, 3<<20+7)
	}
}

// TestBothCount speaks the protocol by hand: the server's bytes, then its
// count of the client's bytes (the header excluded), then EOF.
func TestBothCount(t *testing.T) {
	addr := startServer(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := append(newCountHeader(opBoth, 3000), make([]byte, 5000)...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	ans, err := io.ReadAll(c)
	if err != nil || len(ans) != 3000+countLen || count(ans[3000:]) != 5000 {
		t.Fatalf("answer of %d bytes, %v; want 3000 bytes, the count 5000, then EOF", len(ans), err)
	}
}

// startFakeServer runs serve on every connection of a loopback listener
// until the test ends: a server that breaks the protocol.
func startFakeServer(t *testing.T, serve func(c *net.TCPConn, n int64)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				hdr := make([]byte, countHeaderLen)
				if _, err := io.ReadFull(c, hdr); err == nil {
					serve(c.(*net.TCPConn), int64(count(hdr[1:])))
				}
			}()
		}
	}()
	return l.Addr().String()
}

// TestThroughputBadServer checks that a server sending too few or too many
// bytes, or miscounting, fails the run.
func TestThroughputBadServer(t *testing.T) {
	src := make([]byte, writeLen)
	// sendAndCount writes k bytes, reads the client's bytes to EOF and
	// answers count(read) + off.
	sendAndCount := func(extra int64, off uint64) func(c *net.TCPConn, n int64) {
		return func(c *net.TCPConn, n int64) {
			if writeN(c, src, n+extra, 0) != nil {
				return
			}
			got, err := drain(c)
			if err == nil {
				answerCount(c, got+off)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		dir   Direction
		serve func(c *net.TCPConn, n int64)
		want  string
	}{
		{"short download", Down, func(c *net.TCPConn, n int64) { writeN(c, src, n-1, 0) }, "the server sent"},
		{"long download", Down, func(c *net.TCPConn, n int64) { writeN(c, src, n+1, 0) }, "more bytes"},
		{"download without end", Down, func(c *net.TCPConn, n int64) { writeN(c, src, n, 0); drain(c) }, "timeout"},
		{"short both", Both, sendAndCount(-1, 0), "count"},
		{"long both", Both, sendAndCount(1, 0), "sink counted"},
		{"miscounted both", Both, sendAndCount(0, 1), "sink counted"},
		{"silent both", Both, func(c *net.TCPConn, n int64) { drain(c) }, "the server sent 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startFakeServer(t, tc.serve)
			cfg := ThroughputConfig{Target: Target{Dest: addr}, Direction: tc.dir, Streams: 2, Bytes: 3<<20 + 5, Timeout: 500 * time.Millisecond}
			_, err := Throughput(t.Context(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v; want an error with %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}

func TestConnect(t *testing.T) {
	forTransports(t, func(t *testing.T, mptcp bool) {
		addr := startServer(t)
		for _, size := range []int{MinRequestSize, 64, 4000} {
			cfg := ConnectConfig{Target: Target{Dest: addr, MPTCP: mptcp}, Duration: 300 * time.Millisecond, Concurrency: 4, RequestSize: size, Timeout: 5 * time.Second}
			res, err := Connect(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			l := res.LatencyUS
			if res.Mode != "connect" || res.Connections <= 0 || res.Errors != 0 || res.ConnectionsPerSecond <= 0 ||
				l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max || l.Max == 0 || res.RequestSize != size {
				t.Errorf("size %d: %+v", size, res)
			}
		}
	})
}

func TestConnectErrors(t *testing.T) {
	// A listener that closes every connection at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cfg := ConnectConfig{Target: Target{Dest: l.Addr().String()}, Duration: 200 * time.Millisecond, Concurrency: 2, RequestSize: 64, Timeout: time.Second}
	res, err := Connect(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Connections != 0 || res.Errors == 0 || res.FirstError == "" {
		t.Errorf("want only errors, got %+v", res)
	}
}

func TestIdle(t *testing.T) {
	forTransports(t, func(t *testing.T, mptcp bool) {
		addr := startServer(t)
		var opened atomic.Int64
		cfg := IdleConfig{
			Target: Target{Dest: addr, MPTCP: mptcp}, Count: 100, Hold: 100 * time.Millisecond, Concurrency: 8, Timeout: 5 * time.Second,
			Opened: func(open, failed int) { opened.Store(int64(open)) },
		}
		res, err := Idle(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if res.Connections != 100 || res.Errors != 0 || res.Alive != 100 || opened.Load() != 100 || res.HoldSeconds < 0.1 {
			t.Errorf("%+v (opened %d)", res, opened.Load())
		}
	})
}

// TestProxy checks that --proxy connects to the proxy, whatever Dest says.
func TestProxy(t *testing.T) {
	addr := startServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var proxied atomic.Int64
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			proxied.Add(1)
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer s.Close()
				go func() {
					io.Copy(s, c)
					s.(*net.TCPConn).CloseWrite()
				}()
				io.Copy(c, s)
			}()
		}
	}()
	target := Target{Dest: "192.0.2.1:9", Proxy: l.Addr().String()}
	res, err := Throughput(t.Context(), ThroughputConfig{Target: target, Streams: 2, Bytes: 1 << 20, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Route != "proxy" || proxied.Load() != 2 {
		t.Errorf("route %s, %d connections through the proxy; want proxy, 2", res.Route, proxied.Load())
	}
	// Both ways at once, through a relay that forwards each half-close.
	for _, dir := range []Direction{Down, Both} {
		res, err = Throughput(t.Context(), ThroughputConfig{Target: target, Direction: dir, Streams: 2, Bytes: 1 << 20, Timeout: 5 * time.Second})
		if err != nil || res.Down == nil || res.Down.Bytes != 2<<20 {
			t.Errorf("%s through the proxy: %+v, %v", dir, res, err)
		}
	}
}

func TestServerUnknownOp(t *testing.T) {
	addr := startServer(t)
	for _, msg := range [][]byte{{'X'}, {opEcho, 0, 0, 1}, {opEcho, 0x10, 0, 1}} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(msg)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
			t.Errorf("%x: got %x, %v; want a close", msg, b, err)
		}
		c.Close()
	}
}

// TestServeStops checks that cancelling Serve closes idle connections.
func TestServeStops(t *testing.T) {
	l, err := Listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l) }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // let Serve take it
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running")
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection after stop: %v, want EOF", err)
	}
}

func TestTargetErrors(t *testing.T) {
	for _, tg := range []Target{
		{},
		{Dest: "example.net:80", Via: mustAddrPort("127.0.0.1:5124")},
		{Dest: "127.0.0.1:80", Via: mustAddrPort("127.0.0.1:5124"), Proxy: "127.0.0.1:7000"},
	} {
		if _, err := tg.dialer(); err == nil {
			t.Errorf("%+v: want an error", tg)
		}
	}
	_, err := Throughput(t.Context(), ThroughputConfig{Target: Target{Dest: "127.0.0.1:1"}, Streams: 0, Bytes: 1, Timeout: time.Second})
	if err == nil {
		t.Error("0 streams: want an error")
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
