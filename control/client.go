package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/convert-tc/converter/session"
)

// FetchSessions asks the daemon serving on the unix socket path for its
// session table, refreshed from the sockets.
func FetchSessions(ctx context.Context, path string) (session.Snapshot, error) {
	var s session.Snapshot
	err := get(ctx, path, "/sessions", &s)
	return s, err
}

// FetchSession asks for one session.
func FetchSession(ctx context.Context, path string, id uint64) (session.Info, error) {
	var in session.Info
	err := get(ctx, path, "/sessions/"+strconv.FormatUint(id, 10), &in)
	return in, err
}

// FetchStats asks for the counters, by source name, undecoded.
func FetchStats(ctx context.Context, path string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := get(ctx, path, "/stats", &m)
	return m, err
}

// FetchReady reads GET /ready; a daemon that is not ready answers 503 with
// its state, which is returned without an error.
func FetchReady(ctx context.Context, path string) (Readiness, error) {
	var r Readiness
	err := get(ctx, path, "/ready", &r)
	if err != nil && r.State != "" {
		return r, nil
	}
	return r, err
}

// FetchMetrics reads GET /metrics: the Prometheus text exposition
// format, as a scraper gets it.
func FetchMetrics(ctx context.Context, path string) ([]byte, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://converter/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("control request /metrics: %w", err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("control request /metrics on %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("control request /metrics on %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("control request /metrics on %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// Reload asks the daemon to reload (POST /reload) and decodes its outcome
// into v; a refused reload answers 422 and returns an error too.
func Reload(ctx context.Context, path string, v any) error {
	return do(ctx, http.MethodPost, path, "/reload", v)
}

// Upgrade asks the daemon to start its binary again and hand over to it
// (POST /upgrade), and decodes the outcome into v; a failed upgrade
// answers 422 and returns an error too.
func Upgrade(ctx context.Context, path string, v any) error {
	return do(ctx, http.MethodPost, path, "/upgrade", v)
}

// get does one GET over the unix socket and decodes the JSON answer.
func get(ctx context.Context, path, route string, v any) error {
	return do(ctx, http.MethodGet, path, route, v)
}

// do does one request over the unix socket and decodes the JSON answer.
func do(ctx context.Context, method, path, route string, v any) error {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	defer tr.CloseIdleConnections()
	// The host is a placeholder: the transport always dials path.
	req, err := http.NewRequestWithContext(ctx, method, "http://converter"+route, nil)
	if err != nil {
		return fmt.Errorf("control request %s: %w", route, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("control request %s on %s: %w", route, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		json.Unmarshal(msg, v) // a JSON error body (GET /ready) is kept for the caller
		return fmt.Errorf("control request %s on %s: %s: %s", route, path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("control request %s on %s: decode the answer: %w", route, path, err)
	}
	return nil
}

// Handover asks the daemon on path to hand over (POST /handover) and
// returns the connection, switched to the internal/handover protocol.
// errors.Is(err, ErrNoDaemon) when nobody serves on path.
func Handover(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", path, ErrNoDaemon)
		}
		return nil, fmt.Errorf("hand-over request on %s: %w", path, err)
	}
	uc := c.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		uc.SetDeadline(dl)
	}
	req := "POST /handover HTTP/1.1\r\nHost: converter\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: " + HandoverUpgrade + "\r\n\r\n"
	if _, err := io.WriteString(uc, req); err != nil {
		uc.Close()
		return nil, fmt.Errorf("hand-over request on %s: %w", path, err)
	}
	// Read the answer's head a byte at a time: what follows it belongs
	// to the hand-over protocol, with file descriptors, and must not be
	// read ahead.
	head, err := readHead(uc)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("hand-over request on %s: %w", path, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(head)), nil)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("hand-over request on %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		uc.Close()
		return nil, fmt.Errorf("hand-over request on %s: %s (a daemon without hand-over?)", path, resp.Status)
	}
	uc.SetDeadline(time.Time{})
	return uc, nil
}

// ErrNoDaemon: no daemon serves on the control socket.
var ErrNoDaemon = errors.New("no converter serves on this control socket")

func readHead(c net.Conn) (string, error) {
	var b strings.Builder
	one := make([]byte, 1)
	for !strings.HasSuffix(b.String(), "\r\n\r\n") {
		if b.Len() > 4096 {
			return "", errors.New("answer head too long")
		}
		if _, err := io.ReadFull(c, one); err != nil {
			return "", err
		}
		b.WriteByte(one[0])
	}
	return b.String(), nil
}
