package netns

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/control"
	"github.com/convert-tc/converter/lab"
)

// parseExposition reads the Prometheus text format into
// "name{labels}" -> value, labels as the converter writes them.
func parseExposition(t *testing.T, b []byte) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("exposition line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// scrapeIn scrapes http://addr/metrics from inside the namespace ns: the
// socket is made there (on this thread), the request goes over it.
func scrapeIn(t *testing.T, ns, addr string) map[string]float64 {
	t.Helper()
	var c net.Conn
	if err := lab.RunIn(ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect to the metrics listener: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: converter\r\n\r\n")
	resp, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	head, body, ok := bytes.Cut(resp, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.0 200")) {
		t.Fatalf("GET /metrics: %.200s", resp)
	}
	return parseExposition(t, body)
}

// TestMetrics: a converter with --metrics-listen serves the counters of a
// converted MPTCP session (Convert message in the SYN, a second subflow)
// and of a refused one, the same over HTTP in its namespace and on the
// control socket, with the kernel's MPTCP counters beside them.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	ctl := filepath.Join(t.TempDir(), "control.sock")
	metricsAddr := netip.AddrPortFrom(e.a.ConvPath1V4, 9124).String()
	conv := e.startConverter("--control", ctl, "--metrics-listen", metricsAddr)
	echo(e.listen(e.serverNS(), "10.201.3.2:8090", false))

	before := scrapeIn(t, e.converterNS(), metricsAddr)

	dest := netip.MustParseAddrPort("10.201.3.2:8090")
	c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, []byte("early"))
	if err != nil {
		t.Fatal(err)
	}
	waitSubflows(t, c.TCPConn, 2)
	payload := bytes.Repeat([]byte("metrics!"), 64<<10)
	go func() { c.Write(payload); c.CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || len(got) != len("early")+len(payload) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	c.Close()
	// Nobody listens on 8091: the server resets the server leg's SYN,
	// the client gets Connection Reset.
	if _, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8091"), MPTCP: true}, []byte("x")); err == nil {
		t.Fatal("the refused session converted")
	}
	conv.waitRecords(t, "session end", 1)
	conv.waitRecords(t, "refused", 1)

	var m map[string]float64
	deadline := time.Now().Add(5 * time.Second)
	for {
		m = scrapeIn(t, e.converterNS(), metricsAddr)
		if m[`converter_sessions_active`] == 0 && m[`converter_session_duration_seconds_count`] == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	relayed := float64(len("early") + len(payload))
	for key, want := range map[string]float64{
		`converter_connections_accepted_total{client_leg="mptcp",convert_message="syn"}`:             2,
		`converter_connections_accepted_total{client_leg="mptcp",convert_message="after_handshake"}`: 0,
		`converter_connections_accepted_total{client_leg="tcp",convert_message="syn"}`:               0,
		`converter_sessions_converted_total`:                                                         1,
		`converter_refusals_total{code="96",error="Connection Reset"}`:                               1,
		`converter_server_connect_failures_total`:                                                    1,
		`converter_silent_aborts_total`:                                                              0,
		`converter_relay_resets_total{direction="to_server"}`:                                        0,
		`converter_relay_resets_total{direction="to_client"}`:                                        0,
		`converter_relayed_bytes_total{client_leg="mptcp",direction="to_server"}`:                    relayed,
		`converter_relayed_bytes_total{client_leg="mptcp",direction="to_client"}`:                    relayed,
		`converter_convert_syn_to_server_syn_seconds_count`:                                          2,
		`converter_server_connect_seconds_count`:                                                     1,
		`converter_convert_syn_to_reply_seconds_count`:                                               1,
		`converter_session_duration_seconds_count`:                                                   1,
		`converter_session_subflows_count`:                                                           1,
		`converter_session_subflows_sum`:                                                             2,
		`converter_sessions_active`:                                                                  0,
		`converter_sessions{state="established"}`:                                                    0,
		`converter_pending_handshakes`:                                                               0,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	// The kernel's counters of the converter's namespace moved: two
	// MP_CAPABLE SYNs, one MP_JOIN.
	for name, least := range map[string]float64{"MPCapableSYNRX": 2, "MPJoinSynRx": 1, "MPJoinAckRx": 1} {
		key := `converter_kernel_mptcp_events_total{counter="` + name + `"}`
		if d := m[key] - before[key]; d < least {
			t.Errorf("%s moved by %v, want at least %v", key, d, least)
		}
	}

	// The control socket serves the same registry.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := control.FetchMetrics(ctx, ctl)
	if err != nil {
		t.Fatal(err)
	}
	viaSocket := parseExposition(t, body)
	for _, key := range []string{`converter_sessions_converted_total`, `converter_refusals_total{code="96",error="Connection Reset"}`, `converter_session_subflows_sum`} {
		if viaSocket[key] != m[key] {
			t.Errorf("control socket %s = %v, HTTP %v", key, viaSocket[key], m[key])
		}
	}
	if viaSocket[`converter_control_socket_clients`] < 1 {
		t.Errorf("control socket clients %v while asking on it", viaSocket[`converter_control_socket_clients`])
	}
	t.Logf("kernel: MPCapableSYNRX %v, MPJoinSynRx %v", m[`converter_kernel_mptcp_events_total{counter="MPCapableSYNRX"}`], m[`converter_kernel_mptcp_events_total{counter="MPJoinSynRx"}`])
}
