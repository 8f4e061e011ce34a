package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/convert-tc/converter/internal/labtest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/lab"
)

// benchSyncBuffer is a bytes.Buffer that a running command and the test share.
type benchSyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *benchSyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *benchSyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cli runs the converter CLI in-process.
func benchCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(t.Context(), append([]string{"converter"}, args...), stdio{in: strings.NewReader(""), out: &out, err: &errb})
	return code, out.String(), errb.String()
}

var benchServingRE = regexp.MustCompile(`serving on (\S+)`)

// benchStartServer runs `converter bench --serve addr` until the test ends
// and returns the address it serves. wrap, when set, runs the command (e.g.
// inside a network namespace).
func benchStartServer(t *testing.T, addr string, wrap func(func() error) error) string {
	t.Helper()
	if wrap == nil {
		wrap = func(f func() error) error { return f() }
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr benchSyncBuffer
	done := make(chan int, 1)
	go func() {
		code := -1
		err := wrap(func() error {
			code = run(ctx, []string{"converter", "bench", "--serve", addr}, stdio{in: strings.NewReader(""), out: &stderr, err: &stderr})
			return nil
		})
		if err != nil {
			fmt.Fprintln(&stderr, err)
		}
		done <- code
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("bench --serve exited %d: %s", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("bench --serve still running 10 s after cancel")
		}
	})
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if m := benchServingRE.FindStringSubmatch(stderr.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-done:
			done <- code
			t.Fatalf("bench --serve exited %d: %s", code, stderr.String())
		default:
		}
	}
	t.Fatalf("bench --serve did not start: %s", stderr.String())
	return ""
}

func benchNumber(t *testing.T, m map[string]any, key string) float64 {
	t.Helper()
	v, ok := m[key].(float64)
	if !ok {
		t.Fatalf("%q is %T (%v) in %v, want a number", key, m[key], m[key], m)
	}
	return v
}

// benchCheckThroughput checks the throughput contract.
func benchCheckThroughput(t *testing.T, out string, wantBytes int64) map[string]any {
	t.Helper()
	m := checkVersionField(t, out)
	if m["mode"] != "throughput" {
		t.Errorf("mode %v, want throughput", m["mode"])
	}
	if b := benchNumber(t, m, "bytes"); b != float64(wantBytes) {
		t.Errorf("bytes %v, want %d", b, wantBytes)
	}
	s, bps := benchNumber(t, m, "seconds"), benchNumber(t, m, "bits_per_second")
	if s <= 0 || s > 60 || bps <= 0 {
		t.Errorf("seconds %v, bits_per_second %v", s, bps)
	}
	if got := float64(wantBytes) * 8 / s; bps < got*0.999 || bps > got*1.001 {
		t.Errorf("bits_per_second %v, want bytes*8/seconds = %v", bps, got)
	}
	return m
}

// benchCheckDirections checks the per-direction objects: exactly dirs,
// each with perDir bytes and bits_per_second = bytes*8/seconds, none
// longer than the whole run.
func benchCheckDirections(t *testing.T, m map[string]any, perDir int64, dirs ...string) {
	t.Helper()
	for _, dir := range []string{"up", "down"} {
		d, ok := m[dir].(map[string]any)
		if !slices.Contains(dirs, dir) {
			if m[dir] != nil {
				t.Errorf("%q: %v, want none", dir, m[dir])
			}
			continue
		}
		if !ok {
			t.Fatalf("%q is %T (%v), want an object", dir, m[dir], m[dir])
		}
		b, s, bps := benchNumber(t, d, "bytes"), benchNumber(t, d, "seconds"), benchNumber(t, d, "bits_per_second")
		if b != float64(perDir) || s <= 0 || s > benchNumber(t, m, "seconds") {
			t.Errorf("%q: bytes %v, seconds %v (run %v); want %d bytes", dir, b, s, m["seconds"], perDir)
		}
		if got := b * 8 / s; bps < got*0.999 || bps > got*1.001 {
			t.Errorf("%q: bits_per_second %v, want bytes*8/seconds = %v", dir, bps, got)
		}
	}
}

