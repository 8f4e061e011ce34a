package netns

// The scale-out tests: the cluster lab (lab.Config{Nodes: 3}), a BGP router
// spreading the VIP over three converter nodes with ECMP through a
// resilient nexthop group, and `converter run --cluster-vip` in each node.
// Every connection is an MPTCP client whose SYN carries the Convert
// message, gets its second subflow from path 2, and has its bytes hashed
// both ways.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/client"
	"github.com/convert-tc/converter/internal/labtest"
	"github.com/convert-tc/converter/lab"
	"github.com/convert-tc/converter/sockinfo"
	"github.com/convert-tc/converter/tlv"
)

const (
	clNodes      = 3
	clServerPort = 8000
	clConvPort   = 5124
)

// clDestinations opens the cluster lab's ranges on a node's converter.
var clDestinations = []string{"--allow-destinations", "10.202.0.0/16", "--allow-destinations", "fd02::/16"}

// clEnv is a cluster lab, its nodes' converters and the test's server.
type clEnv struct {
	t     *testing.T
	lab   *lab.Lab
	nodes []*clNode
	srv   *clServer
	next  atomic.Uint64 // connection ids
}

// clNode is one node and the converter running in it.
type clNode struct {
	k       int
	ns      string
	addrs   []netip.Addr // unique: IPv4, IPv6
	uplink  []netip.Addr
	control string
	proc    *converterProc
}

// clNewEnv brings up a cluster lab with three nodes (no converter yet) and
// a server in it. Everything goes when the test ends.
func clNewEnv(t *testing.T, bfd bool) *clEnv {
	t.Helper()
	labtest.Require(t, "bird")
	prefix := lab.UniquePrefix()
	t.Cleanup(func() {
		if err := lab.Down(prefix); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	l, err := lab.Up(ctx, lab.Config{Prefix: prefix, Nodes: clNodes, BFD: bfd, Exe: converterBin})
	if err != nil {
		t.Fatalf("cluster lab up: %v", err)
	}
	t.Logf("cluster lab %s up with every BGP session established in %v", prefix, time.Since(start).Round(time.Millisecond))
	e := &clEnv{t: t, lab: l}
	dir := t.TempDir()
	for _, n := range l.Nodes {
		e.nodes = append(e.nodes, &clNode{k: n.Index, ns: n.NS, addrs: n.Addrs, uplink: n.Uplink,
			control: filepath.Join(dir, fmt.Sprintf("n%d.sock", n.Index))})
	}
	e.srv = clServe(t, l)
	return e
}

// clStartIn runs `converter run args...` in namespace ns; it is stopped
// (SIGTERM) when the test ends.
func clStartIn(t *testing.T, ns string, args ...string) *converterProc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, converterBin, "run"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start converter in %s: %v", ns, err)
	}
	p := &converterProc{cmd: cmd, exited: make(chan struct{})}
	go p.readLogs(stderr, make(chan struct{}, 1024))
	t.Cleanup(func() { p.stop(t) })
	return p
}

// start runs node k's converter as a cluster node and waits until it has
// announced the VIPs.
func (e *clEnv) start(k int, extra ...string) *converterProc {
	e.t.Helper()
	n := e.nodes[k-1]
	args := []string{"--control", n.control}
	for _, v := range e.lab.VIPs {
		args = append(args, "--cluster-vip", v.String())
	}
	for _, a := range n.addrs {
		args = append(args, "--node-address", a.String())
	}
	args = append(append(args, clDestinations...), extra...)
	n.proc = clStartIn(e.t, n.ns, args...)
	if recs := n.proc.waitRecords(e.t, "cluster: VIPs announced", 1); len(recs) == 0 {
		e.t.Fatalf("node %d did not announce the VIPs; log:\n%s", k, n.proc.rawLog())
	}
	return n.proc
}

// startAll starts every node's converter and waits until the router
// forwards both VIPs to all of them.
func (e *clEnv) startAll(extra ...string) {
	e.t.Helper()
	for k := 1; k <= clNodes; k++ {
		e.start(k, extra...)
	}
	e.waitMembers(1, 2, 3)
}

// waitMembers waits until both VIPs' resilient groups hold exactly the
// nodes ks, and returns when the last change arrived.
func (e *clEnv) waitMembers(ks ...int) time.Time {
	e.t.Helper()
	return clLatest(e.waitMembersEach(ks...))
}

// waitMembersEach is waitMembers with the time of each VIP's change.
func (e *clEnv) waitMembersEach(ks ...int) []time.Time {
	e.t.Helper()
	var want []string
	for _, k := range ks {
		want = append(want, e.nodes[k-1].ns)
	}
	var ats []time.Time
	for _, vip := range e.lab.VIPs {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, at, err := e.lab.WaitVIP(ctx, vip, func(r lab.VIPRoute) bool { return clSameNodes(r, want) })
		cancel()
		if err != nil {
			e.t.Fatalf("VIP %s: want next hops %v: %v", vip, want, err)
		}
		ats = append(ats, at)
	}
	return ats
}

func clLatest(ts []time.Time) time.Time {
	var last time.Time
	for _, t := range ts {
		if t.After(last) {
			last = t
		}
	}
	return last
}

// clSameNodes reports whether r is a resilient group with exactly the
// nodes want, routed.
func clSameNodes(r lab.VIPRoute, want []string) bool {
	got := r.MemberNodes()
	slices.Sort(got)
	return r.Resilient && (r.Installed || len(want) == 0) && slices.Equal(got, want)
}

// logBuckets logs the routers' bucket split and returns it per node.
func (e *clEnv) logBuckets() map[string]map[int]int {
	e.t.Helper()
	routes, err := e.lab.VIPRoutes()
	if err != nil {
		e.t.Fatalf("VIP routes: %v", err)
	}
	out := map[string]map[int]int{}
	for _, r := range routes {
		out[r.VIP] = map[int]int{}
		var parts []string
		for _, m := range r.Members {
			k := e.nodeOfNS(m.Node)
			out[r.VIP][k] = m.Buckets
			parts = append(parts, fmt.Sprintf("node %d via %s: %d buckets", k, m.Via, m.Buckets))
		}
		slices.Sort(parts)
		e.t.Logf("router: VIP %s resilient group %d: %s", r.VIP, r.Group, strings.Join(parts, ", "))
	}
	return out
}

func (e *clEnv) nodeOfNS(ns string) int {
	for _, n := range e.nodes {
		if n.ns == ns {
			return n.k
		}
	}
	return 0
}

// nodeOfAddr maps a node's unique or uplink address to its index.
func (e *clEnv) nodeOfAddr(a netip.Addr) int {
	a = a.Unmap().WithZone("")
	for _, n := range e.nodes {
		if slices.Contains(n.addrs, a) || slices.Contains(n.uplink, a) {
			return n.k
		}
	}
	return 0
}

// netstat reads every node's counters.
func (e *clEnv) netstat() []map[string]uint64 {
	e.t.Helper()
	out := make([]map[string]uint64, clNodes)
	for i, n := range e.nodes {
		out[i] = netstatIn(e.t, n.ns)
	}
	return out
}

func clDelta(before, after []map[string]uint64, k int, name string) int64 {
	return int64(after[k-1][name]) - int64(before[k-1][name])
}

// ---------------------------------------------------------------- server

// clServer accepts the test's connections in the server namespace. Each
// starts with a header line "ID UP DOWN CHUNK GAP_US" (in the SYN) and,
// once the client has its second subflow, a line "go": the client then
// sends UP bytes of stream(2 ID) (UP 0: until it stops), and the server
// sends DOWN bytes of stream(2 ID + 1) (0: until the client's stream
// ends), CHUNK bytes every GAP_US microseconds (0: at once).
type clServer struct {
	mu   sync.Mutex
	recs map[uint64]*clRecord
}

