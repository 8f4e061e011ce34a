package netns

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/lab"
)

// TestUpgrade starts a second `converter run` while the first one runs,
// as an operator does to upgrade the binary. The new process takes over
// the listening sockets and the BPF programs' maps and links; the old one
// drains. A client opens 200 connections per second across the hand-over
// (MPTCP, the Convert message in the SYN, an echo through the converter):
// none may be refused, reset or left unconverted. Long downloads running
// on the old process (MPTCP, SYN data, a second subflow) finish intact.
func TestUpgrade(t *testing.T) {
	for _, mode := range []string{"explicit", "transparent"} {
		t.Run(mode, func(t *testing.T) { testUpgrade(t, mode) })
	}
}

func testUpgrade(t *testing.T, mode string) {
	e := newEnv(t)
	control := filepath.Join(t.TempDir(), "control.sock")
	args := []string{"--control", control, "--drain-timeout", "60s", "--rate-per-client", "0"}
	echoDest := netip.MustParseAddrPort("10.201.3.2:8077")
	via := e.via4()
	if mode == "transparent" {
		args = append(args, "--transparent", "--client-iface", lab.IfConvPath1, "--client-iface", lab.IfConvPath2, "--server-iface", lab.IfConvServer)
		via = echoDest // steered: the client addresses the server itself
	}
	old := e.startConverter(args...)
	serveDownloads(e.listen(e.serverNS(), "10.201.3.2:8000", false))
	echo(e.listen(e.serverNS(), echoDest.String(), false))
	waitControl(t, control)
	var bpfBefore map[string]any
	if mode == "transparent" {
		bpfBefore = bpfStatusAt(t, control)
	}

	// Long downloads on the old process, read slowly so that they last
	// well past the hand-over.
	const size = 48 << 20
	type download struct {
		seed uint64
		res  chan result
	}
	var downloads []download
	for i := range 3 {
		dlVia := e.via4()
		if mode == "transparent" {
			dlVia = netip.MustParseAddrPort("10.201.3.2:8000")
		}
		c, err := e.convert(client.Options{Via: dlVia, Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		waitSubflows(t, c.TCPConn, 2)
		d := download{seed: uint64(70 + i), res: make(chan result, 1)}
		fmt.Fprintf(c, "%d %d\n", d.seed, size)
		go func() {
			c.SetReadBuffer(256 << 10)
			sum, n, err := digest(&slowReader{r: c, every: 2 << 20, pause: 100 * time.Millisecond})
			c.Close()
			d.res <- result{gotDigest: sum, got: n, err: err}
		}()
		downloads = append(downloads, d)
	}

	// 200 connections per second, from before the hand-over to after it.
	var mu sync.Mutex
	failures := map[string]int{}
	opened := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				kind := echoOnce(e, via, echoDest, i)
				mu.Lock()
				opened++
				if kind != "" {
					failures[kind]++
				}
				mu.Unlock()
			}()
		}
	}()
	time.Sleep(time.Second)

	start := time.Now()
	next := e.startConverter(args...)
	ready := time.Since(start)
	took := next.waitRecords(t, "took over", 1)
	handed := old.waitRecords(t, "handed over", 1)
	if len(took) == 0 || len(handed) == 0 {
		t.Fatalf("no hand-over: new process log:\n%s\nold process log:\n%s", next.rawLog(), old.rawLog())
	}
	t.Logf("hand-over: new process listening %v after its start; took over: %v; old: %v", ready.Round(time.Millisecond), took[0], handed[0])

	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	for _, d := range downloads {
		r := <-d.res
		if r.err != nil || r.got != size || r.gotDigest != streamDigest(d.seed, size) {
			t.Errorf("download on the old process across the hand-over: %d of %d bytes, %v", r.got, size, r.err)
		}
	}
	waitExit(t, old, 30*time.Second)
	t.Logf("old process gone %v after the new one started (its downloads ended first)", time.Since(start).Round(time.Millisecond))

	mu.Lock()
	var kinds []string
	lost := 0
	for k, n := range failures {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		lost += n
	}
	sort.Strings(kinds)
	t.Logf("%d connections across the hand-over, %d failed %v", opened, lost, kinds)
	mu.Unlock()
	if lost != 0 {
		t.Errorf("%d of %d connections refused, reset or unconverted across the hand-over: %v", lost, opened, kinds)
	}
	if opened < 400 {
		t.Errorf("only %d connections opened: the load did not cover the hand-over", opened)
	}
	// The new process serves alone now, on the same control socket.
	if kind := echoOnce(e, via, echoDest, -1); kind != "" {
		t.Errorf("a connection after the old process left: %s", kind)
	}
	out, err := exec.Command(converterBin, "status", "--control", control).CombinedOutput()
	if err != nil {
		t.Errorf("status after the hand-over: %v\n%s", err, out)
	}
	if mode == "transparent" {
		after := bpfStatusAt(t, control)
		if a, b := linkIDs(after), linkIDs(bpfBefore); a == "" || a != b {
			t.Errorf("steering links %q after the hand-over, want the same links as before %q", a, b)
		}
	}
}

// echoOnce opens one converted connection with its message in the SYN
// and checks the echo; it returns "" or what went wrong, in a word.
func echoOnce(e *env, via, dest netip.AddrPort, i int) string {
	msg := []byte(fmt.Sprintf("upgrade ping %d", i))
	c, err := e.convert(client.Options{Via: via, Dest: dest, MPTCP: true}, msg)
	if err != nil {
		var ce *client.Error
		switch {
		case errors.As(err, &ce):
			return "refused:" + ce.Code.String()
		case errors.Is(err, syscall.ECONNRESET):
			return "reset"
		case errors.Is(err, syscall.ECONNREFUSED):
			return "connection-refused"
		}
		return "convert-failed:" + strings.SplitN(err.Error(), ":", 2)[0]
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case err != nil:
		return "read-failed"
	case string(got) != string(msg):
		return "unconverted-or-corrupt"
	}
	return ""
}

// linkIDs lists the tcx link ids of the steering program in a bpf status.
func linkIDs(st map[string]any) string {
	steer, _ := st["steering"].(map[string]any)
	links, _ := steer["Links"].([]any)
	var ids []string
	for _, l := range links {
		m, _ := l.(map[string]any)
		ids = append(ids, fmt.Sprint(m["LinkID"]))
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// waitControl waits until the daemon answers on its control socket, which
// it opens right after its listeners.
func waitControl(t *testing.T, control string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := exec.Command(converterBin, "status", "--control", control).Run()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer on %s: %v", control, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
