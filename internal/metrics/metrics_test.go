package metrics

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/nat"
)

// loop is an engine on 127.0.0.1 whose server legs go to loopback
// servers, in-process (as engine/loopback_test.go does it).
type loop struct {
	t      testing.TB
	srv    *engine.Server
	via    netip.AddrPort
	dialTo map[netip.AddrPort]string
}

func newLoop(t testing.TB) *loop {
	t.Helper()
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	lp := &loop{t: t, via: l.Addr().(*net.TCPAddr).AddrPort(), dialTo: map[netip.AddrPort]string{}}
	srv, err := engine.New(engine.Config{
		Listeners:            []*net.TCPListener{l},
		AllowDestinations:    []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		Deny:                 []netip.Prefix{netip.MustParsePrefix("203.0.113.200/32")},
		HandshakeTimeout:     2 * time.Second,
		DrainTimeout:         200 * time.Millisecond,
		ShutdownDrain:        -1,
		MaxSessions:          5000,
		RatePerClient:        -1,
		MaxSessionsPerClient: 5000,
		MaxPendingPerClient:  5000,
		Dial: func(ctx context.Context, dest netip.AddrPort, early []byte) (*net.TCPConn, error) {
			addr, ok := lp.dialTo[dest]
			if !ok {
				return nil, syscall.ECONNREFUSED
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp4", addr)
			if err != nil {
				return nil, err
			}
			tc := c.(*net.TCPConn)
			if _, err := tc.Write(early); err != nil {
				tc.Close()
				return nil, err
			}
			return tc, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	lp.srv = srv
	return lp
}

// server starts a loopback server for dest running fn on each connection.
func (lp *loop) server(dest string, fn func(*net.TCPConn)) netip.AddrPort {
	l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		lp.t.Fatal(err)
	}
	lp.t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fn(c)
			}()
		}
	}()
	d := netip.MustParseAddrPort(dest)
	lp.dialTo[d] = l.Addr().String()
	return d
}

