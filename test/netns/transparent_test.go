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
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket/layers"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
)

// transparentEnv is a lab whose converter namespace steers Convert SYNs
// from both client paths to a transparent converter.
type transparentEnv struct {
	*env
	conv    *converterProc
	control string
}

func newTransparentEnv(t *testing.T, extra ...string) *transparentEnv {
	e := newEnv(t)
	control := filepath.Join(t.TempDir(), "control.sock")
	args := append([]string{"--transparent", "--client-iface", lab.IfConvPath1, "--client-iface", lab.IfConvPath2,
		"--server-iface", lab.IfConvServer, "--control", control}, extra...)
	return &transparentEnv{env: e, conv: e.startConverter(args...), control: control}
}

func (e *transparentEnv) bpfStatus(t *testing.T) map[string]any {
	t.Helper()
	return bpfStatusAt(t, e.control)
}

// bpfStatusAt runs `converter bpf status --json` against a control socket.
func bpfStatusAt(t *testing.T, control string) map[string]any {
	t.Helper()
	out, err := exec.Command(converterBin, "bpf", "status", "--json", "--control", control).Output()
	if err != nil {
		t.Fatalf("bpf status: %v", err)
	}
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("bpf status %q: %v", out, err)
	}
	return v
}

func counter(v map[string]any, name string) float64 {
	c, _ := v["counters"].(map[string]any)
	n, _ := c[name].(float64)
	return n
}

// serverSeesPeer accepts one connection and reports the peer address the
// server saw and everything it read.
func serverSeesPeer(l *net.TCPListener) <-chan [2]string {
	out := make(chan [2]string, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			out <- [2]string{"", err.Error()}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		out <- [2]string{c.RemoteAddr().String(), string(b)}
	}()
	return out
}

// TestTransparentConversion: a Convert SYN addressed to the server itself
// is converted (the server sees the converter, the client gets an exact
// reply), over IPv4 and IPv6; plain TCP and plain MPTCP connections from
// the same client pass untouched and make no session.
func TestTransparentConversion(t *testing.T) {
	e := newTransparentEnv(t)
	l := e.listen(e.serverNS(), "[::]:8040", true)
	cases := []struct{ dest, convSide string }{
		{"10.201.3.2:8040", "10.201.3.1:"},
		{"[fd01:3::2]:8040", "[fd01:3::1]:"},
	}
	for _, tc := range cases {
		seen := serverSeesPeer(l)
		c, err := e.convert(client.Options{Via: netip.MustParseAddrPort(tc.dest), Dest: netip.MustParseAddrPort(tc.dest), MPTCP: true}, []byte("converted"))
		if err != nil {
			t.Fatalf("%s: %v", tc.dest, err)
		}
		if _, ok := c.Message.ExtendedTCPHeader(); !ok {
			t.Errorf("%s: reply %x has no Extended TCP Header", tc.dest, c.Reply)
		}
		c.CloseWrite()
		got := <-seen
		if !strings.HasPrefix(got[0], tc.convSide) || got[1] != "converted" {
			t.Errorf("%s: server saw %s sending %q, want the converter's %s... sending the client's bytes", tc.dest, got[0], got[1], tc.convSide)
		}
		c.Close()
	}
	ends := e.conv.waitRecords(t, "session end", 2)
	for _, r := range ends {
		if r["syn_ack_options"] != "exact" || r["original_destination"] == nil {
			t.Errorf("session end %v: want exact options and the original destination", r)
		}
	}

	for _, mptcp := range []bool{false, true} {
		seen := serverSeesPeer(l)
		err := e.inClient(func() error {
			d := net.Dialer{Timeout: 5 * time.Second}
			d.SetMultipathTCP(mptcp)
			c, err := d.Dial("tcp", "10.201.3.2:8040")
			if err != nil {
				return err
			}
			defer c.Close()
			c.Write([]byte("plain"))
			return c.(*net.TCPConn).CloseWrite()
		})
		if err != nil {
			t.Fatal(err)
		}
		got := <-seen
		if !strings.HasPrefix(got[0], "10.201.1.2:") || got[1] != "plain" {
			t.Errorf("plain (mptcp=%v) connection: server saw %s sending %q, want the client itself", mptcp, got[0], got[1])
		}
	}
	if n := len(e.conv.records("session end")); n != 2 {
		t.Errorf("%d sessions, want only the 2 converted ones", n)
	}
	st := e.bpfStatus(t)
	t.Logf("counters: %v", st["counters"])
	if counter(st, "steered") < 2 || counter(st, "passed") == 0 {
		t.Errorf("counters %v", st["counters"])
	}
}

