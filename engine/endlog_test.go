package engine

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a bytes.Buffer safe for the writer goroutine and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// The writer keeps the records' order and their own times, and stop
// returns once every queued record is written.
func TestEndLogOrderAndTime(t *testing.T) {
	var out lockedBuffer
	l := startEndLog(slog.NewJSONHandler(&out, nil))
	made := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const n = 3 * endLogQueue // more than the queue holds: writes wait
	for i := range n {
		r := slog.NewRecord(made, slog.LevelInfo, "session end", 0)
		r.AddAttrs(slog.Int("session", i))
		l.write(r)
	}
	l.stop()
	lines := strings.Split(strings.TrimSpace(out.b.String()), "\n")
	if len(lines) != n {
		t.Fatalf("%d records written, want %d", len(lines), n)
	}
	for i, line := range lines {
		var rec struct {
			Time    time.Time `json:"time"`
			Session int       `json:"session"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Session != i || !rec.Time.Equal(made) {
			t.Fatalf("record %d: %+v, want session %d at %v", i, rec, i, made)
		}
	}
}
