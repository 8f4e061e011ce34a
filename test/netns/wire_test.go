package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/tlv"
)

func (e *env) startCapture(ns, iface, filter string) *labtest.Capture {
	e.t.Helper()
	return labtest.StartCapture(e.t, e.lab, ns, iface, filter)
}

// tcpPackets stops a capture and returns its TCP segments.
func tcpPackets(t *testing.T, c *labtest.Capture) []*layers.TCP {
	t.Helper()
	var out []*layers.TCP
	for _, s := range c.Segments(t) {
		out = append(out, s.TCP)
	}
	return out
}

// listenTFO opens a server listener that accepts data in SYNs with cookies,
// as an ordinary TFO server does.
func (e *env) listenTFO(addr string) *net.TCPListener {
	e.t.Helper()
	var l net.Listener
	err := lab.RunIn(e.serverNS(), func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 64) })
			return err
		}}
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// TestDataInSYN proves from captures that the Convert message and the
// first application bytes travel in the client's SYN and are acknowledged
// by the SYN+ACK, that once the server's TFO cookie is known the client's
// bytes ride in the server-leg SYN, and that the reply is the first data
// the client receives. It also feeds the capture to converter decode.
func TestDataInSYN(t *testing.T) {
	e := newEnv(t, "tcpdump")
	e.startConverter()
	l := e.listenTFO("10.201.3.2:8010")
	go func() {
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.ReadFull(c, make([]byte, 5))
				c.Write([]byte("world"))
			}()
		}
	}()
	clientCap := e.startCapture(e.converterNS(), "cv1", "tcp port 5124")
	serverCap := e.startCapture(e.converterNS(), "sv", "tcp port 8010")

	dest := netip.MustParseAddrPort("10.201.3.2:8010")
	req, _ := client.Options{Dest: dest}.Request()
	for i := range 2 { // the first server-leg SYN learns the cookie, the second uses it
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, []byte("hello"))
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		b, _ := io.ReadAll(c)
		if string(b) != "world" {
			t.Fatalf("session %d: got %q", i, b)
		}
		c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	clientCap.Stop()
	serverCap.Stop()

	synWithData, synAckAcked, firstData := 0, 0, map[layers.TCPPort][]byte{}
	seqs := map[layers.TCPPort]uint32{}
	for _, p := range tcpPackets(t, clientCap) {
		switch {
		case p.SYN && !p.ACK && p.DstPort == 5124 && bytes.Equal(p.Payload, append(req, "hello"...)):
			synWithData++
			seqs[p.SrcPort] = p.Seq
		case p.SYN && p.ACK && p.Ack == seqs[p.DstPort]+1+uint32(len(req)+5):
			synAckAcked++
		case !p.SYN && p.SrcPort == 5124 && len(p.Payload) > 0 && firstData[p.DstPort] == nil:
			firstData[p.DstPort] = p.Payload
		}
	}
	if synWithData != 2 || synAckAcked != 2 {
		t.Errorf("client leg: %d SYNs carried the message and data, %d SYN+ACKs acknowledged them; want 2 and 2", synWithData, synAckAcked)
	}
	for port, b := range firstData {
		var m tlv.Message
		if _, err := tlv.ParseReply(b, &m); err != nil {
			t.Errorf("first data to client port %d is %x, not a Convert reply: %v", port, b, err)
		} else if _, ok := m.ExtendedTCPHeader(); !ok {
			t.Errorf("reply %x has no Extended TCP Header", b)
		}
	}
	serverSYNs := 0
	for _, p := range tcpPackets(t, serverCap) {
		if p.SYN && !p.ACK {
			serverSYNs++
			t.Logf("server-leg SYN %d: %d payload bytes %q", serverSYNs, len(p.Payload), p.Payload)
			if serverSYNs == 2 && string(p.Payload) != "hello" {
				t.Errorf("second server-leg SYN carries %q, want the client's bytes (TFO cookie known)", p.Payload)
			}
		}
	}
	if serverSYNs != 2 {
		t.Errorf("%d server-leg SYNs, want 2", serverSYNs)
	}
	checkDecodeOfCapture(t, clientCap.Path)
}

