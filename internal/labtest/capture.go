package labtest

import (
	"bufio"
	"context"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/convert-tc/converter/lab"
)

// Capture is tcpdump writing one interface of a lab namespace to a pcap
// file, for tests that check what crossed the wire.
type Capture struct {
	Path string
	cmd  *exec.Cmd
	once sync.Once
}

// StartCapture starts tcpdump and waits until it captures; it returns nil
// when tcpdump is not installed (callers that need it Require it). The
// capture stops when the test ends, if not before.
func StartCapture(t testing.TB, l *lab.Lab, ns, iface, filter string) *Capture {
	t.Helper()
	if _, err := exec.LookPath("tcpdump"); err != nil {
		return nil
	}
	path := filepath.Join(t.TempDir(), iface+".pcap")
	// -Z root: the file sits in root's temp dir; --immediate-mode: no
	// packet may wait in a kernel block when SIGINT comes.
	cmd := l.Command(context.Background(), ns, "tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "0", "-i", iface, "-w", path, filter)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	c := &Capture{Path: path, cmd: cmd}
	t.Cleanup(c.Stop)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(ready)
				io.Copy(io.Discard, stderr)
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpdump on %s did not start", iface)
	}
	// tcpdump announces itself before its filter is in place; packets
	// sent in the next few hundred milliseconds can be missed.
	time.Sleep(time.Second)
	return c
}

// Stop ends the capture; later calls do nothing.
func (c *Capture) Stop() {
	c.once.Do(func() {
		c.cmd.Process.Signal(syscall.SIGINT)
		c.cmd.Wait()
	})
}

// Segment is one captured TCP segment and its network-layer source.
type Segment struct {
	Src netip.Addr
	TCP *layers.TCP
}

// Segments stops the capture and decodes its TCP segments.
func (c *Capture) Segments(t testing.TB) []Segment {
	t.Helper()
	c.Stop()
	f, err := os.Open(c.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("read %s: %v", c.Path, err)
	}
	var out []Segment
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			return out
		}
		p := gopacket.NewPacket(data, r.LinkType(), gopacket.Default)
		tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok || p.NetworkLayer() == nil {
			continue
		}
		src, _ := netip.AddrFromSlice(p.NetworkLayer().NetworkFlow().Src().Raw())
		out = append(out, Segment{Src: src.Unmap(), TCP: tcp})
	}
}