// clRecord is what the server saw of one connection.
type clRecord struct {
	id   uint64
	seen chan struct{} // closed once the header was read
	done chan struct{} // closed once both directions ended
	peer netip.Addr    // the node's uplink address
	up   atomic.Int64  // bytes received so far
	down atomic.Int64  // bytes sent so far
	// set before done is closed
	upSum [32]byte
	upErr error
}

func clServe(t *testing.T, l *lab.Lab) *clServer {
	s := &clServer{recs: map[uint64]*clRecord{}}
	for _, a := range []netip.Addr{l.Addr.ServerV4, l.Addr.ServerV6} {
		var ln net.Listener
		err := lab.RunIn(l.Server, func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(a, clServerPort).String())
			return err
		})
		if err != nil {
			t.Fatalf("listen in %s: %v", l.Server, err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go s.handle(c.(*net.TCPConn))
			}
		}()
	}
	return s
}

func (s *clServer) record(id uint64) *clRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok {
		r = &clRecord{id: id, seen: make(chan struct{}), done: make(chan struct{})}
		s.recs[id] = r
	}
	return r
}

func (s *clServer) handle(c *net.TCPConn) {
	defer c.Close()
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	var id uint64
	var up, down, chunk, gapUS int64
	if _, err := fmt.Sscan(line, &id, &up, &down, &chunk, &gapUS); err != nil {
		return
	}
	r := s.record(id)
	r.peer = unmapAddrPort(c.RemoteAddr()).Addr()
	close(r.seen)
	// The client says "go" once its second subflow is up: a node refuses
	// joins once it has sent its DATA_FIN, which a short download would
	// otherwise reach before the join (measured: in about 1 % of TFO
	// connections the whole download and the FIN were out before the
	// node's ADD_ADDR was answered).
	if line, err := br.ReadString('\n'); err != nil || line != "go\n" {
		r.upErr = fmt.Errorf("no go line: %q, %v", line, err)
		close(r.done)
		return
	}
	upDone := make(chan struct{})
	sendDone := make(chan struct{})
	go func() { // the download
		defer close(sendDone)
		clPaced(c, stream(2*id+1, clLimit(down)), chunk, time.Duration(gapUS)*time.Microsecond, upDone, down == 0, &r.down)
		c.CloseWrite()
	}()
	h := sha256.New()
	_, r.upErr = io.Copy(io.MultiWriter(h, clCounter{&r.up}), br)
	copy(r.upSum[:], h.Sum(nil))
	close(upDone)
	<-sendDone
	close(r.done)
}

// clLimit is n, or "endless" for 0.
func clLimit(n int64) int64 {
	if n == 0 {
		return 1 << 62
	}
	return n
}

type clCounter struct{ n *atomic.Int64 }

func (c clCounter) Write(p []byte) (int, error) { c.n.Add(int64(len(p))); return len(p), nil }

// clPaced copies r to w in chunks, one every gap (0: as fast as w takes
// them); with untilStop it also ends once stop is closed. It counts what
// was written.
func clPaced(w io.Writer, r io.Reader, chunk int64, gap time.Duration, stop <-chan struct{}, untilStop bool, sent *atomic.Int64) error {
	if chunk <= 0 {
		chunk = 32 << 10
	}
	buf := make([]byte, chunk)
	var tick *time.Ticker
	if gap > 0 {
		tick = time.NewTicker(gap)
		defer tick.Stop()
	}
	for {
		if untilStop {
			select {
			case <-stop:
				return nil
			default:
			}
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			m, err := w.Write(buf[:n])
			sent.Add(int64(m))
			if err != nil {
				return err
			}
		}
		if rerr != nil {
			return nil // the stream's end
		}
		if tick != nil {
			select {
			case <-tick.C:
			case <-stop:
				if untilStop {
					return nil
				}
				<-tick.C
			}
		}
	}
}

// ---------------------------------------------------------------- client

// clSpec shapes a connection's traffic: sizes (0: until stop), pacing,
// and whether the client holds its end open until released.
type clSpec struct {
	up, down   int64
	chunk      int64
	gap        time.Duration
	stop, hold <-chan struct{}
}

// clConn is one client connection through the VIP.
type clConn struct {
	id       uint64
	vip      netip.Addr
	c        *net.TCPConn
	local    netip.AddrPort
	rec      *clRecord
	node     int            // where the server saw it come from
	join     netip.AddrPort // the joined subflow's remote address
	joinNode int
	spec     clSpec
	upSent   atomic.Int64
	downGot  atomic.Int64
	done     chan struct{}
	// set before done is closed
	err              error // the first of readErr and sendErr
	readErr, sendErr error
	readEOF          bool // the download ended with the server's FIN
	downSum          [32]byte
}

// clHeader is the first line a connection sends.
func clHeader(id uint64, s clSpec) []byte {
	return fmt.Appendf(nil, "%d %d %d %d %d\n", id, s.up, s.down, s.chunk, s.gap.Microseconds())
}

// open opens one MPTCP connection to vip:5124 whose SYN carries the
// Convert message and the header, and waits for its second subflow and
// for the server to see it. wantJoin false accepts a connection whose
// join fails (the negative control).
func (e *clEnv) open(vip netip.Addr, s clSpec, wantJoin bool) (*clConn, error) {
	id := e.next.Add(1)
	dest := e.lab.Addr.ServerV4
	if vip.Is6() {
		dest = e.lab.Addr.ServerV6
	}
	var cc *client.Conn
	err := lab.RunIn(e.lab.Client, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		cc, err = client.Dial(ctx, client.Options{Via: netip.AddrPortFrom(vip, clConvPort), Dest: netip.AddrPortFrom(dest, clServerPort), MPTCP: true}, clHeader(id, s))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connection %d to %s: %w", id, vip, err)
	}
	return e.adopt(id, vip, cc.TCPConn, s, wantJoin)
}

// adopt waits for c's join (when wantJoin) and the server's record, then
// starts its traffic.
func (e *clEnv) adopt(id uint64, vip netip.Addr, c *net.TCPConn, s clSpec, wantJoin bool) (*clConn, error) {
	e.t.Cleanup(func() { c.Close() })
	cn := &clConn{id: id, vip: vip, c: c, local: unmapAddrPort(c.LocalAddr()), spec: s, done: make(chan struct{})}
	if ok, err := c.MultipathTCP(); err != nil || !ok {
		c.Close()
		return nil, fmt.Errorf("connection %d (%s): not MPTCP (fell back): %v", id, cn.local, err)
	}
	if wantJoin {
		join, err := clWaitJoin(c, netip.AddrPortFrom(vip, clConvPort), 6*time.Second)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("connection %d (%s): %w", id, cn.local, err)
		}
		cn.join, cn.joinNode = join, e.nodeOfAddr(join.Addr())
	}
	cn.rec = e.srv.record(id)
	select {
	case <-cn.rec.seen:
		cn.node = e.nodeOfAddr(cn.rec.peer)
	case <-time.After(10 * time.Second):
		c.Close()
		return nil, fmt.Errorf("connection %d (%s): the server did not see it", id, cn.local)
	}
	if _, err := io.WriteString(c, "go\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("connection %d (%s): %w", id, cn.local, err)
	}
	go cn.run()
	return cn, nil
}

