package netns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/tlv"
)

// The attacker's suite: a subscriber who tries to use the converter as an
// open proxy, to reach the converter's own host, or to take more than its
// share. Each attack must get the RFC's answer and cost nobody else.

// hostListener listens on every address of the converter's namespace and
// counts what it accepts: a stand-in for sshd on the converter host.
func (e *env) hostListener(t *testing.T, port int) *atomic.Int64 {
	t.Helper()
	var accepted atomic.Int64
	l := e.listen(e.converterNS(), fmt.Sprintf("[::]:%d", port), false) // dual stack
	serveEach(l, func(*net.TCPConn) { accepted.Add(1) })
	return &accepted
}

// convertFrom opens a Convert connection from a chosen client address and
// returns the Error code the converter answered with, or -1 on success
// (the connection then stays open until the test ends).
func (e *env) convertFrom(t *testing.T, local netip.Addr, via, dest netip.AddrPort) int {
	t.Helper()
	c, err := e.convert(client.Options{Via: via, Dest: dest, MPTCP: true, Local: local}, nil)
	var ce *client.Error
	switch {
	case err == nil:
		return -1
	case errors.As(err, &ce):
		return int(ce.Code)
	}
	t.Fatalf("convert %v via %v from %v: %v", dest, via, local, err)
	_ = c
	return 0
}

