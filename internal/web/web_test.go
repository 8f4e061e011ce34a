package web

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
)

// fakeSource is a table and counters the test sets.
type fakeSource struct {
	mu       sync.Mutex
	sessions []session.Info
	stats    engine.Stats
	lookups  int
}

func (f *fakeSource) Snapshot(bool) session.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return session.Snapshot{Sessions: append([]session.Info(nil), f.sessions...)}
}

func (f *fakeSource) Lookup(id uint64, refresh bool) (session.Info, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if refresh {
		f.lookups++
	}
	for _, s := range f.sessions {
		if s.ID == id {
			s.BytesToClient += 1000 // "refreshed"
			return s, true
		}
	}
	return session.Info{}, false
}

func (f *fakeSource) Stats() engine.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.stats
	st.Refused = map[string]uint64{}
	for k, v := range f.stats.Refused {
		st.Refused[k] = v
	}
	return st
}

func (f *fakeSource) set(fn func(*fakeSource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// clock is a settable time.
type clock struct {
	t     time.Time
	slept []time.Duration
}

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func (c *clock) sleep(_ context.Context, d time.Duration) error {
	c.slept = append(c.slept, d)
	c.advance(d)
	return nil
}
func newClock() *clock            { return &clock{t: time.Unix(1_800_000_000, 0)} }
func code(c tlv.ErrorCode) *uint8 { u := uint8(c); return &u }
func ap(s string) netip.AddrPort  { return netip.MustParseAddrPort(s) }
func get(t *testing.T, h http.Handler, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Result()
}

func TestPageIsSelfContained(t *testing.T) {
	h := Handler(&fakeSource{})
	resp := get(t, h, "/")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET / = %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type %q", ct)
	}
	page := string(body)
	for _, want := range []string{"<svg", "api/state", "Recent refusals", "Counters", "setTimeout(poll"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "/*CSS*/") || strings.Contains(page, "/*JS*/") {
		t.Error("page still has its placeholders")
	}
	// Nothing fetched from elsewhere: no src= or href= at all, and the
	// only URL is the SVG namespace.
	if m := regexp.MustCompile(`(?i)\s(src|href)\s*=`).FindString(page); m != "" {
		t.Errorf("page loads a resource: %q", m)
	}
	for _, u := range regexp.MustCompile(`https?://[^\s"'<>)]+`).FindAllString(page, -1) {
		if u != "http://www.w3.org/2000/svg" {
			t.Errorf("page names a URL: %s", u)
		}
	}
	// The CSP allows exactly the inline script and style.
	csp := resp.Header.Get("Content-Security-Policy")
	for _, tag := range []string{"script", "style"} {
		m := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no inline <%s>", tag)
		}
		sum := sha256.Sum256([]byte(m[1]))
		if want := tag + "-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
}

func TestReadOnly(t *testing.T) {
	h := Handler(&fakeSource{})
	for _, path := range []string{"/", "/api/state"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", path, nil))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s = %d, want 405", path, rec.Code)
		}
	}
	if resp := get(t, h, "/other"); resp.StatusCode != 404 {
		t.Errorf("GET /other = %d, want 404", resp.StatusCode)
	}
}

func TestStateShape(t *testing.T) {
	src := &fakeSource{
		sessions: []session.Info{{
			ID: 7, Client: ap("10.201.1.2:40000"), Destination: ap("10.201.3.2:8000"),
			State: session.StateEstablished, BytesToClient: 5,
			Subflows: []session.SubflowInfo{
				{Local: ap("10.201.1.1:5124"), Remote: ap("10.201.1.2:40000"), BytesSent: 100, Initial: true},
				{Local: ap("10.201.2.1:5124"), Remote: ap("10.201.2.2:40001"), BytesSent: 200, Backup: true},
			},
		}},
		stats: engine.Stats{Accepted: 3, Converted: 2},
	}
	resp := get(t, Handler(src), "/api/state")
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var doc map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"time", "sessions", "sessions_total", "refusals", "counters"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("state lacks %q", k)
		}
	}
	var sessions []map[string]any
	json.Unmarshal(doc["sessions"], &sessions)
	if len(sessions) != 1 {
		t.Fatalf("sessions: %s", doc["sessions"])
	}
	s := sessions[0]
	if s["id"] != 7.0 || s["destination"] != "10.201.3.2:8000" || s["bytes_to_client"] != 1005.0 {
		t.Errorf("session (refreshed through Lookup): %v", s)
	}
	sfs, _ := s["subflows"].([]any)
	if len(sfs) != 2 || sfs[1].(map[string]any)["backup"] != true {
		t.Errorf("subflows: %v", sfs)
	}
	var counters map[string]any
	json.Unmarshal(doc["counters"], &counters)
	if counters["accepted"] != 3.0 || counters["converted"] != 2.0 {
		t.Errorf("counters: %v", counters)
	}
	if string(doc["refusals"]) != "[]" {
		t.Errorf("refusals: %s", doc["refusals"])
	}
}