// clWaitJoin waits until c has an established subflow to another address
// than initial, and returns that address.
func clWaitJoin(c *net.TCPConn, initial netip.AddrPort, within time.Duration) (netip.AddrPort, error) {
	deadline := time.Now().Add(within)
	var last []sockinfo.Subflow
	for {
		sfs, err := sockinfo.GetSubflows(c)
		if err == nil {
			last = sfs
			for _, sf := range sfs {
				if sf.TCP.State == sockinfo.StateEstablished && sf.Remote.Addr().WithZone("") != initial.Addr() {
					return netip.AddrPortFrom(sf.Remote.Addr().WithZone(""), sf.Remote.Port()), nil
				}
			}
		}
		if time.Now().After(deadline) {
			return netip.AddrPort{}, fmt.Errorf("no second subflow after %v: %+v", within, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (cn *clConn) run() {
	defer close(cn.done)
	s := cn.spec
	sendErr := make(chan error, 1)
	go func() {
		err := clPaced(cn.c, stream(2*cn.id, clLimit(s.up)), s.chunk, s.gap, s.stop, s.up == 0, &cn.upSent)
		if err == nil && s.hold != nil {
			<-s.hold
		}
		if err == nil {
			err = cn.c.CloseWrite()
		}
		sendErr <- err
	}()
	h := sha256.New()
	_, err := io.Copy(io.MultiWriter(h, clCounter{&cn.downGot}), cn.c)
	copy(cn.downSum[:], h.Sum(nil))
	cn.readErr, cn.readEOF = err, err == nil
	cn.sendErr = <-sendErr
	cn.err = errors.Join(cn.readErr, cn.sendErr)
}

// wait waits for the connection's end, and for the server's side.
func (cn *clConn) wait(limit time.Duration) error {
	select {
	case <-cn.done:
	case <-time.After(limit):
		cn.c.SetDeadline(time.Now()) // unblock it
		<-cn.done
		return fmt.Errorf("connection %d (%s, node %d) still running after %v", cn.id, cn.local, cn.node, limit)
	}
	select {
	case <-cn.rec.done:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("connection %d: the server's side did not end", cn.id)
	}
	return nil
}

// intact checks both directions end to end: every byte the client sent
// reached the server and every byte the server sent reached the client,
// by count and SHA-256. It returns the bytes lost.
func (cn *clConn) intact() (lost int64, err error) {
	upSent, upGot := cn.upSent.Load(), cn.rec.up.Load()
	downSent, downGot := cn.rec.down.Load(), cn.downGot.Load()
	lost = max(0, upSent-upGot) + max(0, downSent-downGot)
	var problems []string
	if cn.err != nil {
		problems = append(problems, "client: "+cn.err.Error())
	}
	serverDone := false
	select {
	case <-cn.rec.done:
		serverDone = true
	default:
		problems = append(problems, "server: still reading")
	}
	if serverDone && cn.rec.upErr != nil {
		problems = append(problems, "server: "+cn.rec.upErr.Error())
	}
	if upOK := serverDone && cn.rec.upSum == streamDigest(2*cn.id, upGot); upGot != upSent || !upOK {
		problems = append(problems, fmt.Sprintf("up: sent %d, server got %d, digest ok %v", upSent, upGot, upOK))
	}
	if downGot != downSent || cn.downSum != streamDigest(2*cn.id+1, downGot) {
		problems = append(problems, fmt.Sprintf("down: sent %d, client got %d, digest ok %v", downSent, downGot, cn.downSum == streamDigest(2*cn.id+1, downGot)))
	}
	if cn.spec.up > 0 && upSent != cn.spec.up || cn.spec.down > 0 && downSent != cn.spec.down {
		problems = append(problems, fmt.Sprintf("sizes: up %d of %d, down %d of %d", upSent, cn.spec.up, downSent, cn.spec.down))
	}
	if len(problems) > 0 {
		return lost, fmt.Errorf("connection %d (%s via %s, node %d): %s", cn.id, cn.local, cn.vip, cn.node, strings.Join(problems, "; "))
	}
	return 0, nil
}

// openMany opens n connections to vip, a few at a time.
func (e *clEnv) openMany(n int, vip netip.Addr, s clSpec, wantJoin bool) []*clConn {
	e.t.Helper()
	out := make([]*clConn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = e.open(vip, s, wantJoin)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// byNode counts connections per node (index 0: unknown).
func clByNode(conns []*clConn) [clNodes + 1]int {
	var n [clNodes + 1]int
	for _, c := range conns {
		n[c.node]++
	}
	return n
}

// sessions reads node k's session table by client address.
func (e *clEnv) sessions(k int) map[netip.AddrPort][]string {
	e.t.Helper()
	out := map[netip.AddrPort][]string{}
	for _, s := range readSessions(e.t, e.nodes[k-1].control).Sessions {
		a, err := netip.ParseAddrPort(s.Client)
		if err != nil {
			e.t.Fatalf("node %d: session client %q: %v", k, s.Client, err)
		}
		var locals []string
		for _, sf := range s.Subflows {
			locals = append(locals, sf.Local)
		}
		out[netip.AddrPortFrom(a.Addr().Unmap(), a.Port())] = locals
	}
	return out
}

// ---------------------------------------------------------------- tests

// TestClusterSpread: 90 IPv4 and 30 IPv6 connections through the VIP
// spread over the three nodes by the router's ECMP (L4 hash, resilient
// group), every IPv4 node taking at least 10; every connection's second
// subflow (from path 2, to the node's unique address announced with the C
// flag set) lands on the node that holds its first: no node sees a join
// with an unknown token, each node's session table lists exactly its
// connections, with two subflows, and every byte arrives.
//
// 90, not 60: the split of 60 connections from one client follows the
// hash of their ports, Binomial(60, 21/64) per node, under 10 on some node
// in about 0.5 % of runs; with 90 about once in a million.
func TestClusterSpread(t *testing.T) {
	e := clNewEnv(t, false)
	e.startAll()
	buckets := e.logBuckets()
	for vip, m := range buckets {
		for k := 1; k <= clNodes; k++ {
			if m[k] < 16 {
				t.Errorf("VIP %s: node %d holds %d of 64 buckets: the split is skewed before any traffic", vip, k, m[k])
			}
		}
	}
	before := e.netstat()
	clientBefore := netstatIn(t, e.lab.Client)
	hold := make(chan struct{})
	spec := clSpec{up: 64 << 10, down: 64 << 10, hold: hold}
	conns4 := e.openMany(90, e.lab.VIPs[0], spec, true)
	conns6 := e.openMany(30, e.lab.VIPs[1], spec, true)
	all := append(slices.Clone(conns4), conns6...)

	// Every join on the node of its connection.
	wrong := 0
	for _, c := range all {
		if c.node == 0 || c.joinNode != c.node {
			wrong++
			t.Errorf("connection %d (%s via %s): on node %d, joined %s (node %d)", c.id, c.local, c.vip, c.node, c.join, c.joinNode)
		}
	}
	// The session tables while every connection is open.
	for k := 1; k <= clNodes; k++ {
		table := e.sessions(k)
		mine := 0
		for _, c := range all {
			locals, ok := table[c.local]
			if c.node != k {
				if ok {
					t.Errorf("node %d lists connection %s, which the server saw from node %d", k, c.local, c.node)
				}
				continue
			}
			mine++
			if !ok {
				t.Errorf("node %d: no session for its connection %s", k, c.local)
				continue
			}
			wantJoin := netip.AddrPortFrom(c.join.Addr(), clConvPort).String()
			if len(locals) != 2 || !slices.Contains(locals, netip.AddrPortFrom(c.vip, clConvPort).String()) || !slices.Contains(locals, wantJoin) {
				t.Errorf("node %d: session %s has subflows %v, want the VIP and %s", k, c.local, locals, wantJoin)
			}
		}
		if len(table) != mine {
			t.Errorf("node %d lists %d sessions, the server saw %d connections from it", k, len(table), mine)
		}
	}
	close(hold)
	for _, c := range all {
		if err := c.wait(20 * time.Second); err != nil {
			t.Error(err)
			continue
		}
		if _, err := c.intact(); err != nil {
			t.Error(err)
		}
	}
	after := e.netstat()
	clientAfter := netstatIn(t, e.lab.Client)
	n4, n6 := clByNode(conns4), clByNode(conns6)
	for k := 1; k <= clNodes; k++ {
		joins := clDelta(before, after, k, "MPTcpExtMPJoinAckRx")
		noToken := clDelta(before, after, k, "MPTcpExtMPJoinNoTokenFound")
		t.Logf("node %d: %d IPv4 + %d IPv6 connections, %d joins (MPJoinAckRx), MPJoinNoTokenFound %d, MP_CAPABLE SYNs %d",
			k, n4[k], n6[k], joins, noToken, clDelta(before, after, k, "MPTcpExtMPCapableSYNRX"))
		if n4[k] < 10 {
			t.Errorf("node %d got %d of 90 IPv4 connections, want at least 10", k, n4[k])
		}
		if n6[k] < 1 {
			t.Errorf("node %d got no IPv6 connection of 30", k)
		}
		if noToken != 0 {
			t.Errorf("node %d: %d joins with an unknown token (a join on the wrong node)", k, noToken)
		}
		if joins != int64(n4[k]+n6[k]) {
			t.Errorf("node %d: %d joins for its %d connections", k, joins, n4[k]+n6[k])
		}
	}
	ipv4Joins := 0
	for _, c := range conns6 {
		if c.join.Addr().Is4() {
			ipv4Joins++
		}
	}
	t.Logf("client: %d joins sent, %d joined (MPJoinSynAckRx), fallbacks %d; %d of 30 IPv6 connections joined the node's IPv4 address",
		clientAfter["MPTcpExtMPJoinSynTx"]-clientBefore["MPTcpExtMPJoinSynTx"], clientAfter["MPTcpExtMPJoinSynAckRx"]-clientBefore["MPTcpExtMPJoinSynAckRx"],
		clientAfter["MPTcpExtMPCapableFallbackSYNACK"]-clientBefore["MPTcpExtMPCapableFallbackSYNACK"], ipv4Joins)
	t.Logf("joins on the wrong node: %d of %d", wrong, len(all))
}

// clLongRun opens long-running connections (both directions stream,
// paced, until stop) through the IPv4 VIP until every node holds at least
// per of them.
func (e *clEnv) clLongRun(per int, stop <-chan struct{}) []*clConn {
	e.t.Helper()
	spec := clSpec{chunk: 16 << 10, gap: 20 * time.Millisecond, stop: stop}
	var conns []*clConn
	for len(conns) < 60 {
		n := clByNode(conns)
		if n[1] >= per && n[2] >= per && n[3] >= per {
			return conns
		}
		c, err := e.open(e.lab.VIPs[0], spec, true)
		if err != nil {
			e.t.Fatal(err)
		}
		conns = append(conns, c)
	}
	e.t.Fatalf("60 connections did not give every node %d: %v", per, clByNode(conns))
	return nil
}

// clEvent is a node taken away during long transfers and what followed.
type clEvent struct {
	name     string
	victim   int
	prepare  func(e *clEnv, n *clNode) // before the clock starts (may be nil)
	act      func(e *clEnv, n *clNode)
	victimOK bool // the victim's connections must survive (drain)
	limit    time.Duration
}

// clRunNodeLoss brings up three nodes, starts long transfers on all of
// them, applies ev to node ev.victim, measures how long the router took to
// drop it from the VIP's resilient group, opens new connections (which
// must all go to the others), ends the transfers and checks every byte.
// It returns the withdrawal time.
func clRunNodeLoss(t *testing.T, bfd bool, ev clEvent) time.Duration {
	e := clNewEnv(t, bfd)
	e.startAll()
	e.logBuckets()
	stop := make(chan struct{})
	long := e.clLongRun(3, stop)
	nl := clByNode(long)
	t.Logf("%d long connections (16 KiB each way every 20 ms until the end), per node %v", len(long), nl[1:])
	time.Sleep(500 * time.Millisecond)
	victim := e.nodes[ev.victim-1]
	var others []int
	for k := 1; k <= clNodes; k++ {
		if k != ev.victim {
			others = append(others, k)
		}
	}
	progress := map[uint64]int64{}
	for _, c := range long {
		progress[c.id] = c.rec.up.Load() + c.rec.down.Load()
	}
	before := e.netstat()
	vipGone := e.watchVIPGone(victim)
	if ev.prepare != nil {
		ev.prepare(e, victim)
	}

	// Watch the router before the event: the VIPs' resilient groups and
	// BIRD's own multipath route to the IPv4 VIP, which the watcher
	// follows; each waiter says when the node left.
	var want []string
	for _, k := range others {
		want = append(want, e.nodes[k-1].ns)
	}
	ready := make(chan struct{}, 3)
	waiter := func(vip netip.Addr, cond func(lab.VIPRoute) bool) <-chan time.Time {
		out := make(chan time.Time, 1)
		go func() {
			var once sync.Once
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, at, err := e.lab.WaitVIP(ctx, vip, func(r lab.VIPRoute) bool {
				once.Do(func() { ready <- struct{}{} }) // subscribed by now
				return cond(r)
			})
			if err != nil {
				t.Errorf("VIP %s: want next hops %v: %v", vip, want, err)
			}
			out <- at
		}()
		return out
	}
	group4 := waiter(e.lab.VIPs[0], func(r lab.VIPRoute) bool { return clSameNodes(r, want) })
	group6 := waiter(e.lab.VIPs[1], func(r lab.VIPRoute) bool { return clSameNodes(r, want) })
	bird4 := waiter(e.lab.VIPs[0], func(r lab.VIPRoute) bool {
		return !slices.ContainsFunc(r.BIRD, func(h lab.VIPNextHop) bool { return h.Node == victim.ns })
	})
	for range 3 {
		<-ready
	}
	t0 := time.Now()
	ev.act(e, victim)
	ats := []time.Time{<-group4, <-group6}
	birdAt := <-bird4
	if t.Failed() {
		t.FailNow()
	}
	at := clLatest(ats)
	took := at.Sub(t0)
	ms := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.Sub(t0).Round(100 * time.Microsecond).String()
	}
	time.Sleep(100 * time.Millisecond) // the address watcher has had the news
	gone := vipGone()
	t.Logf("%s of node %d: after the event, the VIP left the node's device at %s (IPv4) and %s (IPv6); BIRD's route on the router lost the node at %s (IPv4); the resilient group dropped the node at %s (IPv4) and %s (IPv6)",
		ev.name, ev.victim, ms(gone[0]), ms(gone[1]), ms(birdAt), ms(ats[0]), ms(ats[1]))
	if took > ev.limit {
		t.Errorf("withdrawal took %v, want within %v", took, ev.limit)
	}

	// New connections go to the others only.
	fresh := e.openMany(30, e.lab.VIPs[0], clSpec{up: 16 << 10, down: 16 << 10}, true)
	nf := clByNode(fresh)
	t.Logf("30 new connections after the event: per node %v", nf[1:])
	if nf[ev.victim] != 0 {
		t.Errorf("%d new connections reached node %d after its withdrawal", nf[ev.victim], ev.victim)
	}
	for _, c := range fresh {
		if c.joinNode != c.node {
			t.Errorf("new connection %d: on node %d, joined node %d", c.id, c.node, c.joinNode)
		}
	}
	time.Sleep(1500 * time.Millisecond) // the long ones go on across the event
	if ev.victimOK {
		// Where the victim's connections are now: their first subflow,
		// to the VIP, was reset by the node the router now picks; the
		// join to the node's own address carries them.
		withVIP, joinOnly := 0, 0
		for _, c := range long {
			if c.node != ev.victim {
				continue
			}
			sfs, _ := sockinfo.GetSubflows(c.c)
			vip := slices.ContainsFunc(sfs, func(sf sockinfo.Subflow) bool {
				return sf.Remote.Addr() == c.vip && sf.TCP.State == sockinfo.StateEstablished
			})
			if vip {
				withVIP++
			} else {
				joinOnly++
			}
		}
		t.Logf("node %d's long connections 1.5 s after the event: %d on the join subflow only, %d still with their VIP subflow", ev.victim, joinOnly, withVIP)
	}
	close(stop)

	// Every connection ends: the survivors' within 30 s, a lost node's
	// within 5 s (a hung node's never do).
	var victims, rest []*clConn
	for _, c := range append(slices.Clone(long), fresh...) {
		if c.node == ev.victim && !ev.victimOK {
			victims = append(victims, c)
		} else {
			rest = append(rest, c)
		}
	}
	var lost [clNodes + 1]int64
	var failed [clNodes + 1]int
	ends := map[string]int{}
	check := func(conns []*clConn, limit time.Duration) {
		for c, werr := range clWaitAll(conns, limit) {
			n, err := c.intact()
			if werr != nil {
				err = errors.Join(werr, err)
			}
			lost[c.node] += n
			if err != nil {
				failed[c.node]++
			}
			switch {
			case err != nil && (c.node != ev.victim || ev.victimOK):
				t.Errorf("node %d: %v", c.node, err)
			case err == nil && c.node == ev.victim && !ev.victimOK && slices.Contains(long, c):
				t.Errorf("connection %d on the lost node %d survived intact", c.id, c.node)
			case err != nil:
				ends[clHowEnded(c, werr)]++
				t.Logf("node %d (lost): %v", c.node, err)
			}
		}
	}
	check(rest, 30*time.Second)
	check(victims, 5*time.Second)
	if len(ends) > 0 {
		t.Logf("how node %d's connections ended at the client: %v", ev.victim, ends)
	}
	after := e.netstat()
	for k := 1; k <= clNodes; k++ {
		moved := int64(0)
		for _, c := range long {
			if c.node == k {
				moved += c.rec.up.Load() + c.rec.down.Load() - progress[c.id]
			}
		}
		t.Logf("node %d: %d long connections, %d failed, %d bytes lost, %d bytes moved after the event; %d new connections; joins %d, MPJoinNoTokenFound %d",
			k, nl[k], failed[k], lost[k], moved, nf[k], clDelta(before, after, k, "MPTcpExtMPJoinAckRx"), clDelta(before, after, k, "MPTcpExtMPJoinNoTokenFound"))
		if k != ev.victim && lost[k] != 0 {
			t.Errorf("node %d (a survivor) lost %d bytes", k, lost[k])
		}
		if k == ev.victim && ev.victimOK && moved == 0 {
			t.Errorf("node %d's connections moved no byte after the event", k)
		}
	}
	return took
}

// clWaitAll waits for every connection against one deadline and returns
// each one's wait error.
func clWaitAll(conns []*clConn, limit time.Duration) map[*clConn]error {
	out := make(map[*clConn]error, len(conns))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.wait(limit)
			mu.Lock()
			out[c] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// clHowEnded tells how a lost connection ended at the client.
func clHowEnded(c *clConn, waitErr error) string {
	how := func(err error, eof bool) string {
		switch {
		case eof:
			return "clean EOF"
		case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
			return "reset"
		case errors.Is(err, os.ErrDeadlineExceeded):
			return "stalled (cut by the test)"
		case err != nil:
			return err.Error()
		}
		return "ok"
	}
	if waitErr != nil && c.readErr == nil && !c.readEOF {
		return "download stalled (cut by the test)"
	}
	down := how(c.readErr, c.readEOF)
	if c.readEOF && c.downGot.Load() < c.rec.down.Load() {
		down += " (truncated)"
	}
	return "download: " + down + ", upload: " + how(c.sendErr, false)
}

// watchVIPGone follows node n's addresses and returns a function that
// says when each VIP (IPv4, IPv6) left the converter's device (zero: it
// did not).
func (e *clEnv) watchVIPGone(n *clNode) func() []time.Time {
	e.t.Helper()
	h, err := netns.GetFromPath("/run/netns/" + n.ns)
	if err != nil {
		e.t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		e.t.Fatal(err)
	}
	defer nh.Close()
	dev := 0
	links, err := nh.LinkList()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "cvcluster") {
			dev = l.Attrs().Index
		}
	}
	ch := make(chan netlink.AddrUpdate, 256)
	done := make(chan struct{})
	if err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: &h}); err != nil {
		e.t.Fatal(err)
	}
	var mu sync.Mutex
	gone := make([]time.Time, len(e.lab.VIPs))
	go func() {
		for u := range ch {
			a, _ := netip.AddrFromSlice(u.LinkAddress.IP)
			i := slices.Index(e.lab.VIPs, a.Unmap())
			if !u.NewAddr && u.LinkIndex == dev && i >= 0 {
				mu.Lock()
				if gone[i].IsZero() {
					gone[i] = time.Now()
				}
				mu.Unlock()
			}
		}
	}()
	e.t.Cleanup(func() { close(done) })
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(gone)
	}
}

// TestClusterDrain: SIGTERM on a node withdraws the VIP at once (measured
// from the signal to the router's resilient group without the node), its
// connections finish over their subflow to the node's unique address
// with every byte, no new connection reaches it, the other nodes'
// transfers running across the event lose no byte, and the node exits once
// its sessions ended.
func TestClusterDrain(t *testing.T) {
	exited := make(chan time.Duration, 1)
	clRunNodeLoss(t, false, clEvent{
		name: "SIGTERM", victim: 3, victimOK: true, limit: time.Second,
		act: func(e *clEnv, n *clNode) {
			sent := time.Now()
			n.proc.cmd.Process.Signal(syscall.SIGTERM)
			go func() {
				<-n.proc.exited
				exited <- time.Since(sent)
			}()
		},
	})
	// clRunNodeLoss has ended the victim's connections: the drain is over.
	select {
	case d := <-exited:
		t.Logf("the drained node exited %v after SIGTERM, once its sessions had ended", d.Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Errorf("the drained node had not exited 10 s after its last session ended")
	}
}

// TestClusterKill: SIGKILL on a node's converter takes its device and with
// it the VIP and the node's address: the router withdraws the node in
// milliseconds (well within the BGP hold time, 3 s), its connections are
// lost, the other nodes' lose no byte, new connections go to the others.
func TestClusterKill(t *testing.T) {
	clRunNodeLoss(t, false, clEvent{
		name: "SIGKILL", victim: 3, limit: lab.HoldTime,
		act: func(e *clEnv, n *clNode) {
			n.proc.stopOnce.Do(func() {}) // killed on purpose: no stop at the end
			n.proc.cmd.Process.Signal(syscall.SIGKILL)
		},
	})
}

// TestClusterNodeHang: a node that stops answering (its BIRD and its
// converter frozen with SIGSTOP, as a hung machine) is withdrawn by the
// router when the BGP hold time (3 s, keepalive 1 s) runs out, that is 2
// to 3 s after it went silent; with BFD (100 ms x 3) within about 0.3 s.
func TestClusterNodeHang(t *testing.T) {
	for _, tc := range []struct {
		name         string
		bfd          bool
		least, limit time.Duration
	}{
		// Nominally 2 to 3 s after the node froze (the hold time less the
		// time since its last keepalive); the lower bound leaves a late
		// keepalive on a loaded machine a second.
		{"hold", false, lab.HoldTime - 2*lab.KeepaliveTime, lab.HoldTime + 500*time.Millisecond},
		{"bfd", true, lab.BFDInterval, lab.BFDMultiplier*lab.BFDInterval + 700*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var birdPID int
			took := clRunNodeLoss(t, tc.bfd, clEvent{
				name: "SIGSTOP (hung node)", victim: 3, limit: tc.limit,
				prepare: func(e *clEnv, n *clNode) { birdPID = e.birdPID(n) },
				act: func(e *clEnv, n *clNode) {
					syscall.Kill(birdPID, syscall.SIGSTOP)
					n.proc.cmd.Process.Signal(syscall.SIGSTOP)
					t.Cleanup(func() {
						syscall.Kill(birdPID, syscall.SIGCONT)
						n.proc.cmd.Process.Signal(syscall.SIGKILL)
						<-n.proc.exited
						n.proc.stopOnce.Do(func() {})
					})
				},
			})
			if took < tc.least {
				t.Errorf("withdrawn %v after the node froze, sooner than the hold time allows (%v)", took, tc.least)
			}
		})
	}
}

func (e *clEnv) birdPID(n *clNode) int {
	e.t.Helper()
	rep, err := lab.Status(e.lab.Prefix)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range rep.Processes {
		if p.Name == "bird" && p.Namespace == n.ns && p.Running {
			return p.PID
		}
	}
	e.t.Fatalf("no BIRD running in %s: %+v", n.ns, rep.Processes)
	return 0
}

// ---------------------------------------------------------------- TFO

// clTFOKeyFile writes a TCP Fast Open key file for --tfo-key.
func clTFOKeyFile(t *testing.T, key string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tfo.key")
	if err := os.WriteFile(p, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// clSysctl reads a sysctl in namespace ns.
func clSysctl(t *testing.T, ns, name string) string {
	t.Helper()
	var v string
	err := lab.RunIn(ns, func() error {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func clSetSysctl(t *testing.T, ns, name, v string) {
	t.Helper()
	err := lab.RunIn(ns, func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(v), 0)
	})
	if err != nil {
		t.Fatalf("%s=%s in %s: %v", name, v, ns, err)
	}
}

// clCookieListener is an MPTCP listener on the VIP (port clCookiePort) in
// every node that, unlike the converter's, requires TFO cookies: it hands
// out cookies made with the node's TCP Fast Open key and checks those it
// is shown. It answers each connection's line with the same line.
const clCookiePort = 5125

func (e *clEnv) cookieListeners() {
	e.t.Helper()
	for _, n := range e.nodes {
		var ln net.Listener
		err := lab.RunIn(n.ns, func() (err error) {
			lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN, 64) })
				return serr
			}}
			lc.SetMultipathTCP(true)
			ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(e.lab.VIPs[0], clCookiePort).String())
			return err
		})
		if err != nil {
			e.t.Fatalf("cookie listener in %s: %v", n.ns, err)
		}
		e.t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					line, _ := bufio.NewReader(c).ReadString('\n')
					io.WriteString(c, line)
				}()
			}
		}()
	}
}