// benchCheckConnect checks the connect contract: connections, no errors,
// ordered percentiles.
func benchCheckConnect(t *testing.T, out string) map[string]any {
	t.Helper()
	m := checkVersionField(t, out)
	if m["mode"] != "connect" {
		t.Errorf("mode %v, want connect", m["mode"])
	}
	n, cps, errs := benchNumber(t, m, "connections"), benchNumber(t, m, "connections_per_second"), benchNumber(t, m, "errors")
	if n <= 0 || cps <= 0 || errs != 0 {
		t.Errorf("connections %v, connections_per_second %v, errors %v (first error %v)", n, cps, errs, m["first_error"])
	}
	lat, ok := m["latency_us"].(map[string]any)
	if !ok {
		t.Fatalf("latency_us is %T, want an object", m["latency_us"])
	}
	p50, p90, p99 := benchNumber(t, lat, "p50"), benchNumber(t, lat, "p90"), benchNumber(t, lat, "p99")
	if p50 <= 0 || p50 > p90 || p90 > p99 {
		t.Errorf("latency_us p50 %v p90 %v p99 %v: want 0 < p50 <= p90 <= p99", p50, p90, p99)
	}
	return m
}

func benchMPTCPUsable() bool {
	b, err := os.ReadFile("/proc/sys/net/mptcp/enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

func TestBenchLoopback(t *testing.T) {
	addr := benchStartServer(t, "127.0.0.1:0", nil)
	transports := []string{"--mptcp=false"}
	if benchMPTCPUsable() {
		transports = append(transports, "--mptcp")
	} else if os.Getenv("CI") != "" {
		t.Error("MPTCP unavailable on loopback and CI is set")
	}
	for _, tr := range transports {
		t.Run(strings.TrimPrefix(tr, "--"), func(t *testing.T) {
			code, out, errs := benchCLI(t, "bench", tr, "--streams", "2", "--bytes", "32M", "--json", addr)
			if code != 0 {
				t.Fatalf("throughput: exit %d: %s", code, errs)
			}
			m := benchCheckThroughput(t, out, 2*32<<20)
			if tr == "--mptcp" && (m["subflows"] == nil || m["mptcp"] != true) {
				t.Errorf("MPTCP run: subflows %v, mptcp %v", m["subflows"], m["mptcp"])
			}

			if m["direction"] != "up" || m["syn_data"] != nil {
				t.Errorf("default run: direction %v, syn_data %v; want up and none (direct)", m["direction"], m["syn_data"])
			}
			benchCheckDirections(t, m, 2*32<<20, "up")
			for _, dir := range []string{"down", "both"} {
				// --syn-data=false changes nothing on a direct route.
				code, out, errs := benchCLI(t, "bench", tr, "--direction", dir, "--syn-data=false", "--streams", "2", "--bytes", "16M", "--json", addr)
				if code != 0 {
					t.Fatalf("throughput %s: exit %d: %s", dir, code, errs)
				}
				want := map[string]int64{"down": 2 * 16 << 20, "both": 4 * 16 << 20}[dir]
				m := benchCheckThroughput(t, out, want)
				if m["direction"] != dir || m["syn_data"] != nil {
					t.Errorf("%s: direction %v, syn_data %v", dir, m["direction"], m["syn_data"])
				}
				benchCheckDirections(t, m, 2*16<<20, map[string][]string{"down": {"down"}, "both": {"up", "down"}}[dir]...)
			}

			code, out, errs = benchCLI(t, "bench", tr, "--mode", "connect", "--duration", "500ms", "--concurrency", "4", "--json", addr)
			if code != 0 {
				t.Fatalf("connect: exit %d: %s", code, errs)
			}
			benchCheckConnect(t, out)

			code, out, errs = benchCLI(t, "bench", tr, "--mode", "idle", "--count", "20", "--hold", "50ms", "--json", addr)
			if code != 0 {
				t.Fatalf("idle: exit %d: %s", code, errs)
			}
			m = checkVersionField(t, out)
			if m["mode"] != "idle" || benchNumber(t, m, "connections") != 20 || benchNumber(t, m, "alive") != 20 || !strings.Contains(errs, "holding") {
				t.Errorf("idle: %v, stderr %q", m, errs)
			}
		})
	}

	t.Run("human", func(t *testing.T) {
		for _, tc := range []struct {
			mode, has string // has: what the line must contain
			args      []string
		}{
			{"throughput", "Gbit/s", []string{"bench", "--bytes", "1M", addr}},
			{"throughput", "Gbit/s  down", []string{"bench", "--bytes", "1M", "--direction", "down", addr}},
			{"throughput", "Gbit/s  both: up 1MiB in", []string{"bench", "--bytes", "1M", "--direction", "both", addr}},
			{"connect", "conn/s", []string{"bench", "--mode", "connect", "--duration", "100ms", addr}},
			{"idle", "alive", []string{"bench", "--mode", "idle", "--count", "3", "--hold", "0s", addr}},
		} {
			code, out, errs := benchCLI(t, tc.args...)
			if code != 0 || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, tc.mode+" ") || !strings.Contains(out, tc.has) {
				t.Errorf("%v: exit %d, output %q, stderr %q; want one line starting %q with %q", tc.args, code, out, errs, tc.mode, tc.has)
			}
			t.Logf("%s", strings.TrimSpace(out))
		}
	})
}

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench"},
		{"bench", "127.0.0.1:1", "127.0.0.1:2"},
		{"bench", "127.0.0.1:1", "--streams", "0"}, // flags after HOST:PORT are read
		{"bench", "127.0.0.1:1", "--nope"},
		{"bench", "127.0.0.1:1", "--", "--json"}, // after "--", an argument
		{"bench", "--mode", "nope", "127.0.0.1:1"},
		{"bench", "--streams", "0", "127.0.0.1:1"},
		{"bench", "--streams", "100000", "127.0.0.1:1"},
		{"bench", "--bytes", "1Q", "127.0.0.1:1"},
		{"bench", "--bytes", "0", "127.0.0.1:1"},
		{"bench", "--direction", "sideways", "127.0.0.1:1"},
		{"bench", "--direction", "", "127.0.0.1:1"},
		{"bench", "--mode", "connect", "--direction", "down", "127.0.0.1:1"},
		{"bench", "--syn-data=maybe", "127.0.0.1:1"},
		{"bench", "--serve", "127.0.0.1:0", "--direction", "down"},
		{"bench", "--serve", "127.0.0.1:0", "--syn-data=false"},
		{"bench", "--via", "nope", "127.0.0.1:1"},
		{"bench", "--via", "127.0.0.1:5124", "example.net:80"},
		{"bench", "--via", "127.0.0.1:5124", "--proxy", "127.0.0.1:7000", "127.0.0.1:1"},
		{"bench", "--mode", "connect", "--request-size", "3", "127.0.0.1:1"},
		{"bench", "--mode", "connect", "--concurrency", "0", "127.0.0.1:1"},
		{"bench", "--mode", "connect", "--duration", "0s", "127.0.0.1:1"},
		{"bench", "--mode", "connect", "--streams", "2", "127.0.0.1:1"},
		{"bench", "--bytes", "1M", "--mode", "idle", "127.0.0.1:1"},
		{"bench", "--mode", "idle", "--count", "0", "127.0.0.1:1"},
		{"bench", "--timeout", "0s", "127.0.0.1:1"},
		{"bench", "--nope", "127.0.0.1:1"},
		{"bench", "--serve", "127.0.0.1:0", "127.0.0.1:1"},
		{"bench", "--serve", "127.0.0.1:0", "--json"},
		{"lab", "up", "--prefix", "bad/name"},
		{"lab", "status", "--prefix", ""},
		{"lab", "down", "extra"},
		{"lab", "bogus"},
	} {
		code, out, errs := benchCLI(t, args...)
		if code != exitUsage || out != "" || errs == "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and a message", args, code, out, errs, exitUsage)
		}
	}
}

