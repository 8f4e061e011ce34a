// Package control serves the converter's session table and counters as
// JSON over HTTP on a unix socket, for `converter sessions` and operators.
//
//	GET /sessions        the table ({"sessions":[...]}), refreshed from the sockets
//	GET /sessions/{id}   one session
//	GET /stats           every registered counter source, by name
//	GET /metrics         the Prometheus metrics (text exposition format)
//	GET /ready           200 while the daemon takes new sessions, 503 otherwise
//	POST /reload         reload the configuration and answer the outcome
//	POST /handover       a successor takes over (101, then internal/handover)
//	POST /upgrade        run the binary on disk again; it takes over
//
// Add ?refresh=0 to a sessions request to skip the socket reads. The
// socket is mode 0600: only its owner (root) may use it.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/convert-tc/converter/session"
)

// DefaultSocket is where the daemon serves and the CLI looks by default.
const DefaultSocket = "/run/converter/control.sock"

// shutdownTimeout bounds how long Serve waits for requests in flight.
const shutdownTimeout = 5 * time.Second

// Server serves one session table and named counter sources.
type Server struct {
	table *session.Table
	log   *slog.Logger

	mu       sync.Mutex
	stats    map[string]func() any
	ready    func() (bool, string) // nil: always ready
	reload   func(context.Context) (any, bool)
	handover func(*net.UnixConn)
	upgrade  func(context.Context) (any, bool)
	metrics  http.Handler
	// clients counts the connections open to the socket.
	clients atomic.Int64
	// replace: Serve takes the socket path over from a live daemon (its
	// successor's hand-over) instead of refusing to start.
	replace bool
	// bound is the socket Bind created, for Serve, and its file.
	bound     *net.UnixListener
	boundPath string
	boundFile os.FileInfo
}

// Bind creates the socket at path now, so that it answers as soon as the
// caller announces itself; Serve(ctx, path) then serves on it.
func (s *Server) Bind(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ln, file, err := listen(path, s.replace)
	if err != nil {
		return err
	}
	s.bound, s.boundPath, s.boundFile = ln, path, file
	return nil
}

// SetHandover installs what POST /handover runs once the connection is
// switched to the hand-over protocol; fn owns the connection.
func (s *Server) SetHandover(fn func(*net.UnixConn)) {
	s.mu.Lock()
	s.handover = fn
	s.mu.Unlock()
}

// SetUpgrade installs what POST /upgrade runs: the outcome to answer and
// whether it succeeded (200, else 422).
func (s *Server) SetUpgrade(fn func(context.Context) (any, bool)) {
	s.mu.Lock()
	s.upgrade = fn
	s.mu.Unlock()
}

func (s *Server) upgradeHandler(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	fn := s.upgrade
	s.mu.Unlock()
	runAction(w, r, fn, "this daemon does not upgrade")
}

// runAction answers a POST that runs fn: its outcome as JSON, 200 when it
// succeeded, else 422; 501 when the daemon has no such action.
func runAction(w http.ResponseWriter, r *http.Request, fn func(context.Context) (any, bool), missing string) {
	if fn == nil {
		http.Error(w, missing, http.StatusNotImplemented)
		return
	}
	out, ok := fn(r.Context())
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusUnprocessableEntity)
	}
	json.NewEncoder(w).Encode(out)
}

// SetMetrics installs what GET /metrics serves (the daemon's Prometheus
// handler); until then it answers 503.
func (s *Server) SetMetrics(h http.Handler) {
	s.mu.Lock()
	s.metrics = h
	s.mu.Unlock()
}

func (s *Server) metricsHandler(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	h := s.metrics
	s.mu.Unlock()
	if h == nil {
		http.Error(w, "metrics are not set up yet", http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}

// Clients returns how many connections are open to the socket.
func (s *Server) Clients() int { return int(s.clients.Load()) }

// trackConn counts the connections open to the socket; a hijacked one
// (a hand-over) is no longer the HTTP server's.
func (s *Server) trackConn(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.clients.Add(1)
	case http.StateClosed, http.StateHijacked:
		s.clients.Add(-1)
	}
}

// ReplaceLive makes Serve replace a socket a live daemon still serves on:
// the successor of a hand-over takes the path over.
func (s *Server) ReplaceLive() {
	s.mu.Lock()
	s.replace = true
	s.mu.Unlock()
}

// SetReload installs what POST /reload runs: it returns the outcome to
// answer and whether it succeeded (200, else 422).
func (s *Server) SetReload(fn func(context.Context) (any, bool)) {
	s.mu.Lock()
	s.reload = fn
	s.mu.Unlock()
}

// Readiness is what GET /ready answers: whether the daemon takes new
// sessions, and its state in a word.
type Readiness struct {
	Ready bool   `json:"ready"`
	State string `json:"state"`
}

// SetReady installs the readiness check of GET /ready.
func (s *Server) SetReady(fn func() (bool, string)) {
	s.mu.Lock()
	s.ready = fn
	s.mu.Unlock()
}

// New returns a Server for table. Its counts are served in /stats as
// "session_table". A nil log discards.
func New(table *session.Table, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{table: table, log: log, stats: make(map[string]func() any)}
	s.Register("session_table", func() any { return table.Counts() })
	return s
}

// Register adds a counter source to /stats under name; fn must return
// something encoding/json can encode, and be safe to call concurrently.
func (s *Server) Register(name string, fn func() any) {
	s.mu.Lock()
	s.stats[name] = fn
	s.mu.Unlock()
}

// Handler returns the HTTP routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sessions", s.sessions)
	mux.HandleFunc("GET /sessions/{id}", s.session)
	mux.HandleFunc("GET /stats", s.statsHandler)
	mux.HandleFunc("GET /metrics", s.metricsHandler)
	// For health checks (load balancers, BGP speakers, systemd): 200 when
	// new sessions are taken, 503 otherwise.
	mux.HandleFunc("GET /ready", s.readyHandler)
	mux.HandleFunc("POST /reload", s.reloadHandler)
	mux.HandleFunc("POST /handover", s.handoverHandler)
	mux.HandleFunc("POST /upgrade", s.upgradeHandler)
	// Profiles, for operators chasing memory or CPU; the socket is root's.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	return mux
}