// checkDecodeOfCapture runs converter decode on a real capture: per
// session one request (in the SYN) and one reply.
func checkDecodeOfCapture(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command(converterBin, "decode", "--pcap", path, "--json").Output()
	if err != nil {
		t.Fatalf("decode --pcap: %v\n%s", err, out)
	}
	var requests, replies int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var rec struct {
			SYN       bool   `json:"syn"`
			Direction string `json:"direction"`
			Message   struct {
				TLVs []struct {
					Name string `json:"name"`
				} `json:"tlvs"`
				Trailing int `json:"trailing_bytes"`
			} `json:"message"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("decode line %q: %v", line, err)
		}
		switch {
		case rec.Direction == "request" && rec.SYN && rec.Message.TLVs[0].Name == "Connect" && rec.Message.Trailing == 5:
			requests++
		case rec.Direction == "reply" && rec.Message.TLVs[0].Name == "Extended TCP Header":
			replies++
		}
	}
	if requests != 2 || replies != 2 {
		t.Errorf("decode found %d requests in SYNs and %d replies, want 2 and 2:\n%s", requests, replies, out)
	}
}

// TestDialsBeforeClientHandshake drops every non-SYN packet of the client
// at the converter, so the client's handshake cannot complete, and shows
// that the server still gets the client's first bytes: the converter acts
// on the SYN data alone, with no added round trip.
func TestDialsBeforeClientHandshake(t *testing.T) {
	e := newEnv(t, "nft")
	e.startConverter("--handshake-timeout", "15s")
	l := e.listen(e.serverNS(), "10.201.3.2:8011", false)
	got := make(chan string, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 5)
		io.ReadFull(c, b)
		got <- string(b)
		c.Write([]byte("late ok"))
		io.Copy(io.Discard, c)
	}()
	ruleset := `table inet cvtest {
	chain in {
		type filter hook input priority -10; policy accept;
		tcp dport 5124 tcp flags & syn == syn accept
		tcp dport 5124 counter drop
	}
}
`
	nft := e.lab.Command(context.Background(), e.converterNS(), "nft", "-f", "-")
	nft.Stdin = strings.NewReader(ruleset)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	type dialed struct {
		c   *client.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		c, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8011"), MPTCP: true}, []byte("early"))
		done <- dialed{c, err}
	}()
	select {
	case b := <-got:
		if b != "early" {
			t.Fatalf("server got %q", b)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the server got nothing while the client's handshake was blocked")
	}
	counters, _ := e.lab.Command(context.Background(), e.converterNS(), "nft", "list", "table", "inet", "cvtest").Output()
	if !strings.Contains(string(counters), "packets") || strings.Contains(string(counters), "packets 0 ") {
		t.Errorf("the drop rule dropped nothing:\n%s", counters)
	}
	e.lab.Command(context.Background(), e.converterNS(), "nft", "delete", "table", "inet", "cvtest").Run()
	d := <-done
	if d.err != nil {
		t.Fatalf("after the handshake completed: %v", d.err)
	}
	defer d.c.Close()
	d.c.CloseWrite()
	b, _ := io.ReadAll(d.c)
	if string(b) != "late ok" {
		t.Fatalf("client got %q", b)
	}
}

// TestConnectCLI drives `converter connect` as a lab engineer would: stdin
// to the server and the server's bytes to stdout, compared; and an Error
// TLV as exit status 3 with the code on stderr.
func TestConnectCLI(t *testing.T) {
	e := newEnv(t)
	e.startConverter()
	// The server reads everything, then answers with it: bulk both ways at
	// once would meet the kernel's TFO stall on the client (README).
	l := e.listen(e.serverNS(), "[::]:8012", false)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		c.Write(b)
	}()
	in := filepath.Join(t.TempDir(), "in")
	data, _ := io.ReadAll(stream(5, 1<<20))
	os.WriteFile(in, data, 0o600)

	cmd := e.lab.Command(context.Background(), e.clientNS(), converterBin, "connect", "--via", "10.201.1.1:5124", "10.201.3.2:8012")
	f, _ := os.Open(in)
	defer f.Close()
	cmd.Stdin = f
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("connect: %v\n%s", err, stderr.String())
	}
	if !bytes.Equal(stdout.Bytes(), data) {
		t.Fatalf("echo through converter connect: %d bytes back of %d, intact=%v", stdout.Len(), len(data), bytes.Equal(stdout.Bytes(), data))
	}

	cmd = e.lab.Command(context.Background(), e.clientNS(), converterBin, "connect", "--via", "[fd01:1::1]:5124", "[fd01:3::2]:9")
	cmd.Stdin = strings.NewReader("")
	stderr.Reset()
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errorsAs(err, &exit) || exit.ExitCode() != 3 || !strings.Contains(stderr.String(), "converter error 96 (Connection Reset)") {
		t.Fatalf("closed port: %v, stderr %q", err, stderr.String())
	}
}

// TestCheckInLab: `converter run --check` with a config file, in a
// namespace set up for a converter, finds nothing to complain about and
// starts nothing; a flag of another mode is a problem.
func TestCheckInLab(t *testing.T) {
	e := newEnv(t)
	cfg := filepath.Join(t.TempDir(), "converter.toml")
	os.WriteFile(cfg, []byte("listen = [\"[::]:5124\"]\nallow-destinations = [\"10.201.0.0/16\", \"fd01::/16\"]\nclient-iface = [\"cv1\", \"cv2\"]\ndrain-timeout = \"10s\"\n"), 0o644)
	out, err := e.lab.Command(context.Background(), e.converterNS(), converterBin, "run", "--check", "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration OK") {
		t.Fatalf("check of a good file: %v\n%s", err, out)
	}
	out, err = e.lab.Command(context.Background(), e.converterNS(), converterBin, "run", "--check", "--config", cfg, "--port-hold", "5s").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--port-hold has no effect") {
		t.Errorf("check with a flag of another mode: %v\n%s", err, out)
	}
}