func TestBenchRunFailure(t *testing.T) {
	// Nothing listens on port 1: a throughput run fails with exit 1.
	code, _, errs := benchCLI(t, "bench", "--bytes", "1K", "--timeout", "2s", "127.0.0.1:1")
	if code != 1 || !strings.Contains(errs, "refused") {
		t.Errorf("exit %d, stderr %q; want 1 and connection refused", code, errs)
	}
}

// --- namespaces -------------------------------------------------------

// benchHelperEnv carries the arguments of a CLI run in a child process.
const benchHelperEnv = "CONVERTER_BENCH_HELPER_ARGS"

// TestBenchHelperProcess is not a test: it is the CLI run by benchInNamespace in
// a child process (so that every socket of the run is in a namespace).
func TestBenchHelperProcess(t *testing.T) {
	raw := os.Getenv(benchHelperEnv)
	if raw == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		syscall.Exit(100)
	}
	code := run(context.Background(), args, stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr})
	// syscall.Exit: the test framework refuses os.Exit(0), and must not
	// print PASS on stdout.
	syscall.Exit(code)
}

// benchInNamespace runs the CLI with args in a child process inside netns ns.
func benchInNamespace(t *testing.T, ns string, args ...string) (stdout, stderr string) {
	t.Helper()
	raw, _ := json.Marshal(append([]string{"converter"}, args...))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestBenchHelperProcess$")
	cmd.Env = append(os.Environ(), benchHelperEnv+"="+string(raw))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v in %s: %v: %s", args, ns, err, errb.String())
	}
	return out.String(), errb.String()
}