func (s *Server) sessions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, s.table.Snapshot(refresh(r)))
}

func (s *Server) session(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		http.Error(w, "session id must be a decimal number", http.StatusBadRequest)
		return
	}
	in, ok := s.table.Lookup(id, refresh(r))
	if !ok {
		http.Error(w, fmt.Sprintf("no session %d", id), http.StatusNotFound)
		return
	}
	writeJSON(w, in)
}

func (s *Server) readyHandler(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	fn := s.ready
	s.mu.Unlock()
	r := Readiness{Ready: true, State: "serving"}
	if fn != nil {
		r.Ready, r.State = fn()
	}
	w.Header().Set("Content-Type", "application/json")
	if !r.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(r)
}

func (s *Server) reloadHandler(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	fn := s.reload
	s.mu.Unlock()
	runAction(w, r, fn, "this daemon does not reload")
}

// HandoverUpgrade is the Upgrade token of POST /handover.
const HandoverUpgrade = "converter-handover"

func (s *Server) handoverHandler(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	fn := s.handover
	s.mu.Unlock()
	if fn == nil {
		http.Error(w, "this daemon does not hand over", http.StatusNotImplemented)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be taken over", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok || buf.Reader.Buffered() > 0 {
		conn.Close() // the protocol starts with the 101: nothing may precede it
		return
	}
	conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: "+HandoverUpgrade+"\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		conn.Close()
		return
	}
	fn(uc)
}

func (s *Server) statsHandler(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	fns := make(map[string]func() any, len(s.stats))
	for k, fn := range s.stats {
		fns[k] = fn
	}
	s.mu.Unlock()
	out := make(map[string]any, len(fns))
	for k, fn := range fns {
		out[k] = fn()
	}
	writeJSON(w, out)
}

func refresh(r *http.Request) bool {
	v := r.URL.Query().Get("refresh")
	return v != "0" && v != "false"
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(b, '\n'))
}

// Serve listens on the unix socket path (mode 0600) and serves until ctx
// ends; it then waits for requests in flight and removes the socket file.
func (s *Server) Serve(ctx context.Context, path string) error {
	s.mu.Lock()
	replace := s.replace
	ln, own := s.bound, s.boundFile
	if s.boundPath != path {
		ln = nil
	}
	s.bound = nil
	s.mu.Unlock()
	if ln == nil {
		var err error
		if ln, own, err = listen(path, replace); err != nil {
			return err
		}
	}
	// A successor may have replaced the file: remove only our own (known
	// from before it was in place: a successor can replace it at once).
	defer func() {
		if now, err := os.Stat(path); err == nil && os.SameFile(own, now) {
			os.Remove(path)
		}
	}()
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ConnState:         s.trackConn,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("control server on %s: %w", path, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("control server on %s: shut down: %w", path, err)
	}
	return nil
}

// Listen creates the unix socket at path with mode 0600. The socket is
// bound in a private (0700) directory, chmod-ed, then renamed into place,
// so it is never reachable with looser permissions whatever the umask. A
// stale socket left by a dead daemon is replaced; a live one is an error.
// The caller removes path after closing the listener.
func Listen(path string) (*net.UnixListener, error) {
	ln, _, err := listen(path, false)
	return ln, err
}

// listen is Listen; with replace a live daemon's socket is replaced too
// (the rename below is atomic: a client reaches one daemon or the other).
// It also returns the socket file's identity, taken before the file is in
// place: a successor may replace it as soon as it is.
func listen(path string, replace bool) (*net.UnixListener, os.FileInfo, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create the control socket's directory %s: %w", dir, err)
	}
	if !replace {
		if err := clearStale(path); err != nil {
			return nil, nil, err
		}
	} else if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, nil, fmt.Errorf("%s exists and is not a socket: not replacing it", path)
	}
	tmp, err := os.MkdirTemp(dir, ".control-")
	if err != nil {
		return nil, nil, fmt.Errorf("create a private directory in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(tmp, "sock"), Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("listen on a unix socket in %s: %w", tmp, err)
	}
	ln.SetUnlinkOnClose(false) // the file moves; Serve removes path
	if err := os.Chmod(filepath.Join(tmp, "sock"), 0o600); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("chmod 0600 the control socket: %w", err)
	}
	file, err := os.Stat(filepath.Join(tmp, "sock")) // rename keeps the file
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("stat the control socket: %w", err)
	}
	if err := os.Rename(filepath.Join(tmp, "sock"), path); err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("move the control socket to %s: %w", path, err)
	}
	return ln, file, nil
}

// clearStale removes a socket at path that nobody answers on.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket: not removing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another converter is running", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove the stale socket %s: %w", path, err)
	}
	return nil
}