// clTFODialer is a TCP Fast Open client that uses cookies: the SYN carries
// the first write with the cookie the client holds for the destination,
// or asks for one (TCP_FASTOPEN_CONNECT without TCP_FASTOPEN_NO_COOKIE).
func clTFODialer() *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1) })
		return serr
	}}
	d.SetMultipathTCP(true)
	return d
}

// cookieEcho runs one cookie TFO connection to the cookie listeners and
// reports whether it stayed MPTCP.
func (e *clEnv) cookieEcho() (bool, error) {
	var c net.Conn
	err := lab.RunIn(e.lab.Client, func() (err error) {
		c, err = clTFODialer().Dial("tcp", netip.AddrPortFrom(e.lab.VIPs[0], clCookiePort).String())
		return err
	})
	if err != nil {
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "cookie\n"); err != nil {
		return false, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "cookie\n" {
		return false, fmt.Errorf("echo %q: %v", line, err)
	}
	return c.(*net.TCPConn).MultipathTCP()
}

// clientCookie returns the TFO cookie the client holds for the VIP.
func (e *clEnv) clientCookie() string {
	e.t.Helper()
	out, err := exec.Command("ip", "-n", e.lab.Client, "tcp_metrics", "show", e.lab.VIPs[0].String()).CombinedOutput()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out))
	if i := slices.Index(f, "fo_cookie"); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return ""
}

