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
	control := filepath.Join(t.TempDir(), "control.sock")
	e.startConverter("--control", control, "--nat", "share", "--pool", "10.201.100.0/29", "--port-block", "4",
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
	for _, s := range readSessions(t, control).Sessions {
		if s.ServerSource != "shared" || !strings.HasPrefix(s.Upstream.Local, "10.201.100.") {
			t.Errorf("session upstream %+v source %q, want a shared pool address", s.Upstream, s.ServerSource)
		}
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
	// Hairpinning is off: a pool address as destination is Not Authorized.
	hp, _ := client.Options{Dest: netip.MustParseAddrPort("10.201.100.2:80")}.Request()
	r, err = e.rawExchange(e.via4(), hp, false)
	errorReply(t, r, err, 32)
	// A second client (the other address of the client host) gets a block
	// of its own.
	seen := serverSeesPeer(l)
	other, err := e.convert(client.Options{Via: netip.MustParseAddrPort("10.201.2.1:5124"), Dest: dest, Local: e.a.ClientPath2V4}, []byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	other.CloseWrite()
	first, second := netip.MustParseAddrPort(ports[0]), netip.MustParseAddrPort((<-seen)[0])
	if first.Addr() == second.Addr() && first.Port()/4 == second.Port()/4 {
		t.Errorf("two clients share a block: %v and %v", first, second)
	}
	other.Close()

	// Released ports are held: right after the four sessions end, their
	// ports are not handed out again.
	for _, c := range held {
		c.Close()
	}
	time.Sleep(300 * time.Millisecond)
	r, err = e.rawExchange(e.via4(), req, false)
	errorReply(t, r, err, 64)
	time.Sleep(2500 * time.Millisecond) // the hold has passed: the ports are free again
	seen = serverSeesPeer(l)
	again, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, []byte("again"))
	if err != nil {
		t.Fatalf("after the hold: %v", err)
	}
	again.CloseWrite()
	if got := <-seen; got[1] != "again" {
		t.Fatalf("after the hold the server read %q", got[1])
	}
	again.Close()

	time.Sleep(4 * time.Second) // hold elapses; the blocks go back and are logged
	lines := readJSONLines(t, logPath)
	if raw, err := os.ReadFile(logPath); err == nil {
		t.Logf("mapping log:\n%s", raw)
	}
	allocs, releases := 0, 0
	for _, ln := range lines {
		switch ln["event"] {
		case "alloc":
			allocs++
		case "release":
			releases++
		}
		if (ln["client"] != "10.201.1.2" && ln["client"] != "10.201.2.2") || !strings.HasPrefix(ln["external"].(string), "10.201.100.") || ln["ports"] == nil || ln["time"] == nil {
			t.Errorf("log line %v", ln)
		}
		if _, has := ln["destination"]; has {
			t.Errorf("log line names a destination: %v", ln)
		}
	}
	if allocs < 2 || allocs != releases {
		t.Errorf("%d allocation and %d release lines, want one of each per block: %v", allocs, releases, lines)
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

// TestAddressPreservation: with --nat preserve the server sees the
// client's own address, over IPv4 and IPv6, and bytes flow both ways.
func TestAddressPreservation(t *testing.T) {
	e := newEnv(t)
	control := filepath.Join(t.TempDir(), "control.sock")
	e.startConverter("--nat", "preserve", "--server-iface", "sv", "--control", control)
	l := e.listen(e.serverNS(), "[::]:8051", false)
	for _, tc := range []struct {
		via  netip.AddrPort
		dest string
		want string
	}{
		{e.via4(), "10.201.3.2:8051", "10.201.1.2:"},
		{e.via6(), "[fd01:3::2]:8051", "[fd01:1::2]:"},
	} {
		seen := serverSeesPeer(l)
		c, err := e.convert(client.Options{Via: tc.via, Dest: netip.MustParseAddrPort(tc.dest), MPTCP: true}, []byte("preserved"))
		if err != nil {
			t.Fatalf("%s: %v", tc.dest, err)
		}
		c.CloseWrite()
		got := <-seen
		if !strings.HasPrefix(got[0], tc.want) || got[1] != "preserved" {
			t.Errorf("%s: server saw %s sending %q, want the client's address %s...", tc.dest, got[0], got[1], tc.want)
		}
		// The session table shows the source and how it was chosen.
		for _, s := range readSessions(t, control).Sessions {
			if s.Upstream.Local != got[0] || s.ServerSource != "preserved" {
				t.Errorf("session upstream %+v source %q, want %s preserved", s.Upstream, s.ServerSource, got[0])
			}
		}
		c.Close()
		time.Sleep(100 * time.Millisecond)
	}
}
