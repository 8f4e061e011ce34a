package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/convert-tc/converter/client"
)

// webAddr is where the converter serves its live page, on the loopback of
// its own namespace: the browser runs there too.
const webAddr = "127.0.0.1:8080"

// TestWebPage opens the live page of `converter run --web` in a real
// headless Chromium while a download runs over two subflows: the rendered
// page must draw two paths for the session, a byte count that grows from
// one rendering to the next, and the Error code of a refusal made before.
// CONVERTER_WEB_SCREENSHOT=FILE keeps the screenshot (docs/web.png).
func TestWebPage(t *testing.T) {
	e := newEnv(t, "chromium")
	e.startConverter("--web", webAddr)
	serveDownloads(e.listen(e.serverNS(), "10.201.3.2:8000", false))
	url := "http://" + webAddr + "/"

	// A refusal, for the page's table of recent ones. 192.0.2.0/24 is
	// outside the lab's allowed destinations.
	_, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("192.0.2.1:80"), MPTCP: true}, nil)
	var refused *client.Error
	if !errors.As(err, &refused) {
		t.Fatalf("convert to 192.0.2.1:80: want an Error TLV, got %v", err)
	}
	// The page's server notes refusals from its first answer on: ask once,
	// then refuse again.
	chromium(t, e, 300, "--dump-dom", url)
	if _, err = e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("192.0.2.1:80"), MPTCP: true}, nil); !errors.As(err, &refused) {
		t.Fatalf("second convert to 192.0.2.1:80: want an Error TLV, got %v", err)
	}

	// The download: 1 GiB asked, read in bursts of 2 MiB five times a
	// second (10 MiB/s) until the test ends, so that bytes keep moving on
	// both paths while the page is looked at.
	c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8000"), MPTCP: true}, nil)
	if err != nil {
		t.Fatalf("convert: %v", err)
	}
	waitSubflows(t, c.TCPConn, 2)
	if _, err := fmt.Fprintf(c, "%d %d\n", 42, 1<<30); err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan int64)
	go func() {
		var n int64
		buf := make([]byte, 2<<20)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			m, err := io.ReadFull(c, buf)
			n += int64(m)
			if err != nil {
				done <- n
				return
			}
			select {
			case <-stop:
				done <- n
				return
			case <-tick.C:
			}
		}
	}()
	defer func() {
		close(stop)
		t.Logf("the client read %d bytes", <-done)
		c.Close()
	}()
	time.Sleep(1500 * time.Millisecond) // both subflows carry bytes

	first := parsePage(t, chromium(t, e, 300, "--dump-dom", url))
	time.Sleep(1500 * time.Millisecond)
	second := parsePage(t, chromium(t, e, 300, "--dump-dom", url))

	for i, p := range []page{first, second} {
		if len(p.sessions) != 1 {
			t.Fatalf("rendering %d: %d sessions drawn, want the download alone (refused ones are not drawn): %+v", i+1, len(p.sessions), p.sessions)
		}
	}
	var id string
	for k := range first.sessions {
		id = k
	}
	paths := first.subflows[id]
	if len(paths) != 2 {
		t.Fatalf("session %s is drawn with %d subflow paths, want 2: %+v", id, len(paths), paths)
	}
	for _, p := range paths {
		if p.state != "active" {
			t.Errorf("subflow %s drawn %s, want active", p.key, p.state)
		}
	}
	if b1, b2 := first.sessions[id], second.sessions[id]; b2 <= b1 {
		t.Errorf("session %s: %d bytes in the first rendering, %d in the second: the count does not grow", id, b1, b2)
	} else {
		t.Logf("session %s: %d bytes, then %d", id, b1, b2)
	}
	var sum1, sum2 int64
	for _, p := range first.subflows[id] {
		sum1 += p.bytes
	}
	for _, p := range second.subflows[id] {
		sum2 += p.bytes
	}
	if sum2 <= sum1 {
		t.Errorf("subflow bytes %d then %d: they do not grow", sum1, sum2)
	}
	for _, p := range second.subflows[id] {
		t.Logf("subflow %s: %s, %d bytes", p.key, p.state, p.bytes)
	}
	code := strconv.Itoa(int(refused.Code))
	if !slices.Contains(second.refusalCodes, code) {
		t.Errorf("the page lists refusals with codes %v, want %s (%s)", second.refusalCodes, code, refused.Code)
	}

	// The picture, with rates: the page needs two states a second apart.
	png := filepath.Join(t.TempDir(), "web.png")
	chromium(t, e, 600, "--screenshot="+png, "--window-size=1280,640", "--hide-scrollbars", url)
	b, err := os.ReadFile(png)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 10<<10 {
		t.Fatalf("screenshot: %d bytes, %v", len(b), err)
	}
	if keep := os.Getenv("CONVERTER_WEB_SCREENSHOT"); keep != "" {
		if err := os.WriteFile(keep, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot kept in %s", keep)
	}
}

// chromium runs headless Chromium in the converter namespace on url with
// args, letting the page run for budget ms of virtual time (the page's
// server paces its polls in real time: about one state per 100 ms of
// budget), and returns its standard output.
func chromium(t *testing.T, e *env, budget int, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	all := append([]string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--disable-extensions", "--disable-sync", "--disable-background-networking",
		"--user-data-dir=" + t.TempDir(),
		"--virtual-time-budget=" + strconv.Itoa(budget),
	}, args...)
	cmd := e.lab.Command(ctx, e.converterNS(), "chromium", all...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v; stderr:\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

// page is what a rendering of the live page shows, read from its DOM.
type page struct {
	sessions     map[string]int64         // session id -> bytes relayed (the card's data-bytes)
	subflows     map[string][]subflowPath // session id -> its subflow paths
	refusalCodes []string                 // the codes of the refusals listed
}

type subflowPath struct {
	key, state string
	bytes      int64
}

var (
	tagRe  = regexp.MustCompile(`<(div|path|tr)\b[^>]*>`)
	attrRe = regexp.MustCompile(`([a-z-]+)="([^"]*)"`)
)

func parsePage(t *testing.T, dom []byte) page {
	t.Helper()
	p := page{sessions: map[string]int64{}, subflows: map[string][]subflowPath{}}
	for _, tag := range tagRe.FindAll(dom, -1) {
		attrs := map[string]string{}
		for _, m := range attrRe.FindAllSubmatch(tag, -1) {
			attrs[string(m[1])] = string(m[2])
		}
		class := " " + attrs["class"] + " "
		n, _ := strconv.ParseInt(attrs["data-bytes"], 10, 64)
		switch {
		case bytes.HasPrefix(tag, []byte("<div")) && strings.Contains(class, " card "):
			p.sessions[attrs["data-session"]] = n
		case bytes.HasPrefix(tag, []byte("<path")) && strings.Contains(class, " subflow "):
			s := attrs["data-session"]
			p.subflows[s] = append(p.subflows[s], subflowPath{key: attrs["data-subflow"], state: attrs["data-state"], bytes: n})
		case bytes.HasPrefix(tag, []byte("<tr")):
			if c, ok := attrs["data-code"]; ok {
				p.refusalCodes = append(p.refusalCodes, c)
			}
		}
	}
	if len(p.sessions) == 0 && len(p.refusalCodes) == 0 && !bytes.Contains(dom, []byte(`id="counters"`)) {
		t.Fatalf("the page did not render:\n%s", dom)
	}
	return p
}