// openTFO opens a Convert connection with a cookie-using TFO client: its
// SYN carries the client's cookie for the VIP, the Convert message and
// the header.
func (e *clEnv) openTFO(s clSpec) (*clConn, error) {
	id := e.next.Add(1)
	vip := e.lab.VIPs[0]
	req, err := client.Options{Dest: netip.AddrPortFrom(e.lab.Addr.ServerV4, clServerPort)}.Request()
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = lab.RunIn(e.lab.Client, func() (err error) {
		c, err = clTFODialer().Dial("tcp", netip.AddrPortFrom(vip, clConvPort).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if _, err := tc.Write(append(req, clHeader(id, s)...)); err != nil {
		tc.Close()
		return nil, err
	}
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := clReadReply(tc); err != nil {
		tc.Close()
		return nil, fmt.Errorf("connection %d: %w", id, err)
	}
	tc.SetReadDeadline(time.Time{})
	return e.adopt(id, vip, tc, s, true)
}

// clReadReply reads the converter's Convert reply and checks it is no
// error.
func clReadReply(c *net.TCPConn) error {
	buf := make([]byte, tlv.MaxMessageLen)
	if _, err := io.ReadFull(c, buf[:tlv.HeaderLen]); err != nil {
		return fmt.Errorf("reply header: %w", err)
	}
	total := max(int(buf[1])*tlv.WordLen, tlv.HeaderLen)
	if _, err := io.ReadFull(c, buf[tlv.HeaderLen:total]); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	var m tlv.Message
	if _, err := tlv.ParseReply(buf[:total], &m); err != nil {
		return err
	}
	if er, ok := m.Error(); ok {
		return fmt.Errorf("converter error %d", er.Code)
	}
	return nil
}

// clTFOCounters are the counters that say whether TFO and MPTCP held.
var clTFOCounters = []string{
	"TcpExtTCPFastOpenPassive", "TcpExtTCPFastOpenPassiveFail", "TcpExtTCPFastOpenCookieReqd",
	"MPTcpExtMPCapableSYNRX", "MPTcpExtMPCapableFallbackACK", "MPTcpExtMPCapableDataFallback", "MPTcpExtMPJoinAckRx",
}

// TestClusterTFOKey: with one --tfo-key file on every node, clients that
// use TFO cookies (not the no-cookie option of the converter's client
// library) send their cookie for the VIP, its Convert message and first
// bytes in the SYN to whichever node the router picks, and every
// connection stays MPTCP, on every node: no node refuses the cookie
// (TCPFastOpenPassiveFail 0) and none falls back (MPCapableFallbackACK,
// MPCapableDataFallback 0).
//
// The converter's listener takes data in a SYN without a cookie
// (TCP_FASTOPEN_NO_COOKIE), so it never hands one out: the client's
// cookie comes from a cookie-checking MPTCP listener on the VIP, which
// also shows what the shared key does. Then the control, with a different
// key on each node: the cookie listeners refuse other nodes' cookies.
func TestClusterTFOKey(t *testing.T) {
	e := clNewEnv(t, false)
	const key = "0f1e2d3c-4b5a6978-8796a5b4-c3d2e1f0"
	e.startAll("--tfo-key", clTFOKeyFile(t, key))
	for _, n := range e.nodes {
		if got := clSysctl(t, n.ns, "net.ipv4.tcp_fastopen_key"); got != key {
			t.Fatalf("%s: tcp_fastopen_key %s, want %s", n.ns, got, key)
		}
	}
	e.cookieListeners()

	// The converter gives no cookie: a cookie request to it is answered
	// by a data-less fast open.
	before := e.netstat()
	c0, err := e.openTFO(clSpec{up: 1024, down: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if err := c0.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("after a cookie request to the converter (node %d) the client holds cookie %q for the VIP", c0.node, e.clientCookie())

	// A cookie from a cookie listener, valid on every node.
	if _, err := e.cookieEcho(); err != nil {
		t.Fatal(err)
	}
	cookie := e.clientCookie()
	if cookie == "" {
		t.Fatal("the client got no TFO cookie from the cookie listener")
	}
	t.Logf("client's cookie for %s: %s", e.lab.VIPs[0], cookie)

	clientBefore := netstatIn(t, e.lab.Client)
	conns := make([]*clConn, 0, 60)
	for range 60 {
		c, err := e.openTFO(clSpec{up: 32 << 10, down: 32 << 10})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		if err := c.wait(20 * time.Second); err != nil {
			t.Error(err)
		} else if _, err := c.intact(); err != nil {
			t.Error(err)
		}
		if c.joinNode != c.node {
			t.Errorf("connection %d: on node %d, joined node %d", c.id, c.node, c.joinNode)
		}
	}
	echoes, stayed := 30, 0
	for range echoes {
		mp, err := e.cookieEcho()
		if err != nil {
			t.Fatal(err)
		}
		if mp {
			stayed++
		}
	}
	after := e.netstat()
	clientAfter := netstatIn(t, e.lab.Client)
	n := clByNode(conns)
	for k := 1; k <= clNodes; k++ {
		var parts []string
		for _, name := range clTFOCounters {
			parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(strings.TrimPrefix(name, "TcpExt"), "MPTcpExt"), clDelta(before, after, k, name)))
		}
		t.Logf("node %d: %d cookie TFO Convert connections; %s", k, n[k], strings.Join(parts, ", "))
		if n[k] < 5 {
			t.Errorf("node %d got %d of 60 connections", k, n[k])
		}
		for _, name := range []string{"TcpExtTCPFastOpenPassiveFail", "MPTcpExtMPCapableFallbackACK", "MPTcpExtMPCapableDataFallback"} {
			if d := clDelta(before, after, k, name); d != 0 {
				t.Errorf("node %d: %s went up by %d", k, name, d)
			}
		}
		if d := clDelta(before, after, k, "TcpExtTCPFastOpenPassive"); d < int64(n[k]) {
			t.Errorf("node %d took data in %d SYNs for its %d connections", k, d, n[k])
		}
	}
	// The client counts a refused cookie as TCPFastOpenActiveFail and the
	// fallback that follows as MPCapableDataFallback.
	for _, name := range []string{"TcpExtTCPFastOpenActive", "TcpExtTCPFastOpenActiveFail", "MPTcpExtMPCapableDataFallback", "MPTcpExtMPCapableFallbackSYNACK"} {
		d := clientAfter[name] - clientBefore[name]
		t.Logf("client: %s %d", name, d)
		if name != "TcpExtTCPFastOpenActive" && d != 0 {
			t.Errorf("client: %s went up by %d", name, d)
		}
	}
	t.Logf("cookie listeners, shared key: %d of %d cookie TFO connections stayed MPTCP", stayed, echoes)
	if stayed != echoes {
		t.Errorf("with a shared key %d of %d cookie connections fell back", echoes-stayed, echoes)
	}

	// Control: a key per node. The cookie listeners refuse the cookies of
	// the other nodes' keys.
	for i, n := range e.nodes {
		clSetSysctl(t, n.ns, "net.ipv4.tcp_fastopen_key", fmt.Sprintf("%08x-00000000-00000000-%08x", i+1, i+1))
	}
	before = e.netstat()
	clientBefore = netstatIn(t, e.lab.Client)
	stayed = 0
	for range echoes {
		mp, err := e.cookieEcho()
		if err != nil {
			t.Fatal(err)
		}
		if mp {
			stayed++
		}
	}
	controlTFO := make([]*clConn, 0, 30)
	for range 30 {
		c, err := e.openTFO(clSpec{up: 1024, down: 1024})
		if err != nil {
			t.Fatal(err)
		}
		controlTFO = append(controlTFO, c)
	}
	for _, c := range controlTFO {
		if err := c.wait(20 * time.Second); err != nil {
			t.Error(err)
		} else if _, err := c.intact(); err != nil {
			t.Error(err)
		}
	}
	after = e.netstat()
	clientAfter = netstatIn(t, e.lab.Client)
	logCounterDeltas(t, "control: client", clientBefore, clientAfter)
	fails := int64(0)
	for k := 1; k <= clNodes; k++ {
		fails += clDelta(before, after, k, "TcpExtTCPFastOpenPassiveFail")
	}
	t.Logf("control, a key per node: cookie listeners refused %d cookies (TCPFastOpenPassiveFail, all nodes) in %d connections, %d stayed MPTCP (client MPCapableDataFallback %d); the converter's connections, which take any SYN data, all %d intact",
		fails, echoes, stayed, clientAfter["MPTcpExtMPCapableDataFallback"]-clientBefore["MPTcpExtMPCapableDataFallback"], len(controlTFO))
	if fails == 0 {
		t.Errorf("control: no cookie refused with a key per node: the test does not show what the shared key does")
	}
}

// ---------------------------------------------------------------- C flag

// TestClusterNoCFlag is the negative control of TestClusterSpread: the
// same lab, but converters started without --cluster-vip (so without the
// C flag and without an address of their own to announce), the VIP
// announced by the test through a device cvcluster9 (a veth) on each node.
// The clients then join the VIP itself from path 2, a new 5-tuple that the
// router hashes to any node: most joins reach a node that does not know
// the connection's token (MPJoinNoTokenFound). This is what the C flag and
// the node's own address prevent.
func TestClusterNoCFlag(t *testing.T) {
	e := clNewEnv(t, false)
	for _, n := range e.nodes {
		for _, args := range [][]string{
			{"-n", n.ns, "link", "add", "cvcluster9", "type", "veth", "peer", "name", "cvpeer9"},
			{"-n", n.ns, "link", "set", "cvpeer9", "up"},
			{"-n", n.ns, "addr", "add", e.lab.VIPs[0].String() + "/32", "dev", "cvcluster9"},
			{"-n", n.ns, "addr", "add", e.lab.VIPs[1].String() + "/128", "dev", "cvcluster9", "nodad"},
			{"-n", n.ns, "link", "set", "cvcluster9", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		if got := clSysctl(t, n.ns, "net.mptcp.allow_join_initial_addr_port"); got != "1" {
			t.Fatalf("%s: allow_join_initial_addr_port %s, want the default 1", n.ns, got)
		}
		n.proc = clStartIn(t, n.ns, append([]string{"--control", n.control}, clDestinations...)...)
		if len(n.proc.waitRecords(t, "listening", 1)) == 0 {
			t.Fatalf("%s: converter not listening; log:\n%s", n.ns, n.proc.rawLog())
		}
	}
	e.waitMembers(1, 2, 3)
	e.logBuckets()
	before := e.netstat()
	clientBefore := netstatIn(t, e.lab.Client)
	hold := make(chan struct{})
	conns := e.openMany(60, e.lab.VIPs[0], clSpec{up: 16 << 10, down: 16 << 10, hold: hold}, false)
	time.Sleep(500 * time.Millisecond) // the joins are answered in a round trip
	joined := 0
	for _, c := range conns {
		sfs, _ := sockinfo.GetSubflows(c.c)
		up := 0
		for _, sf := range sfs {
			if sf.TCP.State == sockinfo.StateEstablished {
				up++
			}
		}
		if up >= 2 {
			joined++
		}
	}
	close(hold)
	for _, c := range conns {
		if err := c.wait(20 * time.Second); err != nil {
			t.Error(err)
		} else if _, err := c.intact(); err != nil {
			t.Error(err)
		}
	}
	after := e.netstat()
	clientAfter := netstatIn(t, e.lab.Client)
	n := clByNode(conns)
	var noToken, acks int64
	for k := 1; k <= clNodes; k++ {
		nt, ja := clDelta(before, after, k, "MPTcpExtMPJoinNoTokenFound"), clDelta(before, after, k, "MPTcpExtMPJoinAckRx")
		noToken += nt
		acks += ja
		t.Logf("node %d: %d connections, %d joins taken (MPJoinAckRx), %d joins for a connection it does not have (MPJoinNoTokenFound)", k, n[k], ja, nt)
	}
	sent := clientAfter["MPTcpExtMPJoinSynTx"] - clientBefore["MPTcpExtMPJoinSynTx"]
	t.Logf("without the C flag: the client sent %d joins to the VIP; %d reached the connection's node, %d another node (MPJoinNoTokenFound); %d of 60 connections have two subflows",
		sent, acks, noToken, joined)
	if noToken == 0 {
		t.Errorf("no join reached a wrong node: the control does not show what the C flag prevents")
	}
	if sent < 60 {
		t.Errorf("the client sent %d joins for 60 connections", sent)
	}
}

// ---------------------------------------------------------------- CLI

// clStatus is the contract of `converter lab status --json` that scripts
// use, with the cluster lab's additions.
type clStatus struct {
	Complete bool `json:"complete"`
	Client   struct {
		Namespace string `json:"namespace"`
	} `json:"client"`
	Server struct {
		Namespace string   `json:"namespace"`
		Addresses []string `json:"addresses"`
	} `json:"server"`
	VIP   []string `json:"vip"`
	Nodes []struct {
		Namespace string   `json:"namespace"`
		Addresses []string `json:"addresses"`
		Device    string   `json:"device"`
		Announced []string `json:"announced"`
	} `json:"nodes"`
	BGP []struct {
		Node  string `json:"node"`
		State string `json:"state"`
	} `json:"bgp"`
	VIPNextHops []struct {
		VIP     string `json:"vip"`
		Members []struct {
			Node    string `json:"node"`
			Buckets int    `json:"buckets"`
		} `json:"members"`
	} `json:"vip_nexthops"`
	Processes []struct {
		Name    string `json:"name"`
		PID     int    `json:"pid"`
		Running bool   `json:"running"`
	} `json:"processes"`
}

func clCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(converterBin, args...).Output()
	return string(out), err
}

func clReadStatus(t *testing.T, prefix string) clStatus {
	t.Helper()
	out, _ := clCLI(t, "lab", "status", "--prefix", prefix, "--json") // exit 1 while incomplete
	var st clStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("lab status --json: %v: %s", err, out)
	}
	return st
}

// TestClusterLabCLI drives the cluster lab as a script would: `lab up
// --nodes 3`, `lab status --json` for the namespaces and addresses, a
// converter started in each node from it, the status showing the BGP
// sessions and the VIP's next hops, a repair by a second `lab up`, and
// `lab down` leaving no namespace and no process, the converters'
// included.
func TestClusterLabCLI(t *testing.T) {
	labtest.Require(t, "bird")
	prefix := lab.UniquePrefix()
	t.Cleanup(func() {
		if out, err := exec.Command(converterBin, "lab", "down", "--prefix", prefix).CombinedOutput(); err != nil {
			t.Errorf("lab down: %v: %s", err, out)
		}
	})
	if out, err := clCLI(t, "lab", "up", "--nodes", "3", "--prefix", prefix); err != nil {
		t.Fatalf("lab up --nodes 3: %v: %s", err, out)
	} else {
		t.Logf("lab up:\n%s", out)
	}
	st := clReadStatus(t, prefix)
	if !st.Complete || st.Client.Namespace != prefix+"-cli" || st.Server.Namespace != prefix+"-srv" ||
		!slices.Equal(st.Server.Addresses, []string{"10.202.3.2", "fd02:3::2"}) ||
		!slices.Equal(st.VIP, []string{"10.202.100.1", "fd02:100::1"}) || len(st.Nodes) != 3 {
		t.Fatalf("status: %+v", st)
	}
	for _, b := range st.BGP {
		if b.State != "Established" {
			t.Errorf("BGP session with %s: %s", b.Node, b.State)
		}
	}
	if len(st.BGP) != 6 {
		t.Errorf("%d BGP sessions, want 6 (one per node and family)", len(st.BGP))
	}
	dir := t.TempDir()
	var convs []*converterProc
	for i, n := range st.Nodes {
		args := []string{"--control", filepath.Join(dir, fmt.Sprintf("%d.sock", i))}
		for _, v := range st.VIP {
			args = append(args, "--cluster-vip", v)
		}
		for _, a := range n.Addresses {
			args = append(args, "--node-address", a)
		}
		p := clStartIn(t, n.Namespace, append(args, clDestinations...)...)
		if len(p.waitRecords(t, "cluster: VIPs announced", 1)) == 0 {
			t.Fatalf("%s: no announcement; log:\n%s", n.Namespace, p.rawLog())
		}
		convs = append(convs, p)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st = clReadStatus(t, prefix)
		full := len(st.VIPNextHops) == 2
		for _, r := range st.VIPNextHops {
			full = full && len(r.Members) == 3
		}
		if full || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range st.VIPNextHops {
		var m []string
		for _, x := range r.Members {
			m = append(m, fmt.Sprintf("%s (%d buckets)", x.Node, x.Buckets))
		}
		t.Logf("VIP %s next hops: %s", r.VIP, strings.Join(m, ", "))
		if len(r.Members) != 3 {
			t.Errorf("VIP %s has %d next hops, want 3", r.VIP, len(r.Members))
		}
	}
	for _, n := range st.Nodes {
		if !strings.HasPrefix(n.Device, "cvcluster") || !slices.Contains(n.Announced, "10.202.100.1") || !slices.Contains(n.Announced, n.Addresses[0]) {
			t.Errorf("node %s: device %q announces %v", n.Namespace, n.Device, n.Announced)
		}
	}
	text, err := clCLI(t, "lab", "status", "--prefix", prefix)
	if err != nil || strings.Count(text, "Established") != 6 || !strings.Contains(text, "resilient group 20900") {
		t.Errorf("lab status (%v):\n%s", err, text)
	} else {
		t.Logf("lab status, the cluster part:\n%s", text[strings.Index(text, "  vip "):])
	}

	// The shape is fixed until lab down.
	if out, err := exec.Command(converterBin, "lab", "up", "--prefix", prefix).CombinedOutput(); err == nil || !strings.Contains(string(out), "cluster lab with 3 nodes") {
		t.Errorf("lab up (one converter) over the cluster lab: %v: %s", err, out)
	}
	// Repair: a dead watcher is started again, the group stays.
	var watcher int
	for _, p := range st.Processes {
		if p.Name == "nhsync" {
			watcher = p.PID
		}
	}
	if watcher == 0 {
		t.Fatalf("no watcher in %+v", st.Processes)
	}
	syscall.Kill(watcher, syscall.SIGKILL)
	for alive := true; alive; {
		_, err := os.Stat(fmt.Sprintf("/proc/%d/cmdline", watcher))
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", watcher))
		alive = err == nil && !strings.Contains(string(b), ") Z ")
		time.Sleep(10 * time.Millisecond)
	}
	if st := clReadStatus(t, prefix); st.Complete {
		t.Errorf("status complete with the watcher dead")
	}
	if out, err := clCLI(t, "lab", "up", "--nodes", "3", "--prefix", prefix); err != nil {
		t.Fatalf("second lab up: %v: %s", err, out)
	}
	st = clReadStatus(t, prefix)
	if !st.Complete || len(st.VIPNextHops) != 2 || len(st.VIPNextHops[0].Members) != 3 {
		t.Errorf("after the repair: %+v", st)
	}

	var pids []int
	for _, p := range st.Processes {
		pids = append(pids, p.PID)
	}
	if out, err := exec.Command(converterBin, "lab", "down", "--prefix", prefix).CombinedOutput(); err != nil {
		t.Fatalf("lab down: %v: %s", err, out)
	}
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil && !strings.Contains(string(b), ") Z ") {
			t.Errorf("process %d still runs after lab down: %s", pid, b)
		}
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			t.Errorf("namespace %s left after lab down", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(lab.RunRoot, prefix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run directory left after lab down: %v", err)
	}
	for i, p := range convs { // stopped by lab down (SIGTERM: a clean exit)
		select {
		case <-p.exited:
		default:
			t.Errorf("the converter of node %d still runs after lab down", i+1)
		}
	}
}
