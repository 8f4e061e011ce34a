package netns

import (
	"encoding/json"
	"io"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// sessionsJSON is the contract of `converter sessions --json`.
type sessionsJSON struct {
	Sessions []struct {
		ID          uint64 `json:"id"`
		Token       string `json:"token"`
		Client      string `json:"client"`
		Destination string `json:"destination"`
		Upstream    struct {
			Local  string `json:"local"`
			Remote string `json:"remote"`
		} `json:"upstream"`
		State         string `json:"state"`
		BytesToServer int64  `json:"bytes_to_server"`
		BytesToClient int64  `json:"bytes_to_client"`
		Fallback      bool   `json:"fallback"`
		ServerSource  string `json:"server_source"`
		Subflows      []struct {
			Local         string `json:"local"`
			Remote        string `json:"remote"`
			BytesSent     int64  `json:"bytes_sent"`
			BytesReceived int64  `json:"bytes_received"`
			RTTMicros     int64  `json:"rtt_us"`
			Backup        bool   `json:"backup"`
		} `json:"subflows"`
	} `json:"sessions"`
}

func readSessions(t *testing.T, controlPath string) sessionsJSON {
	t.Helper()
	out, err := exec.Command(converterBin, "sessions", "--control", controlPath, "--json").Output()
	if err != nil {
		t.Fatalf("converter sessions: %v", err)
	}
	var s sessionsJSON
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("sessions JSON %q: %v", out, err)
	}
	return s
}

// TestSessionTable: during a transfer over two paths, `converter sessions`
// shows one session with two subflows that both carried bytes, and the
// upstream leg; after the session ends its entry is gone.
func TestSessionTable(t *testing.T) {
	e := newEnv(t)
	control := filepath.Join(t.TempDir(), "control.sock")
	e.startConverter("--control", control)
	l := e.listen(e.serverNS(), "10.201.3.2:8030", false)
	release := make(chan struct{})
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, io.LimitReader(c, 32<<20))
		<-release // hold the session open while the table is read
	}()
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8030"), MPTCP: true, AfterHandshake: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitSubflows(t, c.TCPConn, 2) // the join follows the converter's reply
	if _, err := io.Copy(c, stream(3, 32<<20)); err != nil {
		t.Fatal(err)
	}
	var s sessionsJSON
	deadline := time.Now().Add(5 * time.Second)
	for {
		s = readSessions(t, control)
		if len(s.Sessions) == 1 && len(s.Sessions[0].Subflows) == 2 && s.Sessions[0].BytesToServer >= 32<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(s.Sessions) != 1 {
		t.Fatalf("%d sessions, want 1: %+v", len(s.Sessions), s)
	}
	got := s.Sessions[0]
	t.Logf("session: %+v", got)
	if got.Destination != "10.201.3.2:8030" || !strings.HasPrefix(got.Client, "10.201.1.2:") || got.Fallback || len(got.Token) != 8 {
		t.Errorf("session fields: %+v", got)
	}
	if got.Upstream.Remote != "10.201.3.2:8030" || !strings.HasPrefix(got.Upstream.Local, "10.201.3.1:") {
		t.Errorf("upstream %+v", got.Upstream)
	}
	if got.BytesToServer < 32<<20 {
		t.Errorf("bytes to server %d, want at least 32 MiB", got.BytesToServer)
	}
	if len(got.Subflows) != 2 {
		t.Fatalf("%d subflows, want 2", len(got.Subflows))
	}
	for _, sf := range got.Subflows {
		// How the client's scheduler splits the bytes is its own affair
		// (the joined subflow starts with a 1 ms RTT estimate against
		// tens of microseconds on veth); each subflow must carry data.
		if sf.BytesReceived < 16<<10 {
			t.Errorf("subflow %s -> %s carried %d bytes", sf.Remote, sf.Local, sf.BytesReceived)
		}
	}
	close(release)
	c.Close()
	deadline = time.Now().Add(5 * time.Second)
	for len(readSessions(t, control).Sessions) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the ended session is still in the table")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