func state(t *testing.T, h http.Handler) State {
	t.Helper()
	var st State
	if err := json.NewDecoder(get(t, h, "/api/state").Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSamplesShared(t *testing.T) {
	src, c := &fakeSource{sessions: []session.Info{{ID: 1}}}, newClock()
	h := newHandler(src, c.now, c.sleep)
	a := state(t, h)
	c.advance(minInterval / 2)
	b := state(t, h)
	if a.Time != b.Time || src.lookups != 1 {
		t.Errorf("a second poll within %v sampled again (times %d, %d; %d lookups)", minInterval, a.Time, b.Time, src.lookups)
	}
	c.advance(minInterval)
	if b = state(t, h); b.Time == a.Time || src.lookups != 2 {
		t.Errorf("no new sample after %v", minInterval)
	}
}

func TestSessionsCapped(t *testing.T) {
	src := &fakeSource{}
	for i := range MaxSessions + 10 {
		src.sessions = append(src.sessions, session.Info{ID: uint64(i + 1), State: session.StateEstablished})
	}
	src.sessions = append(src.sessions, session.Info{ID: 1000, State: session.StateRefused, ErrorCode: code(tlv.CodeNotAuthorized)})
	st := state(t, Handler(src))
	if len(st.Sessions) != MaxSessions || st.SessionsTotal != MaxSessions+11 {
		t.Fatalf("%d sessions of %d, want %d of %d", len(st.Sessions), st.SessionsTotal, MaxSessions, MaxSessions+11)
	}
	// The newest, not refused, in id order.
	if first, last := st.Sessions[0].ID, st.Sessions[MaxSessions-1].ID; first != 11 || last != MaxSessions+10 {
		t.Errorf("ids %d..%d, want 11..%d", first, last, MaxSessions+10)
	}
}

func TestRecentRefusals(t *testing.T) {
	src, c := &fakeSource{stats: engine.Stats{Refused: map[string]uint64{"Not Authorized": 4}}}, newClock()
	h := newHandler(src, c.now, c.sleep)
	if st := state(t, h); len(st.Refusals) != 0 {
		t.Fatalf("refusals counted before the first sample are not recent: %+v", st.Refusals)
	}

	// A refused session in the table, counted: one row with its details.
	unreach := tlv.CodeDestinationUnreachable.String()
	src.set(func(f *fakeSource) {
		f.stats.Refused[unreach] = 1
		f.sessions = []session.Info{{ID: 9, State: session.StateRefused, ErrorCode: code(tlv.CodeDestinationUnreachable), Error: unreach, Destination: ap("192.0.2.1:80")}}
	})
	c.advance(time.Second)
	st := state(t, h)
	if len(st.Refusals) != 1 || st.Refusals[0].Session != 9 || *st.Refusals[0].Code != 97 || st.Refusals[0].Destination != ap("192.0.2.1:80") {
		t.Fatalf("refusals: %+v", st.Refusals)
	}

	// Two refusals that came and went, and a reset: rows from the counters.
	src.set(func(f *fakeSource) {
		f.sessions = nil
		f.stats.Refused["Not Authorized"] = 6
		f.stats.Resets = 1
	})
	c.advance(time.Second)
	st = state(t, h)
	if len(st.Refusals) != 3 {
		t.Fatalf("refusals: %+v", st.Refusals)
	}
	byErr := map[string]Refusal{}
	for _, r := range st.Refusals {
		byErr[r.Error] = r
	}
	if r := byErr["Not Authorized"]; r.Count != 2 || r.Code == nil || *r.Code != 32 || r.Session != 0 {
		t.Errorf("Not Authorized row: %+v", r)
	}
	if r := byErr[nameReset]; r.Count != 1 || r.Code != nil {
		t.Errorf("reset row: %+v", r)
	}

	// A refusal counted in one sample whose session is seen refused in
	// the next (the counter moves first): one row, given its details.
	src.set(func(f *fakeSource) { f.stats.Refused["Not Authorized"] = 7 })
	c.advance(time.Second)
	counted := state(t, h).Refusals[0]
	src.set(func(f *fakeSource) {
		f.sessions = []session.Info{{ID: 12, State: session.StateRefused, ErrorCode: code(tlv.CodeNotAuthorized), Error: "Not Authorized"}}
	})
	c.advance(time.Second)
	st = state(t, h)
	if len(st.Refusals) != 4 || st.Refusals[0].Session != 12 || st.Refusals[0].Time != counted.Time {
		t.Errorf("refusals after the late session: %+v", st.Refusals)
	}
	// Seen once, listed once.
	c.advance(time.Second)
	if st = state(t, h); len(st.Refusals) != 4 {
		t.Errorf("refusals: %+v", st.Refusals)
	}
}

func TestCodeOf(t *testing.T) {
	for _, c := range tlv.AllErrorCodes {
		if got, ok := codeOf(c.String()); !ok || got != uint8(c) {
			t.Errorf("codeOf(%q) = %d, %v", c.String(), got, ok)
		}
	}
}

func TestPaced(t *testing.T) {
	src, c := &fakeSource{}, newClock()
	h := newHandler(src, c.now, c.sleep)
	first := state(t, h)
	c.advance(300 * time.Millisecond)
	var st State
	json.NewDecoder(get(t, h, fmt.Sprintf("/api/state?since=%d", first.Time)).Body).Decode(&st)
	if len(c.slept) != 1 || c.slept[0] != 700*time.Millisecond || st.Time != first.Time+1000 {
		t.Errorf("a poll 300ms after its state waited %v and got the state of %+dms", c.slept, st.Time-first.Time)
	}
	// Late, or with a since in the future: no wait, or one Interval at most.
	c.advance(3 * time.Second)
	get(t, h, fmt.Sprintf("/api/state?since=%d", st.Time))
	get(t, h, fmt.Sprintf("/api/state?since=%d", st.Time+60_000))
	if len(c.slept) != 2 || c.slept[1] != Interval {
		t.Errorf("waits %v", c.slept)
	}
}

func TestListenServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	l, err := Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, Handler(&fakeSource{})) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /api/state = %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after its context ended: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := Listen(context.Background(), "127.0.0.1:http:x"); err == nil || !strings.Contains(err.Error(), "--web") {
		t.Errorf("bad address: %v", err)
	}
}
