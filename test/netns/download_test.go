package netns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// The subscriber's real connection: an MPTCP client whose SYN carries the
// Convert message, a second subflow, then a download. On Linux kernels
// whose passive MPTCP socket takes its window edge from the SYN's scaled
// window (README, known kernel issues), such downloads stalled for 5 to
// 30 s without the converter's SYN window clamp. A healthy 4 MiB download
// takes milliseconds on veth; the bounds below are two orders of
// magnitude above that and one below a stall.
const (
	smallDownload      = 4 << 20
	smallDownloadBound = 1 * time.Second
	largeDownload      = 64 << 20
	largeDownloadBound = 10 * time.Second
)

// TestDownloadAfterSYNData runs 20 downloads of 4 MiB and 2 of 64 MiB, each
// on its own MPTCP connection whose SYN carried the Convert message and
// whose second subflow joined before the first byte was asked for. Every
// download must be intact (SHA-256), finish within its bound, and cost
// the client no out-of-window drop (MPTcpExtNoDSSInWindow); the second
// subflow must carry data.
//
// CONVERTER_TFO_WINDOW_CLAMP=off runs the same test against a converter whose
// clamp is off, to see the kernel fault (it is expected to fail then).
func TestDownloadAfterSYNData(t *testing.T) {
	e := newEnv(t)
	control := filepath.Join(t.TempDir(), "control.sock")
	args := []string{"--control", control}
	if g := os.Getenv("CONVERTER_TFO_WINDOW_CLAMP"); g != "" {
		args = append(args, "--tfo-window-clamp", g)
	}
	conv := e.startConverter(args...)
	l := e.listen(e.serverNS(), "10.201.3.2:8000", false)
	serveDownloads(l)

	before := e.clientNetstat(t)
	sizes := make([]int64, 0, 22)
	for range 20 {
		sizes = append(sizes, smallDownload)
	}
	sizes = append(sizes, largeDownload, largeDownload)
	slow := 0
	var joined uint64
	for i, size := range sizes {
		bound := smallDownloadBound
		if size == largeDownload {
			bound = largeDownloadBound
		}
		took, onJoin, err := e.download(t, uint64(100+i), size, 3*bound)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			slow++
			t.Errorf("download %d of %d bytes cut after %v (a stall): %v", i, size, took.Round(time.Millisecond), err)
			continue
		}
		if err != nil {
			t.Fatalf("download %d (%d bytes): %v", i, size, err)
		}
		joined += onJoin
		if took > bound {
			slow++
			t.Errorf("download %d of %d bytes took %v, bound %v (a stall)", i, size, took.Round(time.Millisecond), bound)
		} else {
			t.Logf("download %d of %d bytes: %v", i, size, took.Round(100*time.Microsecond))
		}
	}
	after := e.clientNetstat(t)
	drops := after["MPTcpExtNoDSSInWindow"] - before["MPTcpExtNoDSSInWindow"]
	logCounterDeltas(t, "client", before, after)
	t.Logf("stalled %d/%d; client MPTcpExtNoDSSInWindow delta %d; bytes received on joined subflows %d", slow, len(sizes), drops, joined)
	if drops != 0 {
		t.Errorf("client dropped %d out-of-window MPTCP segments", drops)
	}
	if joined < 16<<10 {
		t.Errorf("the joined subflows carried %d bytes in all: the second path was not used", joined)
	}
	clamp, _ := bpfStatusAt(t, control)["synwin_counters"].(map[string]any)
	t.Logf("synwin counters: %v", clamp)
	if n, _ := clamp["clamped"].(float64); os.Getenv("CONVERTER_TFO_WINDOW_CLAMP") != "off" && int(n) < len(sizes) {
		t.Errorf("the clamp lowered %v Convert SYN windows, want one per download (%d)", n, len(sizes))
	}
	if recs := conv.records("tfo window clamp"); len(recs) != 1 {
		t.Errorf("the converter logged the clamp decision %d times, want once: %v", len(recs), recs)
	} else {
		t.Logf("converter: %v", recs[0])
	}
}

// download opens one converted MPTCP connection with the Convert message
// in the SYN, waits for its second subflow, asks the server for size
// bytes and reads them. It returns how long the download took from the
// request to the last byte and how many bytes arrived on subflows other
// than the initial one. A download still going after cut ends with
// os.ErrDeadlineExceeded.
func (e *env) download(t *testing.T, seed uint64, size int64, cut time.Duration) (time.Duration, uint64, error) {
	t.Helper()
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("convert: %w", err)
	}
	defer c.Close()
	waitSubflows(t, c.TCPConn, 2)
	sampler := sampleSubflows(c.TCPConn)
	start := time.Now()
	if _, err := fmt.Fprintf(c, "%d %d\n", seed, size); err != nil {
		return 0, 0, fmt.Errorf("request: %w", err)
	}
	c.SetReadDeadline(start.Add(cut))
	sum, n, err := digest(c)
	took := time.Since(start)
	sfs := sampler()
	if err != nil {
		return took, 0, fmt.Errorf("read after %d bytes: %w", n, err)
	}
	if n != size || sum != streamDigest(seed, size) {
		return took, 0, fmt.Errorf("received %d of %d bytes, digest match %v", n, size, sum == streamDigest(seed, size))
	}
	var onJoin uint64
	first := unmapAddrPort(c.LocalAddr())
	for _, sf := range sfs {
		if sf.Local != first {
			onJoin += sf.TCP.BytesReceived
		}
	}
	return took, onJoin, nil
}

// serveDownloads answers each connection's request line "SEED SIZE" with
// SIZE bytes of the stream SEED, then closes.
func serveDownloads(l *net.TCPListener) {
	serveEach(l, func(c *net.TCPConn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return
		}
		seed, err1 := strconv.ParseUint(f[0], 10, 64)
		size, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			return
		}
		io.Copy(c, stream(seed, size))
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
}

// clientNetstat reads the client namespace's TCP and MPTCP counters.
func (e *env) clientNetstat(t *testing.T) map[string]uint64 {
	t.Helper()
	return netstatIn(t, e.clientNS())
}

// logCounterDeltas logs the MPTCP and TCP counters that moved.
func logCounterDeltas(t *testing.T, who string, before, after map[string]uint64) {
	t.Helper()
	var moved []string
	for k, v := range after {
		if d := v - before[k]; d != 0 && (strings.HasPrefix(k, "MPTcpExt") || strings.HasPrefix(k, "TcpExt")) {
			moved = append(moved, fmt.Sprintf("%s=%d", k, d))
		}
	}
	slices.Sort(moved)
	t.Logf("%s counters that moved: %s", who, strings.Join(moved, " "))
}

// parseNetstat reads the pairs of lines of /proc/net/netstat ("Prefix:
// names..." then "Prefix: values...") into Prefix+name keys.
func parseNetstat(s string) (map[string]uint64, error) {
	out := map[string]uint64{}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(values) || len(names) == 0 || names[0] != values[0] {
			return nil, fmt.Errorf("netstat: mismatched lines %q and %q", lines[i], lines[i+1])
		}
		prefix := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			v, err := strconv.ParseUint(values[j], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("netstat %s%s: %w", prefix, names[j], err)
			}
			out[prefix+names[j]] = v
		}
	}
	return out, nil
}

func unmapAddrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
