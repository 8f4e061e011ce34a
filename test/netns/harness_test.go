// Package netns holds the end-to-end tests: the real converter binary in a
// namespace lab (a client with two paths, the converter, a server), real
// MPTCP and TFO, bytes hashed end to end.
package netns

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
)

// converterBin is the binary under test, built once by TestMain.
var converterBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "converter-netns-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	converterBin = filepath.Join(dir, "converter")
	build := exec.Command("go", "build", "-o", converterBin, "../../cmd/converter")
	// As make build: without cgo, so that the daemon can drop its
	// capabilities on every thread.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build converter:", err)
		return 1
	}
	return m.Run()
}

// env is one lab with its processes, torn down when the test ends.
type env struct {
	t   *testing.T
	lab *lab.Lab
	a   lab.Addresses
}

func newEnv(t *testing.T, tools ...string) *env {
	t.Helper()
	labtest.Require(t, tools...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := lab.Up(ctx, lab.Config{Prefix: lab.UniquePrefix()})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return &env{t: t, lab: l, a: l.Addr}
}

func (e *env) clientNS() string    { return e.lab.NS(lab.RoleClient) }
func (e *env) converterNS() string { return e.lab.NS(lab.RoleConverter) }
func (e *env) serverNS() string    { return e.lab.NS(lab.RoleServer) }

// labDestinations opens the lab's own private ranges on a converter.
var labDestinations = []string{"--allow-destinations", "10.201.0.0/16", "--allow-destinations", "fd01::/16"}

// converterProc is a running `converter run` and its JSON log records.
type converterProc struct {
	stopOnce sync.Once
	cmd      *exec.Cmd
	exited   chan struct{} // closed once the process was reaped
	exitErr  error
	mu       sync.Mutex
	logs     []map[string]any
	raw      strings.Builder
}

// startConverter runs the binary in the converter namespace and waits until
// every listener is up. The process is stopped when the test ends.
func (e *env) startConverter(args ...string) *converterProc {
	e.t.Helper()
	return e.startConverterEnv(nil, args...)
}

// startConverterEnv is startConverter with extra environment variables.
func (e *env) startConverterEnv(extraEnv []string, args ...string) *converterProc {
	e.t.Helper()
	listens := 0
	for _, a := range args {
		if a == "--listen" {
			listens++
		}
	}
	listens = max(listens, 1)
	if !slices.Contains(args, "--allow-destinations") {
		// The lab's addresses are private (10/8, fc00::/7): refused by
		// default, so every lab converter opens them.
		args = append(args, labDestinations...)
	}
	if !slices.Contains(args, "--control") {
		// The control socket lives in the file system, which all labs
		// share: give each converter its own.
		args = append(args, "--control", filepath.Join(e.t.TempDir(), "control.sock"))
	}
	cmd := e.lab.Command(context.Background(), e.converterNS(), converterBin, append([]string{"run"}, args...)...)
	if len(extraEnv) > 0 {
		cmd.Env = append(os.Environ(), extraEnv...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start converter: %v", err)
	}
	p := &converterProc{cmd: cmd, exited: make(chan struct{})}
	listening := make(chan struct{}, listens)
	go p.readLogs(stderr, listening)
	e.t.Cleanup(func() { p.stop(e.t) })
	for range listens {
		select {
		case <-listening:
		case <-time.After(10 * time.Second):
			e.t.Fatalf("converter did not start listening; log:\n%s", p.rawLog())
		}
	}
	return p
}

func (p *converterProc) readLogs(r io.Reader, listening chan<- struct{}) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		var rec map[string]any
		json.Unmarshal([]byte(line), &rec)
		p.mu.Lock()
		p.raw.WriteString(line + "\n")
		if rec != nil {
			p.logs = append(p.logs, rec)
		}
		p.mu.Unlock()
		if rec["msg"] == "listening" {
			listening <- struct{}{}
		}
	}
	io.Copy(io.Discard, r) // a line too long for the scanner
	p.wait()               // only once stderr is read to its end
}

func (p *converterProc) rawLog() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

// records returns the log records whose msg is msg.
func (p *converterProc) records(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, r := range p.logs {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

// waitRecords waits until at least n records with msg were logged.
func (p *converterProc) waitRecords(t *testing.T, msg string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs := p.records(msg)
		if len(recs) >= n || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *converterProc) stop(t *testing.T) {
	p.stopOnce.Do(func() { p.stopNow(t) })
}

func (p *converterProc) stopNow(t *testing.T) {
	// As an operator would: SIGTERM drains, a second one aborts what is
	// left (a test's sessions are closed by then, or should be).
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(3 * time.Second):
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
			t.Errorf("converter did not stop on two SIGTERMs")
		}
	}
	if p.exitErr != nil && !t.Failed() {
		t.Errorf("converter exited with %v; log:\n%s", p.exitErr, p.rawLog())
	}
	if t.Failed() {
		t.Logf("converter log:\n%s", p.rawLog())
	}
}

// wait reaps the process once, for stopNow and the tests that watch the
// exit; readLogs has read everything by then.
func (p *converterProc) wait() {
	p.exitErr = p.cmd.Wait()
	close(p.exited)
}

// listen opens a listener inside namespace ns (the socket belongs to the
// namespace it was created in) and closes it when the test ends.
func (e *env) listen(ns, addr string, mptcp bool) *net.TCPListener {
	e.t.Helper()
	var l net.Listener
	err := lab.RunIn(ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(mptcp)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		e.t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	e.t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// dial runs fn in the client namespace, where its sockets are created.
func (e *env) inClient(fn func() error) error { return lab.RunIn(e.clientNS(), fn) }

// convert opens a converted connection from the client namespace.
func (e *env) convert(o client.Options, early []byte) (*client.Conn, error) {
	var c *client.Conn
	err := e.inClient(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		var err error
		c, err = client.Dial(ctx, o, early)
		return err
	})
	if c != nil {
		e.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func (e *env) via4() netip.AddrPort { return netip.AddrPortFrom(e.a.ConvPath1V4, 5124) }
func (e *env) via6() netip.AddrPort { return netip.AddrPortFrom(e.a.ConvPath1V6, 5124) }

// stream is a deterministic pseudo-random byte stream of a given length.
func stream(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8(seedBytes(seed)), n)
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return s
}

func digest(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}

func streamDigest(seed uint64, n int64) [32]byte {
	d, _, _ := digest(stream(seed, n))
	return d
}

// result of one side of an exchange.
type result struct {
	gotDigest [32]byte
	got       int64
	err       error
}

// exchange sends a stream of n bytes on c while hashing what comes back,
// half-closing after the last byte. It returns what was received.
func exchange(c *net.TCPConn, seed uint64, n int64) result {
	sendErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, stream(seed, n))
		if err == nil {
			err = c.CloseWrite()
		}
		sendErr <- err
	}()
	d, got, err := digest(c)
	if serr := <-sendErr; err == nil {
		err = serr
	}
	return result{gotDigest: d, got: got, err: err}
}

// serveExchange accepts one connection on l and runs exchange on it.
func serveExchange(l *net.TCPListener, seed uint64, n int64) <-chan result {
	out := make(chan result, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			out <- result{err: err}
			return
		}
		defer c.Close()
		out <- exchange(c, seed, n)
	}()
	return out
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
