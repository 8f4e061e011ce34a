// Package web serves the live page of `converter run --web ADDR:PORT`: the
// converted connections drawn as paths (each client subflow to the
// converter, the server leg beyond it), bytes and rates updating every
// second, backup and closed subflows marked, the Error codes of recent
// refusals and the counters.
//
//	GET /            the page: one HTML document, its CSS and JS inline,
//	                 embedded in the binary (no CDN, nothing else to fetch)
//	GET /api/state   what the page draws, as JSON; the page polls it with
//	                 ?since=T (the time of the state it has), answered once
//	                 a second has passed since T
//
// It is read-only and shows what `converter sessions --json` and the
// counters of `GET /stats` already show, nothing more. It has no
// authentication: bind it to a loopback or lab address.
//
// Rates are computed by the page from two successive states and their
// server-side sample times. The session table forgets a subflow when the
// kernel closes it and a session when it ends: the page keeps them on
// screen, greyed, for a while. A refused session leaves the table as soon
// as its Error TLV is sent, so recent refusals are kept here, from the
// time this handler first answered: each is taken from a refused session
// seen in the table (with its id and destination) or, when it came and
// went between two samples, from the engine's per-code counters.
package web

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/convert-tc/converter/engine"
	"github.com/convert-tc/converter/internal/reuseport"
	"github.com/convert-tc/converter/session"
	"github.com/convert-tc/converter/tlv"
)

// Source is what the page shows: the session table and the engine's
// counters. *session.Table provides the first two methods; FromServer
// makes a Source of a running engine.
type Source interface {
	// Snapshot lists the sessions; the page asks without refresh.
	Snapshot(refresh bool) session.Snapshot
	// Lookup reads one session, refreshed from its sockets.
	Lookup(id uint64, refresh bool) (session.Info, bool)
	// Stats returns the engine's counters.
	Stats() engine.Stats
}

// FromServer is the Source of a running engine: its table and counters.
func FromServer(srv *engine.Server) Source { return serverSource{srv.Table(), srv} }

type serverSource struct {
	*session.Table
	srv *engine.Server
}

func (s serverSource) Stats() engine.Stats { return s.srv.Stats() }

const (
	// Interval is the time between two states a page gets.
	Interval = time.Second
	// MaxSessions is how many sessions a state holds at most (the newest
	// that are not refused); SessionsTotal says how many there were.
	MaxSessions = 64
	// MaxRefusals is how many recent refusals a state holds.
	MaxRefusals = 32
	// minInterval is the least time between two samples: viewers polling
	// faster, or many at once, share one.
	minInterval = 500 * time.Millisecond
	// attributeWithin is how long a refusal known only from the counters
	// may still be matched with the refused session seen later.
	attributeWithin = 5 * time.Second
)

// State is the document of GET /api/state.
type State struct {
	// Time is when the sample was taken, in Unix milliseconds: the page
	// divides byte differences by differences of Time.
	Time          int64          `json:"time"`
	Sessions      []session.Info `json:"sessions"`
	SessionsTotal int            `json:"sessions_total"`
	Refusals      []Refusal      `json:"refusals"`
	Counters      engine.Stats   `json:"counters"`
}

// Refusal is one recent refusal, or Count of them with the same code that
// came and went between two samples.
type Refusal struct {
	Time int64 `json:"time"` // Unix milliseconds of the sample that saw it
	// Code and Error name the Error TLV; Code is absent for a reset or a
	// silent abort (Error says which).
	Code  *uint8 `json:"code,omitempty"`
	Error string `json:"error"`
	Count uint64 `json:"count"`
	// Session and Destination are known when the refused session was
	// seen in the table.
	Session     uint64         `json:"session,omitempty"`
	Destination netip.AddrPort `json:"destination,omitzero"`
}

//go:embed page
var pageFS embed.FS

// page is the document served at /, its CSS and JS inlined, and the
// Content-Security-Policy that allows exactly them.
var page, pageCSP = buildPage()

func buildPage() ([]byte, string) {
	read := func(name string) string {
		b, err := pageFS.ReadFile("page/" + name)
		if err != nil {
			panic(err) // embedded at build time
		}
		return string(b)
	}
	css, js := read("page.css"), read("page.js")
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	html := strings.NewReplacer("/*CSS*/", css, "/*JS*/", js).Replace(read("index.html"))
	csp := "default-src 'none'; connect-src 'self'; img-src data:; style-src " + hash(css) +
		"; script-src " + hash(js) + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	return []byte(html), csp
}

// Handler serves the page and its state from src.
func Handler(src Source) http.Handler { return newHandler(src, time.Now, sleep) }

func newHandler(src Source, now func() time.Time, sleep func(context.Context, time.Duration) error) http.Handler {
	h := &handler{src: src, now: now, sleep: sleep}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.page)
	mux.HandleFunc("GET /api/state", h.state)
	return mux
}

type handler struct {
	src   Source
	now   func() time.Time
	sleep func(context.Context, time.Duration) error

	mu       sync.Mutex
	last     *State // the latest sample, shared until minInterval passed
	lastJSON []byte
	ref      refusals
}

func (h *handler) page(w http.ResponseWriter, _ *http.Request) {
	hd := w.Header()
	hd.Set("Content-Type", "text/html; charset=utf-8")
	hd.Set("Content-Security-Policy", pageCSP)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-cache")
	w.Write(page)
}