// TestBenchNamespaces runs the server in the lab's server namespace and
// the generator in its client namespace, directly (the converter namespace
// routes), over TCP and MPTCP. It also drives `converter lab`.
func TestBenchNamespaces(t *testing.T) {
	labtest.Require(t)
	prefix := lab.UniquePrefix()
	t.Cleanup(func() {
		if code, _, errs := benchCLI(t, "lab", "down", "--prefix", prefix); code != 0 {
			t.Errorf("lab down: exit %d: %s", code, errs)
		}
		if rep, err := lab.Status(prefix); err != nil || slices.ContainsFunc(rep.Namespaces, func(n lab.NamespaceStatus) bool { return n.Exists }) {
			t.Errorf("after lab down: %+v, %v", rep, err)
		}
	})
	code, out, errs := benchCLI(t, "lab", "up", "--prefix", prefix, "--json")
	if code != 0 {
		t.Fatalf("lab up: exit %d: %s", code, errs)
	}
	var up struct {
		Prefix     string
		Namespaces map[lab.Role]string
	}
	if err := json.Unmarshal([]byte(out), &up); err != nil || up.Prefix != prefix {
		t.Fatalf("lab up --json: %q, %v", out, err)
	}
	checkVersionField(t, out)
	if code, _, errs := benchCLI(t, "lab", "up", "--prefix", prefix); code != 0 {
		t.Fatalf("second lab up (idempotent): exit %d: %s", code, errs)
	}
	code, out, errs = benchCLI(t, "lab", "status", "--prefix", prefix, "--json")
	var rep lab.StatusReport
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.Complete {
		t.Fatalf("lab status: exit %d, %q, %s", code, out, errs)
	}
	checkVersionField(t, out)
	if code, out, _ := benchCLI(t, "lab", "status", "--prefix", prefix); code != 0 || !strings.Contains(out, "complete") {
		t.Errorf("lab status (human): exit %d, %q", code, out)
	}

	srv, cli := up.Namespaces[lab.RoleServer], up.Namespaces[lab.RoleClient]
	dest := lab.DefaultAddresses().ServerV4.String() + ":7000"
	benchStartServer(t, dest, func(f func() error) error { return lab.RunIn(srv, f) })

	for _, tr := range []string{"--mptcp=false", "--mptcp"} {
		t.Run(strings.TrimPrefix(tr, "--"), func(t *testing.T) {
			out, _ := benchInNamespace(t, cli, "bench", tr, "--bytes", "64M", "--json", dest)
			m := benchCheckThroughput(t, out, 64<<20)
			t.Logf("throughput %s: %.2f Gbit/s, subflows %v", tr, benchNumber(t, m, "bits_per_second")/1e9, m["subflows"])
			if tr == "--mptcp" && m["mptcp"] != true {
				t.Errorf("MPTCP end to end fell back to TCP: %v", m)
			}
			out, _ = benchInNamespace(t, cli, "bench", tr, "--direction", "both", "--bytes", "64M", "--json", dest)
			m = benchCheckThroughput(t, out, 2*64<<20)
			benchCheckDirections(t, m, 64<<20, "up", "down")
			t.Logf("both ways %s: up %v, down %v", tr, m["up"], m["down"])
			out, _ = benchInNamespace(t, cli, "bench", tr, "--mode", "connect", "--duration", "1s", "--json", dest)
			m = benchCheckConnect(t, out)
			t.Logf("connect %s: %.0f conn/s, latency %v", tr, benchNumber(t, m, "connections_per_second"), m["latency_us"])
		})
	}
	// The status of a lab that does not exist is incomplete: exit 1.
	if code, _, _ := benchCLI(t, "lab", "status", "--prefix", lab.UniquePrefix()); code != 1 {
		t.Errorf("status of a missing lab: exit %d, want 1", code)
	}
}