// TestAttackDestinations: every way to name a destination the converter
// must not reach gets Not Authorized (Malformed Message for loopback and
// multicast, as the protocol says), and nothing reaches a service on the
// converter host.
func TestAttackDestinations(t *testing.T) {
	e := newEnv(t)
	e.startConverter(append([]string{"--nat", "share", "--pool", "10.201.100.0/29", "--hairpin"}, labDestinations...)...)
	accepted := e.hostListener(t, 2222)
	// A session that holds a pool mapping, for the hairpin attempt.
	l := e.listen(e.serverNS(), "10.201.3.2:8070", false)
	seen := serverSeesPeer(l)
	held, err := e.convert(client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8070"), MPTCP: true}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	held.CloseWrite()
	mapped := netip.MustParseAddrPort((<-seen)[0])

	attacks := []struct {
		what string
		dest string
		want tlv.ErrorCode
	}{
		{"the converter's own address", "10.201.1.1:2222", tlv.CodeNotAuthorized},
		{"its own address, IPv4-mapped", "[::ffff:10.201.1.1]:2222", tlv.CodeNotAuthorized},
		{"its server-side address", "10.201.3.1:2222", tlv.CodeNotAuthorized},
		{"its own IPv6 address", "[fd01:1::1]:2222", tlv.CodeNotAuthorized},
		{"its own Convert port", "10.201.1.1:5124", tlv.CodeNotAuthorized},
		{"an unassigned pool address", "10.201.100.5:2222", tlv.CodeNotAuthorized},
		{"the pool's network address", "10.201.100.0:2222", tlv.CodeNotAuthorized},
		{"a hairpin to a mapped pool address", mapped.String(), tlv.CodeNotAuthorized},
		{"the server subnet's broadcast", "10.201.3.255:2222", tlv.CodeNotAuthorized},
		{"loopback", "127.0.0.1:2222", tlv.CodeMalformedMessage},
		{"loopback, IPv4-mapped", "[::ffff:127.0.0.1]:2222", tlv.CodeMalformedMessage},
		{"IPv6 loopback", "[::1]:2222", tlv.CodeMalformedMessage},
		{"cloud metadata", "169.254.169.254:80", tlv.CodeNotAuthorized},
		{"cloud metadata, IPv4-mapped", "[::ffff:169.254.169.254]:80", tlv.CodeNotAuthorized},
		{"cloud metadata through NAT64", "[64:ff9b::a9fe:a9fe]:80", tlv.CodeNotAuthorized},
		{"cloud metadata through the local-use NAT64 prefix", "[64:ff9b:1::a9fe:a9fe]:80", tlv.CodeNotAuthorized},
		{"private 192.168/16", "192.168.1.1:80", tlv.CodeNotAuthorized},
		{"private 172.16/12", "172.16.0.1:80", tlv.CodeNotAuthorized},
		{"private 10/8 outside the lab", "10.9.9.9:80", tlv.CodeNotAuthorized},
		{"shared 100.64/10", "100.64.0.1:80", tlv.CodeNotAuthorized},
		{"ULA outside the lab", "[fd00::1]:80", tlv.CodeNotAuthorized},
		{"IPv6 link-local", "[fe80::1]:80", tlv.CodeNotAuthorized},
		{"this network", "0.0.0.1:80", tlv.CodeNotAuthorized},
		{"reserved 240/4", "240.0.0.1:80", tlv.CodeNotAuthorized},
		{"a 6to4 form of a private address", "[2002:a00:1::1]:80", tlv.CodeNotAuthorized},
	}
	for _, a := range attacks {
		req, err := client.Options{Dest: netip.MustParseAddrPort(a.dest)}.Request()
		if err != nil {
			t.Fatal(err)
		}
		r, err := e.rawExchange(e.via4(), req, false)
		if err != nil {
			t.Errorf("%s (%s): %v", a.what, a.dest, err)
			continue
		}
		var m tlv.Message
		if _, perr := tlv.ParseReply(r, &m); perr != nil {
			t.Errorf("%s (%s): reply %x: %v", a.what, a.dest, r, perr)
			continue
		}
		got, ok := m.Error()
		if !ok || got.Code != a.want {
			t.Errorf("%s (%s): reply %x, want Error %d (%s)", a.what, a.dest, r, a.want, a.want)
			continue
		}
		t.Logf("%s (%s): %s", a.what, a.dest, got.Code)
	}
	time.Sleep(100 * time.Millisecond) // a connect in flight would have landed by now
	if n := accepted.Load(); n != 0 {
		t.Errorf("a service on the converter host accepted %d connections", n)
	}
}

// TestAttackSessionCap: a client at its session cap is refused with
// Resource Exceeded while another client still converts.
func TestAttackSessionCap(t *testing.T) {
	e := newEnv(t)
	e.startConverter("--max-sessions-per-client", "3", "--backoff", "11")
	echo(e.listen(e.serverNS(), "10.201.3.2:8071", false))
	dest := netip.MustParseAddrPort("10.201.3.2:8071")
	greedy, other := e.a.ClientPath1V4, e.a.ClientPath2V4
	for i := range 3 {
		if code := e.convertFrom(t, greedy, e.via4(), dest); code != -1 {
			t.Fatalf("session %d of the greedy client: Error %d", i, code)
		}
	}
	if code := e.convertFrom(t, greedy, e.via4(), dest); code != int(tlv.CodeResourceExceeded) {
		t.Errorf("the greedy client's fourth session: Error %d, want %d", code, tlv.CodeResourceExceeded)
	}
	if code := e.convertFrom(t, other, e.via4(), dest); code != -1 {
		t.Errorf("another client: Error %d, want a conversion", code)
	}
}

// TestAttackIPv6Prefix: one subscriber's /64 holds many addresses; all of
// them together are one client, for the session cap and for the pool, so
// they cannot exhaust the pool for the next subscriber.
func TestAttackIPv6Prefix(t *testing.T) {
	e := newEnv(t)
	// One block of 4 ports per client on a pool of 4 addresses.
	e.startConverter("--nat", "share", "--pool", "fd01:100::/126", "--port-block", "4", "--max-blocks-per-client", "1")
	echo(e.listen(e.serverNS(), "[fd01:3::2]:8072", false))
	dest := netip.MustParseAddrPort("[fd01:3::2]:8072")
	var locals []netip.Addr
	for i := range 12 {
		a := netip.MustParseAddr(fmt.Sprintf("fd01:1::%x", 0x1000+i))
		run(t, e, e.clientNS(), "ip", "-6", "addr", "add", a.String()+"/64", "dev", "c1", "nodad")
		locals = append(locals, a)
	}
	converted, refused := 0, 0
	for _, a := range locals {
		switch code := e.convertFrom(t, a, e.via6(), dest); code {
		case -1:
			converted++
		case int(tlv.CodeResourceExceeded):
			refused++
		default:
			t.Errorf("from %v: Error %d", a, code)
		}
	}
	t.Logf("12 addresses of one /64: %d converted, %d refused", converted, refused)
	if converted != 4 || refused != 8 {
		t.Errorf("one /64 got %d sessions (want its one block of 4), %d refused", converted, refused)
	}
	if code := e.convertFrom(t, e.a.ClientPath2V6, e.via6(), dest); code != -1 {
		t.Errorf("the next subscriber (another /64): Error %d, want a conversion", code)
	}
}

// run runs a command in a lab namespace and fails the test on error.
func run(t *testing.T, e *env, ns string, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := e.lab.Command(ctx, ns, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestAttackTransparentPorts: in transparent mode each destination port
// in use needs a per-port listener for joins. Sessions to 1,000 distinct
// ports, 40 held at a time, open no more listeners than the cap, and
// none is left once the sessions end.
func TestAttackTransparentPorts(t *testing.T) {
	const portCap, ports, held = 25, 1000, 40
	e := newTransparentEnv(t, "--max-transparent-ports", fmt.Sprint(portCap), "--rate-per-client", "0")
	// One server listener answers every port: nft redirects them to it.
	l := e.listen(e.serverNS(), "10.201.3.2:8099", false)
	echo(l)
	nftIn(t, e.env, e.serverNS(), "table ip cvtest {\n chain pre {\n  type nat hook prerouting priority -100;\n  tcp dport 20000-20999 redirect to :8099\n }\n}\n")

	most := 0
	open := func() int {
		n := int(converterStats(t, e.control)["transparent_ports"].(float64))
		most = max(most, n)
		return n
	}
	var conns []*client.Conn
	for i := range ports {
		dest := netip.AddrPortFrom(e.a.ServerV4, uint16(20000+i))
		c, err := e.convert(client.Options{Via: dest, Dest: dest, MPTCP: true}, nil)
		if err != nil {
			t.Fatalf("session to port %d: %v", dest.Port(), err)
		}
		conns = append(conns, c)
		if len(conns) == held {
			open()
			for _, c := range conns {
				c.Close()
			}
			conns = conns[:0]
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if most > portCap {
		t.Errorf("%d per-port listeners open at once, cap %d", most, portCap)
	}
	if most < portCap {
		t.Errorf("at most %d per-port listeners with %d sessions held on distinct ports: the cap %d was never reached", most, held, portCap)
	}
	deadline := time.Now().Add(5 * time.Second)
	for open() != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := open(); n != 0 {
		t.Errorf("%d per-port listeners left after every session ended", n)
	}
	capped := converterStats(t, e.control)["transparent_ports_capped"].(float64)
	t.Logf("%d sessions on %d ports: at most %d listeners at once (cap %d), %v sessions went without one", ports, ports, most, portCap, capped)
}

// nftIn loads an nft ruleset in a lab namespace.
func nftIn(t *testing.T, e *env, ns, ruleset string) {
	t.Helper()
	cmd := e.lab.Command(context.Background(), ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
}

// converterStats reads the engine's counters from the control socket.
func converterStats(t *testing.T, control string) map[string]any {
	t.Helper()
	hc := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", control)
		}}}
	resp, err := hc.Get("http://converter/stats")
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("stats: %v", err)
	}
	c, _ := v["converter"].(map[string]any)
	return c
}

// TestAttackStoppedReaders: 100 clients ask for a large download and
// stop reading. The converter must hold their bytes in the kernel's
// socket buffers only: its own memory (RSS) grows by little more than
// the sessions' bookkeeping, not by a relay buffer per session.
func TestAttackStoppedReaders(t *testing.T) {
	const sessions = 100
	const budget = 7 << 20 // bytes of RSS growth for 100 stalled sessions (117 KiB each when a relay buffer was held)
	e := newEnv(t)
	conv := e.startConverter()
	// The port e.download uses.
	serveDownloads(e.listen(e.serverNS(), "10.201.3.2:8000", false))
	dest := netip.MustParseAddrPort("10.201.3.2:8000")
	rss := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", conv.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				var kib int64
				fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kib)
				return kib << 10
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	// Warm up: one full download, so that the pools and the runtime have
	// grown to their working size before the baseline.
	if _, _, err := e.download(t, 1, 8<<20, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	before := rss()
	for i := range sessions {
		c, err := e.convert(client.Options{Via: e.via4(), Dest: dest, MPTCP: true}, nil)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		c.SetReadBuffer(64 << 10)
		if _, err := fmt.Fprintf(c, "%d %d\n", i, 64<<20); err != nil {
			t.Fatal(err)
		}
		// Never read: the client's window closes, then the converter's
		// send buffer fills, then the server's.
	}
	time.Sleep(2 * time.Second)
	after := rss()
	growth := after - before
	t.Logf("converter RSS %d KiB -> %d KiB with %d stopped readers: %.1f KiB per session", before>>10, after>>10, sessions, float64(growth)/1024/sessions)
	if growth > budget {
		t.Errorf("RSS grew by %d KiB, budget %d KiB: stalled sessions hold user-space buffers", growth>>10, budget>>10)
	}
	// The converter still serves everyone else.
	if _, _, err := e.download(t, 2, 4<<20, 10*time.Second); err != nil {
		t.Errorf("a download beside the stopped readers: %v", err)
	}
}

// TestAttackSpoofedSYNs: 10,000 Convert SYNs with forged client sources
// (built with gopacket, sent on a raw socket) arrive while a real client
// converts. The real client's session works; no forged source ever
// completes a handshake, so the server sees at most one SYN per forged
// SYN (RFC 8803 §9.3) and the converter counts them unverified.
func TestAttackSpoofedSYNs(t *testing.T) {
	const spoofed = 10000
	e := newEnv(t, "nft")
	control := filepath.Join(t.TempDir(), "control.sock")
	e.startConverter("--control", control, "--handshake-timeout", "2s")
	echo(e.listen(e.serverNS(), "10.201.3.2:8074", false))
	// Count the SYNs that reach the server's port.
	nftIn(t, e, e.serverNS(), "table inet cvsyn {\n chain in {\n  type filter hook input priority 0;\n  tcp dport 8074 tcp flags & (syn | ack) == syn counter\n }\n}\n")

	req, err := client.Options{Dest: netip.MustParseAddrPort("10.201.3.2:8074")}.Request()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- e.inClient(func() error { return floodSpoofedSYNs(spoofed, e.via4(), req) })
	}()
	// The real client converts during the flood.
	if err := echoSessionWith(e, client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8074"), MPTCP: true}, 77, 1<<20); err != nil {
		t.Errorf("the real client during the flood: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("flood: %v", err)
	}
	// Let every forged session run out its handshake timeout.
	time.Sleep(3 * time.Second)
	if err := echoSessionWith(e, client.Options{Via: e.via4(), Dest: netip.MustParseAddrPort("10.201.3.2:8074"), MPTCP: true}, 78, 1<<20); err != nil {
		t.Errorf("the real client after the flood: %v", err)
	}
	out, err := e.lab.Command(context.Background(), e.serverNS(), "nft", "-j", "list", "table", "inet", "cvsyn").Output()
	if err != nil {
		t.Fatal(err)
	}
	serverSYNs := nftPackets(t, out)
	st := converterStats(t, control)
	t.Logf("%d forged SYNs sent; the server saw %d SYNs; converter: %v accepted, %v unverified, refused %v",
		spoofed, serverSYNs, st["accepted"], st["unverified"], st["refused"])
	// Two real sessions (one SYN each, maybe one retransmission).
	if serverSYNs > spoofed+4 {
		t.Errorf("the server saw %d SYNs for %d forged ones: amplification", serverSYNs, spoofed)
	}
	if u, _ := st["unverified"].(float64); u == 0 {
		t.Errorf("no forged session counted unverified")
	}
}

// floodSpoofedSYNs sends n TCP SYNs carrying payload from forged sources
// of the client's path-1 subnet (hosts that do not exist) to via, on a
// raw IPv4 socket of the calling thread's namespace.
func floodSpoofedSYNs(n int, via netip.AddrPort, payload []byte) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	dst := &unix.SockaddrInet4{Addr: via.Addr().As4()}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
	for i := range n {
		src := netip.AddrFrom4([4]byte{10, 201, 1, byte(100 + i%150)})
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: via.Addr().AsSlice()}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(20000 + i%40000), DstPort: layers.TCPPort(via.Port()), Seq: uint32(i) * 7919, SYN: true, Window: 64240,
			Options: []layers.TCPOption{
				{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
				{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
				{OptionType: layers.TCPOptionKind(30), OptionLength: 4, OptionData: []byte{0x01, 0x81}}, // MP_CAPABLE v1
			}}
		tcp.SetNetworkLayerForChecksum(ip)
		if err := gopacket.SerializeLayers(buf, opts, ip, tcp, gopacket.Payload(payload)); err != nil {
			return err
		}
		if err := unix.Sendto(fd, buf.Bytes(), 0, dst); err != nil {
			return fmt.Errorf("send forged SYN %d: %w", i, err)
		}
	}
	return nil
}

// nftPackets sums the packet counters of `nft -j list` output.
func nftPackets(t *testing.T, out []byte) int {
	t.Helper()
	var v struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("nft json: %v", err)
	}
	total := 0
	for _, item := range v.Nftables {
		rule, ok := item["rule"]
		if !ok {
			continue
		}
		var r struct {
			Expr []map[string]json.RawMessage `json:"expr"`
		}
		json.Unmarshal(rule, &r)
		for _, x := range r.Expr {
			if c, ok := x["counter"]; ok {
				var cnt struct{ Packets int }
				json.Unmarshal(c, &cnt)
				total += cnt.Packets
			}
		}
	}
	return total
}