func (h *handler) state(w http.ResponseWriter, r *http.Request) {
	if v := r.URL.Query().Get("since"); v != "" {
		// The page passes the time of the state it has: answer once
		// Interval has passed since, so that it gets a state a second
		// whatever its timers do (a headless browser's run on virtual
		// time).
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
			if wait := time.UnixMilli(ms).Add(Interval).Sub(h.now()); wait > 0 {
				if h.sleep(r.Context(), min(wait, Interval)) != nil {
					return // the viewer left
				}
			}
		}
	}
	b, err := h.sample()
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cache-Control", "no-store")
	w.Write(b)
}

// sample returns the state as JSON, taken now unless the last one is
// younger than minInterval.
func (h *handler) sample() ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if h.last != nil && now.Sub(time.UnixMilli(h.last.Time)) < minInterval {
		return h.lastJSON, nil
	}
	// Counters first: a refusal is counted before its session is marked
	// refused, so a refused session seen here is always counted too.
	st := &State{Time: now.UnixMilli(), Counters: h.src.Stats()}
	all := h.src.Snapshot(false).Sessions
	h.ref.observe(now, st.Counters, all)
	st.Refusals = h.ref.recent()

	live := make([]session.Info, 0, min(len(all), MaxSessions))
	for i := len(all) - 1; i >= 0 && len(live) < MaxSessions; i-- { // newest first
		if all[i].State == session.StateRefused {
			continue
		}
		live = append(live, all[i])
	}
	st.SessionsTotal = len(all)
	for i, in := range live {
		// Only the drawn sessions are read from their sockets.
		if fresh, ok := h.src.Lookup(in.ID, true); ok {
			live[i] = fresh
		}
	}
	slices.Reverse(live) // by id, as the table lists them
	st.Sessions = live
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	h.last, h.lastJSON = st, append(b, '\n')
	return h.lastJSON, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// refusals keeps the recent refusals, newest first.
type refusals struct {
	started bool
	prev    map[string]uint64 // the engine's counters at the last sample, by Error name
	resets  uint64
	aborts  uint64
	seen    map[uint64]bool // refused sessions already listed
	list    []Refusal
}

const (
	nameReset = "reset"
	nameAbort = "silent abort"
)

// observe takes one sample: refused sessions not seen before, and counter
// increases not explained by them.
func (r *refusals) observe(now time.Time, st engine.Stats, all []session.Info) {
	ms := now.UnixMilli()
	cur := make(map[string]uint64, len(st.Refused)+2)
	for k, v := range st.Refused {
		cur[k] = v
	}
	delta := map[string]uint64{}
	if r.started {
		for k, v := range cur {
			if v > r.prev[k] {
				delta[k] = v - r.prev[k]
			}
		}
		if st.Resets > r.resets {
			delta[nameReset] = st.Resets - r.resets
		}
		if st.Aborts > r.aborts {
			delta[nameAbort] = st.Aborts - r.aborts
		}
	}
	r.started, r.prev, r.resets, r.aborts = true, cur, st.Resets, st.Aborts

	present := make(map[uint64]bool)
	for _, in := range all {
		if in.State != session.StateRefused || in.ErrorCode == nil {
			continue
		}
		present[in.ID] = true
		if r.seen[in.ID] {
			continue
		}
		if r.seen == nil {
			r.seen = map[uint64]bool{}
		}
		r.seen[in.ID] = true
		row := Refusal{Time: ms, Code: in.ErrorCode, Error: in.Error, Count: 1, Session: in.ID, Destination: in.Destination}
		switch {
		case delta[in.Error] > 0:
			delta[in.Error]-- // counted in this sample
		case r.attribute(row, ms):
			continue // counted in an earlier sample, listed then without details
		}
		r.add(row)
	}
	for id := range r.seen {
		if !present[id] {
			delete(r.seen, id) // gone from the table: it cannot be seen again
		}
	}
	names := make([]string, 0, len(delta))
	for k := range delta {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		if n := delta[name]; n > 0 {
			row := Refusal{Time: ms, Error: name, Count: n}
			if c, ok := codeOf(name); ok {
				row.Code = &c
			}
			r.add(row)
		}
	}
}

// attribute gives a row counted earlier without details (a refusal whose
// counter was read before its session was marked) the details of row.
func (r *refusals) attribute(row Refusal, now int64) bool {
	for i := range r.list {
		old := &r.list[i]
		if now-old.Time > attributeWithin.Milliseconds() {
			break // newest first
		}
		if old.Session != 0 || old.Error != row.Error {
			continue
		}
		row.Time = old.Time
		if old.Count == 1 {
			*old = row
		} else {
			old.Count--
			r.list = slices.Insert(r.list, i+1, row)
		}
		return true
	}
	return false
}

func (r *refusals) add(row Refusal) {
	r.list = slices.Insert(r.list, 0, row)
	if len(r.list) > MaxRefusals {
		r.list = r.list[:MaxRefusals]
	}
}

func (r *refusals) recent() []Refusal { return append([]Refusal{}, r.list...) }

// codeByName maps the Error names engine.Stats keys its refusals by back
// to their codes.
var codeByName = func() map[string]uint8 {
	m := make(map[string]uint8, 256)
	for c := 255; c >= 0; c-- {
		m[tlv.ErrorCode(c).String()] = uint8(c)
	}
	return m
}()

func codeOf(name string) (uint8, bool) {
	c, ok := codeByName[name]
	return c, ok
}

// Listen opens the page's TCP listener, so that a bad address fails the
// daemon's start rather than its serving (internal/reuseport: an
// upgrade's successor binds it too).
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	l, err := reuseport.Listen(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("--web %s: %w", addr, err)
	}
	return l, nil
}

// Serve serves h on l until ctx ends, then waits a little for requests in
// flight.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	stopped, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
		case <-stopped:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	close(stopped)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
