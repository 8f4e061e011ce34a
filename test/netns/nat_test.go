package netns

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// TestAddressSharing: with --nat share the server sees a pool address; two
// sessions of one client share one external address; a client over its
// block limit gets Resource Exceeded while its running session stays
// intact; the mapping log holds one allocation line per block.
func TestAddressSharing(t *testing.T) {
	e := newEnv(t)
	logPath := filepath.Join(t.TempDir(), "nat.log")
	e.startConverter("--nat", "share", "--pool", "10.201.100.0/29", "--port-block", "4",
		"--max-blocks-per-client", "1", "--port-hold", "2s", "--nat-log", logPath, "--backoff", "5")
	l := e.listen(e.serverNS(), "10.201.3.2:8050", false)
	dest := netip.MustParseAddrPort("10.201.3.2:8050")

	var held []*client.Conn
	peers := map[string]bool{}
	var ports []string
	for i := range 2 {
		seen := serverSeesPeer(l)
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, []byte("shared"))
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		held = append(held, c)
		c.CloseWrite()
		got := <-seen
		if got[1] != "shared" {
			t.Fatalf("session %d: server read %q", i, got[1])
		}
		ap := netip.MustParseAddrPort(got[0])
		if !netip.MustParsePrefix("10.201.100.0/29").Contains(ap.Addr()) {
			t.Fatalf("server saw %v, want an address of the pool", ap)
		}
		peers[ap.Addr().String()] = true
		ports = append(ports, got[0])
	}
	if len(peers) != 1 {
		t.Errorf("two sessions of one client came from %v, want one paired address", peers)
	}
	t.Logf("server saw %v", ports)

	// The client's one block of 4 ports: hold 2 more sessions, then the
	// fifth is refused while the others stay up.
	for range 2 {
		seen := serverSeesPeer(l)
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		c.CloseWrite()
		<-seen
	}
	req, _ := client.Options{Dest: dest}.Request()
	r, err := e.rawExchange(e.via4(), req, false)
	if v := errorReply(t, r, err, 64); v[0] != 5 {
		t.Errorf("back-off %d, want 5", v[0])
	}
	for _, c := range held {
		c.Close()
	}

	time.Sleep(4 * time.Second) // hold elapses; the block goes back and is logged
	lines := readJSONLines(t, logPath)
	allocs, releases := 0, 0
	for _, ln := range lines {
		switch ln["event"] {
		case "alloc":
			allocs++
		case "release":
			releases++
		}
		if ln["client"] != "10.201.1.2" || !strings.HasPrefix(ln["external"].(string), "10.201.100.") || ln["ports"] == nil || ln["time"] == nil {
			t.Errorf("log line %v", ln)
		}
		if _, has := ln["destination"]; has {
			t.Errorf("log line names a destination: %v", ln)
		}
	}
	if allocs != 1 || releases != 1 {
		t.Errorf("%d allocation and %d release lines, want 1 and 1: %v", allocs, releases, lines)
	}
}

func readJSONLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}