// uploadWithSubflows sends n bytes one way through a transparent
// conversion and returns the client's subflows sampled while it ran;
// connected, if not nil, runs once the Convert reply is in.
func (e *transparentEnv) uploadWithSubflows(t *testing.T, dest string, n int64, connected func()) []sockinfo.Subflow {
	t.Helper()
	l := e.listen(e.serverNS(), dest, false)
	seen := make(chan int64, 1)
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			seen <- -1
			return
		}
		defer c.Close()
		got, _ := io.Copy(io.Discard, c)
		seen <- got
	}()
	ap := netip.MustParseAddrPort(dest)
	c, err := e.convert(client.Options{Via: ap, Dest: ap, MPTCP: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if connected != nil {
		connected()
	}
	waitSubflows(t, c.TCPConn, 2)
	sampler := sampleSubflows(c.TCPConn)
	if _, err := io.Copy(c, stream(11, n)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	sfs := sampler()
	c.CloseWrite()
	if got := <-seen; got != n {
		t.Fatalf("server got %d bytes, want %d", got, n)
	}
	return sfs
}

// TestTransparentJoinOriginalPort: the client's second path joins the
// original destination; the steering program assigns the MP_JOIN (its
// token is in the map) to the transparent listener the converter opened on
// that port, and both subflows carry bytes. How the client's scheduler
// splits them is its own affair: each subflow is asked for 16 KiB of data.
func TestTransparentJoinOriginalPort(t *testing.T) {
	e := newTransparentEnv(t)
	sfs := e.uploadWithSubflows(t, "10.201.3.2:8041", 32<<20, nil)
	checkTwoSubflowsMoved(t, sfs, 16<<10)
	for _, sf := range sfs {
		if sf.Remote.String() != "10.201.3.2:8041" {
			t.Errorf("subflow to %v, want the original destination", sf.Remote)
		}
	}
	if st := e.bpfStatus(t); counter(st, "joins_steered") < 1 {
		t.Errorf("no join steered: %v", st["counters"])
	}
}

// TestTransparentJoinAnnounced: with --announce, the converter's own
// address and port are announced (ADD_ADDR) and the client's extra subflow
// joins them; no steering is needed for it, and the steering program must
// not take it: the join's token is in its map, and a join assigned to the
// converter's port is refused by the kernel (MismatchPortSynRx, then
// MP_TCPRST, and the client does not try again).
//
// Where the join lands depends on a race: the converter puts the token in
// the map when it accepts the connection, while the kernel sends the
// ADD_ADDR from its path-manager worker once the connection is fully
// established, before or after that accept. On a real path the join comes
// a round trip after the ADD_ADDR, so the token is practically always there
// first; on the lab's zero-delay veths the join sometimes wins and never
// meets the steering program. The test holds the client's copy of the
// ADD_ADDR until the Convert reply is in (the token went into the map
// before the reply was written); the kernel sends it again after
// add_addr_timeout.
func TestTransparentJoinAnnounced(t *testing.T) {
	labtest.Require(t, "nft")
	e := newTransparentEnv(t, "--announce", "10.201.2.1:5125")
	// An ADD_ADDR the client did not echo is sent again after
	// add_addr_timeout, 120 s by default; make the held one cost a second.
	if out, err := e.lab.Command(context.Background(), e.converterNS(), "sysctl", "-w", "net.mptcp.add_addr_timeout=1").CombinedOutput(); err != nil {
		t.Fatalf("sysctl: %v %s", err, out)
	}
	// Only announced addresses: no client endpoint of its own.
	if out, err := e.lab.Command(context.Background(), e.clientNS(), "ip", "mptcp", "endpoint", "flush").CombinedOutput(); err != nil {
		t.Fatalf("flush client endpoints: %v %s", err, out)
	}
	// Drop ADD_ADDRs (MPTCP option subtype 3) reaching the client until
	// the connection is set up.
	nft := func(stdin string, args ...string) string {
		t.Helper()
		cmd := e.lab.Command(context.Background(), e.clientNS(), "nft", args...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v %s", args, err, out)
		}
		return string(out)
	}
	nft("table inet hold_add_addr {\n chain in {\n  type filter hook input priority 0;\n  tcp option mptcp subtype 3 counter drop\n }\n}\n", "-f", "-")
	release := func() {
		held := regexp.MustCompile(`packets \d+`).FindString(nft("", "list", "table", "inet", "hold_add_addr"))
		nft("", "delete", "table", "inet", "hold_add_addr")
		t.Logf("ADD_ADDRs held until the reply was in: %s", held)
	}
	before := netstatIn(t, e.converterNS())
	t.Cleanup(func() {
		if t.Failed() {
			logCounterDeltas(t, "converter", before, netstatIn(t, e.converterNS()))
			t.Logf("steering counters: %v", e.bpfStatus(t)["counters"])
		}
	})
	sfs := e.uploadWithSubflows(t, "10.201.3.2:8042", 32<<20, release)
	checkTwoSubflowsMoved(t, sfs, 16<<10)
	joined := false
	for _, sf := range sfs {
		joined = joined || sf.Remote.String() == "10.201.2.1:5125"
	}
	if !joined {
		t.Errorf("no subflow to the announced 10.201.2.1:5125: %v", sfs)
	}
	after := netstatIn(t, e.converterNS())
	if d := after["MPTcpExtMismatchPortSynRx"] - before["MPTcpExtMismatchPortSynRx"]; d != 0 {
		t.Errorf("the converter refused %d joins on the wrong port (MismatchPortSynRx)", d)
	}
	if after["MPTcpExtMPJoinPortAckRx"] == before["MPTcpExtMPJoinPortAckRx"] {
		t.Errorf("no join completed on the announced port (MPJoinPortAckRx)")
	}
}

// TestTransparentExactExtendedHeader: the option bytes the client receives
// in the Extended TCP Header equal those of the server's SYN+ACK in a
// capture on the server-facing interface.
func TestTransparentExactExtendedHeader(t *testing.T) {
	e := newTransparentEnv(t)
	l := e.listen(e.serverNS(), "10.201.3.2:8043", false)
	seen := serverSeesPeer(l)
	capt := e.startCapture(e.converterNS(), lab.IfConvServer, "tcp port 8043")
	dest := netip.MustParseAddrPort("10.201.3.2:8043")
	c, err := e.convert(client.Options{Via: dest, Dest: dest, MPTCP: true}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	<-seen
	opts, _ := c.Message.ExtendedTCPHeader()
	time.Sleep(200 * time.Millisecond)
	capt.Stop()
	var synAck []byte
	for _, p := range tcpPackets(t, capt) {
		if p.SYN && p.ACK && p.SrcPort == layers.TCPPort(8043) {
			synAck = p.Contents[20 : int(p.DataOffset)*4]
		}
	}
	if synAck == nil {
		t.Fatal("no SYN+ACK captured")
	}
	if !bytes.Equal(bytes.TrimRight(opts, "\x00"), bytes.TrimRight(synAck, "\x00")) {
		t.Fatalf("Extended TCP Header %x, server SYN+ACK options %x", opts, synAck)
	}
	t.Logf("SYN+ACK options %x returned exactly", synAck)
}

// TestTransparentStopCleansUp: stopping the daemon leaves no tcx link, no
// fwmark rule and no local route behind.
func TestTransparentStopCleansUp(t *testing.T) {
	e := newTransparentEnv(t)
	st := e.bpfStatus(t)
	progs := map[uint32]string{}
	for _, name := range []string{"steering", "synwin"} {
		if p, ok := st[name].(map[string]any); ok {
			progs[uint32(p["ProgramID"].(float64))] = name
		}
	}
	if len(progs) != 2 {
		t.Fatalf("bpf status shows %v, want the steering and synwin programs", progs)
	}
	e.conv.stop(t)
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		if info, err := it.Take().Info(); err == nil && progs[uint32(info.Program)] != "" {
			t.Errorf("a link of the %s program survived: %+v", progs[uint32(info.Program)], info)
		}
	}
	for _, args := range [][]string{{"-4", "rule"}, {"-6", "rule"}, {"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"}} {
		out, _ := e.lab.Command(context.Background(), e.converterNS(), "ip", args...).CombinedOutput()
		if strings.Contains(string(out), "0x2263") || strings.Contains(string(out), "table 2263") {
			t.Errorf("ip %v left behind:\n%s", args, out)
		}
	}
}

// TestTransparentMalformedFlood: malformed Convert SYNs (bad magic, huge
// lengths, truncated) aimed at the server are not steered and crash
// nothing, while a conversion running meanwhile stays intact.
func TestTransparentMalformedFlood(t *testing.T) {
	e := newTransparentEnv(t)
	echo(e.listen(e.serverNS(), "[::]:8044", false))
	dest := netip.MustParseAddrPort("10.201.3.2:8044")
	before := counter(e.bpfStatus(t), "steered")
	done := make(chan error, 1)
	go func() { done <- echoSessionWith(e.env, client.Options{Via: dest, Dest: dest, MPTCP: true}, 55, 8<<20) }()
	bad := [][]byte{
		{1, 6, 0, 0, 0x0a, 5, 0, 80},     // bad magic
		{1, 255, 0x22, 0x63, 0x0a, 5, 0}, // huge total length, truncated
		{1, 0, 0x22, 0x63},               // total length 0
		{2, 6, 0x22, 0x63, 0x0a, 5},      // wrong version
		{1, 6, 0x22},                     // truncated header
	}
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		e.inClient(func() error {
			c, err := client.DialRaw(ctx, dest, i%2 == 0, bad[i%len(bad)])
			if err == nil {
				c.SetLinger(0)
				c.Close()
			}
			return nil
		})
		cancel()
	}
	if err := <-done; err != nil {
		t.Fatalf("conversion during the flood: %v", err)
	}
	// A SYN whose header is right but whose message is cut short is a
	// Convert SYN: steering it is correct (the converter answers it); the
	// other 160 must pass to the server untouched.
	after := counter(e.bpfStatus(t), "steered")
	t.Logf("steered during the flood: %v of 200 malformed SYNs", after-before-1)
	if after-before > 41 {
		t.Errorf("steered went from %v to %v", before, after)
	}
	for _, r := range e.conv.records("refused") {
		if r["code"] != nil && r["code"] != float64(1) {
			t.Errorf("a malformed SYN was refused with %v", r)
		}
	}
}

// netstatIn reads the TCP and MPTCP counters of namespace ns.
func netstatIn(t *testing.T, ns string) map[string]uint64 {
	t.Helper()
	var out map[string]uint64
	err := lab.RunIn(ns, func() error {
		// thread-self: /proc/self/net is the main thread's namespace.
		b, err := os.ReadFile("/proc/thread-self/net/netstat")
		if err != nil {
			return err
		}
		out, err = parseNetstat(string(b))
		return err
	})
	if err != nil {
		t.Fatalf("netstat in %s: %v", ns, err)
	}
	return out
}

// waitSubflows waits until the connection has n established subflows.
func waitSubflows(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		sfs, err := sockinfo.GetSubflows(c)
		up := 0
		for _, sf := range sfs {
			if err == nil && sf.TCP.State == sockinfo.StateEstablished {
				up++
			}
		}
		if up >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d subflows after 6 s", n)
}