func (lp *loop) convert(dest netip.AddrPort, early []byte) (*client.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{Via: lp.via, Dest: dest}, early)
	if c != nil {
		lp.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// waitIdle waits until the engine serves no session.
func (lp *loop) waitIdle() {
	deadline := time.Now().Add(5 * time.Second)
	for lp.srv.Metrics().Active != 0 {
		if time.Now().After(deadline) {
			lp.t.Fatalf("%d sessions still active", lp.srv.Metrics().Active)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func echoConn(c *net.TCPConn) { io.Copy(c, c); c.CloseWrite() }

// scrape gathers reg into "name{l1=\"v1\",...}" -> value; a histogram
// gives name_count and name_sum.
func scrape(t testing.TB, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + labelString(m.GetLabel())
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[mf.GetName()+"_count"+labelString(m.GetLabel())] = float64(m.GetHistogram().GetSampleCount())
				out[mf.GetName()+"_sum"+labelString(m.GetLabel())] = m.GetHistogram().GetSampleSum()
			default:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

func labelString(ls []*dto.LabelPair) string {
	if len(ls) == 0 {
		return ""
	}
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

func TestEngineCounters(t *testing.T) {
	lp := newLoop(t)
	echo := lp.server("203.0.113.1:80", echoConn)
	// A server that reads the early bytes and resets: the relay's
	// server-to-client direction fails.
	reset := lp.server("203.0.113.2:80", func(c *net.TCPConn) {
		c.Read(make([]byte, 64))
		c.SetLinger(0)
	})
	reg := NewRegistry(Sources{Version: "test", Engine: lp.srv, Table: lp.srv.Table()})

	const sessions = 3
	early := []byte("early ")
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	for range sessions {
		c, err := lp.convert(echo, early)
		if err != nil {
			t.Fatal(err)
		}
		go func() { c.Write(payload); c.CloseWrite() }()
		got, err := io.ReadAll(c)
		if err != nil || len(got) != len(early)+len(payload) {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
		c.Close()
	}
	// Refused: Not Authorized (policy, before any connect) and
	// Connection Reset (the server leg's connect is refused).
	if _, err := lp.convert(netip.MustParseAddrPort("203.0.113.200:80"), nil); err == nil {
		t.Fatal("denied destination converted")
	}
	if _, err := lp.convert(netip.MustParseAddrPort("203.0.113.9:80"), nil); err == nil {
		t.Fatal("closed destination converted")
	}
	rc, err := lp.convert(reset, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	lp.waitIdle()

	// One session open: the gauges see it.
	open, err := lp.convert(echo, nil)
	if err != nil {
		t.Fatal(err)
	}
	open.Write([]byte("x"))
	io.ReadFull(open, make([]byte, 1))
	m := scrape(t, reg)
	for key, want := range map[string]float64{
		`converter_sessions{state="established"}`: 1,
		`converter_sessions{state="connecting"}`:  0,
		`converter_subflows_open`:                 1,
		`converter_sessions_active`:               1,
		`converter_pending_handshakes`:            0,
		`converter_transparent_listeners`:         0,
	} {
		if m[key] != want {
			t.Errorf("%s = %v, want %v", key, m[key], want)
		}
	}
	open.Close()
	lp.waitIdle()

	m = scrape(t, reg)
	st := lp.srv.Stats()
	converted := float64(sessions + 2) // the echo ones, the reset one, the open one
	accepted := converted + 2
	var acc float64
	for _, leg := range []string{"mptcp", "tcp"} {
		for _, msg := range []string{"syn", "after_handshake"} {
			acc += m[fmt.Sprintf(`converter_connections_accepted_total{client_leg=%q,convert_message=%q}`, leg, msg)]
		}
	}
	synData := m[`converter_connections_accepted_total{client_leg="tcp",convert_message="syn"}`] + m[`converter_connections_accepted_total{client_leg="mptcp",convert_message="syn"}`]
	if acc != accepted || synData != float64(st.SynData) {
		t.Errorf("accepted %v (with SYN data %v), want %v (%d)", acc, synData, accepted, st.SynData)
	}
	relayed := float64(sessions*(len(early)+len(payload)) + len("hello") + 1)
	for key, want := range map[string]float64{
		`converter_sessions_converted_total`:                                      converted,
		`converter_refusals_total{code="32",error="Not Authorized"}`:              1,
		`converter_refusals_total{code="96",error="Connection Reset"}`:            1,
		`converter_refusals_total{code="64",error="Resource Exceeded"}`:           0,
		`converter_server_connect_failures_total`:                                 1,
		`converter_relay_resets_total{direction="to_client"}`:                     1,
		`converter_relay_resets_total{direction="to_server"}`:                     0,
		`converter_relayed_bytes_total{client_leg="tcp",direction="to_server"}`:   relayed,
		`converter_relayed_bytes_total{client_leg="tcp",direction="to_client"}`:   relayed - float64(len("hello")),
		`converter_relayed_bytes_total{client_leg="mptcp",direction="to_server"}`: 0,
		// Every connect attempt but the policy refusal's.
		`converter_convert_syn_to_server_syn_seconds_count`: converted + 1,
		`converter_server_connect_seconds_count`:            converted,
		`converter_convert_syn_to_reply_seconds_count`:      converted,
		`converter_session_duration_seconds_count`:          converted,
		`converter_session_subflows_count`:                  0, // no MPTCP client leg on loopback
		`converter_sessions{state="established"}`:           0,
		`converter_sessions_active`:                         0,
		`converter_build_info{version="test"}`:              1,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	if m[`converter_session_duration_seconds_sum`] <= 0 || m[`converter_convert_syn_to_reply_seconds_sum`] <= 0 {
		t.Error("histogram sums are zero")
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// fakes for the sources without a kernel.
type fakeBPF map[string]uint64

func (f fakeBPF) Counters() (map[string]uint64, error) { return f, nil }

type fakePool nat.Stats

func (f fakePool) Stats() nat.Stats { return nat.Stats(f) }

type fakeControl int

func (f fakeControl) Clients() int { return int(f) }

const netstatSample = `TcpExt: SyncookiesSent SyncookiesRecv
TcpExt: 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPJoinSynRx MPJoinRejected AddAddrTxDrop NoDSSInWindow MPTCPRetrans MPCurrEstab
MPTcpExt: 7 1 3 2 1 4 5 9
`

// allSources is a registry with every source, fakes where the kernel
// would be needed.
func allSources(t testing.TB, eng *engine.Server) *prometheus.Registry {
	return NewRegistry(Sources{
		Version: "test",
		Engine:  eng,
		Table:   eng.Table(),
		BPF: map[string]BPFCounters{
			"steering":       fakeBPF{"steered": 5, "joins_steered": 2, "passed": 100, "lookup_failed": 1},
			"synack_capture": fakeBPF{"captured": 4, "skipped": 1},
		},
		Pool: fakePool{Addresses: 2, TotalBlocks: 64, UsedBlocks: 3, TotalPorts: 8192, UsedPorts: 10, HeldPorts: 2, FreePorts: 8180,
			RefusalsPoolFull: 1, Log: &nat.LogStats{Written: 9, RefusedFull: 2, Lost: 1}},
		Control: fakeControl(2),
		Netstat: NewNetstat(strings.NewReader(netstatSample)),
		Runtime: true,
	})
}

func TestOtherSources(t *testing.T) {
	lp := newLoop(t)
	reg := allSources(t, lp.srv)
	m := scrape(t, reg)
	for key, want := range map[string]float64{
		`converter_bpf_events_total{event="steered",program="steering"}`:       5,
		`converter_bpf_events_total{event="joins_steered",program="steering"}`: 2,
		`converter_bpf_events_total{event="skipped",program="synack_capture"}`: 1,
		`converter_nat_addresses`:                                       2,
		`converter_nat_blocks_in_use`:                                   3,
		`converter_nat_ports_free`:                                      8180,
		`converter_nat_refusals_total{reason="pool_full"}`:              1,
		`converter_nat_log_lines_dropped_total{reason="buffer_full"}`:   2,
		`converter_nat_log_lines_dropped_total{reason="lost"}`:          1,
		`converter_control_socket_clients`:                              2,
		`converter_kernel_mptcp_events_total{counter="MPCapableSYNRX"}`: 7,
		`converter_kernel_mptcp_events_total{counter="MPJoinRejected"}`: 2,
		`converter_kernel_mptcp_events_total{counter="NoDSSInWindow"}`:  4,
		`converter_kernel_mptcp_events_total{counter="MPTCPRetrans"}`:   5,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	// Only the chosen kernel counters: MPCapableSYNTX and the gauge
	// MPCurrEstab are not exported.
	for key := range m {
		if strings.Contains(key, "MPCapableSYNTX") || strings.Contains(key, "MPCurrEstab") {
			t.Errorf("%s exported", key)
		}
	}
	// Read again: the file is read from its start at every scrape.
	if m := scrape(t, reg); m[`converter_kernel_mptcp_events_total{counter="MPCapableSYNRX"}`] != 7 {
		t.Error("second scrape lost the kernel counters")
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// No label takes an address: every label value is from a fixed set.
func TestLabelsBounded(t *testing.T) {
	lp := newLoop(t)
	mfs, err := allSources(t, lp.srv).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "converter_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if _, err := netip.ParseAddr(l.GetValue()); err == nil {
					t.Errorf("%s: label %s is an address", mf.GetName(), l.GetName())
				}
				if !slices.Contains([]string{"client_leg", "convert_message", "code", "error", "direction", "state", "program", "event", "reason", "counter", "version"}, l.GetName()) {
					t.Errorf("%s: unexpected label %s", mf.GetName(), l.GetName())
				}
			}
		}
	}
}

func TestParseNetstat(t *testing.T) {
	got, err := ParseNetstat(strings.NewReader(netstatSample), "MPTcpExt")
	if err != nil || got["MPJoinSynRx"] != 3 || len(got) != 8 {
		t.Errorf("%v, %v", got, err)
	}
	if _, err := ParseNetstat(strings.NewReader("TcpExt: A\nTcpExt: 1\n"), "MPTcpExt"); err == nil {
		t.Error("no MPTcpExt group: no error")
	}
	if _, err := ParseNetstat(strings.NewReader("MPTcpExt: A B\nMPTcpExt: 1\n"), "MPTcpExt"); err == nil {
		t.Error("short values: no error")
	}
}

// The real file of this namespace parses (a kernel with MPTCP).
func TestNetstatOfThisNamespace(t *testing.T) {
	ns, err := OpenNetstat(DefaultNetstat)
	if err != nil {
		t.Skip(err)
	}
	defer ns.Close()
	for range 2 {
		got, err := ns.MPTCP()
		if err != nil {
			t.Skip(err)
		}
		if _, ok := got["MPCapableSYNRX"]; !ok {
			t.Errorf("no MPCapableSYNRX in %v", got)
		}
	}
}

// BenchmarkScrape1000Sessions is one scrape (gather and encode in the
// text format) of an engine serving 1,000 open sessions, in-process.
func BenchmarkScrape1000Sessions(b *testing.B) {
	lp := newLoop(b)
	echo := lp.server("203.0.113.1:80", echoConn)
	for range 1000 {
		c, err := lp.convert(echo, []byte("x"))
		if err != nil {
			b.Fatal(err)
		}
		io.ReadFull(c, make([]byte, 1))
	}
	reg := allSources(b, lp.srv)
	h := Handler(reg)
	if m := scrape(b, reg); m[`converter_sessions{state="established"}`] != 1000 {
		b.Fatalf("%v sessions established", m[`converter_sessions{state="established"}`])
	}
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}
