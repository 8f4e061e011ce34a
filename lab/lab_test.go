package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// requireRoot skips when the host cannot run the lab, but fails under CI so
// that a misconfigured runner cannot silently skip the integration tests.
func requireRoot(t *testing.T) {
	t.Helper()
	err := EnsureRoot()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("lab prerequisites missing and CI is set: %v", err)
	}
	t.Skipf("lab prerequisites missing (run as root; set CI=1 to make this fatal): %v", err)
}

// upLab brings up a fresh lab; Down is registered before Up so a partial
// failure is cleaned too.
func upLab(t *testing.T) *Lab {
	t.Helper()
	requireRoot(t)
	prefix := UniquePrefix()
	t.Cleanup(func() {
		if err := Down(prefix); err != nil {
			t.Errorf("cleanup Down(%s): %v", prefix, err)
		}
	})
	l, err := Up(t.Context(), Config{Prefix: prefix})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	return l
}

func TestLab(t *testing.T) {
	l := upLab(t)
	ad := l.Addr

	t.Run("routing", func(t *testing.T) {
		cases := []struct {
			name       string
			local, dst netip.Addr
		}{
			{"v4 path1", netip.Addr{}, ad.ServerV4},
			{"v6 path1", netip.Addr{}, ad.ServerV6},
			{"v4 path2 source rule", ad.ClientPath2V4, ad.ServerV4},
			{"v6 path2 source rule", ad.ClientPath2V6, ad.ServerV6},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				want := tc.local
				if !want.IsValid() {
					want = map[bool]netip.Addr{true: ad.ClientPath1V4, false: ad.ClientPath1V6}[tc.dst.Is4()]
				}
				checkEcho(t, l, tc.local, tc.dst, want)
			})
		}
	})

	t.Run("mptcp subflows", func(t *testing.T) {
		for _, dst := range []netip.Addr{ad.ConvPath1V4, ad.ConvPath1V6} {
			t.Run(dst.String(), func(t *testing.T) { checkSubflows(t, l, dst) })
		}
	})

	t.Run("idempotent up", func(t *testing.T) {
		if _, err := Up(t.Context(), Config{Prefix: l.Prefix}); err != nil {
			t.Fatalf("second Up: %v", err)
		}
		for _, fam := range []string{"-4", "-6"} {
			out, err := runIP(t.Context(), "-n", l.Client, fam, "rule", "show", "table", "102")
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(out), "lookup 102"); n != 1 {
				t.Errorf("%s rules to table 102 after two Ups = %d, want 1:\n%s", fam, n, out)
			}
		}
		checkEcho(t, l, netip.Addr{}, ad.ServerV4, ad.ClientPath1V4)
	})

	t.Run("status", func(t *testing.T) { checkStatus(t, l) })

	t.Run("down", func(t *testing.T) {
		if err := l.Close(); err != nil {
			t.Fatalf("Down: %v", err)
		}
		for _, ns := range []string{l.Client, l.Converter, l.Server} {
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("/run/netns/%s still present after Down (stat err %v)", ns, err)
			}
		}
		rep, err := Status(l.Prefix)
		if err != nil {
			t.Fatalf("Status after Down: %v", err)
		}
		for _, ns := range rep.Namespaces {
			if ns.Exists {
				t.Errorf("Status after Down: %s still exists", ns.Name)
			}
		}
		if err := Down(l.Prefix); err != nil {
			t.Errorf("second Down: %v", err)
		}
	})
}

// TestUpRollback makes Up fail half-way (a veth end already exists without
// its peer) and checks it removes the namespaces it made but not the one it
// found.
func TestUpRollback(t *testing.T) {
	requireRoot(t)
	prefix := UniquePrefix()
	t.Cleanup(func() { _ = Down(prefix) })
	cli := nsName(prefix, RoleClient)
	for _, args := range [][]string{
		{"netns", "add", cli},
		{"-n", cli, "link", "add", IfClientPath1, "type", "veth", "peer", "name", "x1"},
	} {
		if _, err := runIP(t.Context(), args...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Up(t.Context(), Config{Prefix: prefix}); err == nil {
		t.Fatal("Up succeeded despite a dangling c1")
	} else {
		t.Logf("Up failed as expected: %v", err)
	}
	for _, r := range roles {
		ok, err := netnsExists(nsName(prefix, r))
		if err != nil {
			t.Fatal(err)
		}
		if want := r == RoleClient; ok != want {
			t.Errorf("after failed Up: %s exists = %v, want %v", nsName(prefix, r), ok, want)
		}
	}
}

// TestUpStaleFile checks that a plain file left at a namespace path by a
// crashed run does not block Up.
func TestUpStaleFile(t *testing.T) {
	requireRoot(t)
	prefix := UniquePrefix()
	t.Cleanup(func() { _ = Down(prefix) })
	if err := prepareNetnsDir(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(netnsPath(nsName(prefix, RoleServer)), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	l, err := Up(t.Context(), Config{Prefix: prefix})
	if err != nil {
		t.Fatalf("Up over a stale file: %v", err)
	}
	rep, err := Status(l.Prefix)
	if err != nil || !rep.Complete {
		t.Fatalf("Status complete=%v err=%v", rep.Complete, err)
	}
}

func TestValidName(t *testing.T) {
	for _, s := range []string{"", "../x", "a b", "a/b", strings.Repeat("a", 33)} {
		if validName(s) == nil {
			t.Errorf("validName(%q) = nil, want error", s)
		}
	}
	for _, s := range []string{"cv0a1b2c", UniquePrefix(), "my_lab-1"} {
		if err := validName(s); err != nil {
			t.Errorf("validName(%q): %v", s, err)
		}
	}
	if a, b := UniquePrefix(), UniquePrefix(); a == b {
		t.Errorf("UniquePrefix returned %q twice", a)
	}
}

func TestParseMPTCPLimits(t *testing.T) {
	got, err := parseMPTCPLimits("add_addr_accepted 4 subflows 3 \n")
	if err != nil {
		t.Fatal(err)
	}
	if want := (MPTCPLimits{Subflows: 3, AddAddrAccepted: 4}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// listen opens a listener inside ns and returns the connections it accepts.
func listen(t *testing.T, l *Lab, ns string, mptcp bool, addr netip.Addr) (net.Listener, <-chan *net.TCPConn) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(mptcp)
	var ln net.Listener
	err := l.Do(ns, func() (err error) {
		ln, err = lc.Listen(t.Context(), "tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan *net.TCPConn, 1)
	go func() {
		defer close(conns)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- c.(*net.TCPConn)
		}
	}()
	return ln, conns
}

// dial connects from the client namespace, optionally from a fixed source.
func dial(t *testing.T, l *Lab, mptcp bool, local netip.Addr, to net.Addr) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(mptcp)
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	var c net.Conn
	err := l.Do(l.Client, func() (err error) {
		c, err = d.DialContext(t.Context(), "tcp", to.String())
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, l.Client, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func accept(t *testing.T, conns <-chan *net.TCPConn) *net.TCPConn {
	t.Helper()
	select {
	case c := <-conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted within 5s")
		return nil
	}
}

// checkEcho echoes a message between the client and the server and checks
// the server saw the client's un-NATed address wantSrc.
func checkEcho(t *testing.T, l *Lab, local, dst, wantSrc netip.Addr) {
	t.Helper()
	ln, conns := listen(t, l, l.Server, false, dst)
	start := time.Now()
	c := dial(t, l, false, local, ln.Addr())
	// The initial SYN RTO is 1 s; a slower dial means Up returned before
	// the links were ready and the first SYN was lost.
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("dial took %v: first SYN lost, links not ready after Up?", d)
	}
	s := accept(t, conns)
	if got := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != wantSrc {
		t.Errorf("server saw client address %s, want %s", got, wantSrc)
	}
	go func() { _, _ = io.Copy(s, s) }()
	roundTrip(t, c, []byte("hello through the converter"))
}

func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// checkSubflows opens an MPTCP connection from the client to the converter
// over path 1 and waits for the client's endpoint on path 2 to join.
func checkSubflows(t *testing.T, l *Lab, dst netip.Addr) {
	ln, conns := listen(t, l, l.Converter, true, dst)
	c := dial(t, l, true, netip.Addr{}, ln.Addr())
	s := accept(t, conns)
	for name, conn := range map[string]*net.TCPConn{"client": c, "converter": s} {
		if ok, err := conn.MultipathTCP(); err != nil || !ok {
			t.Fatalf("%s side is not MPTCP (ok=%v err=%v)", name, ok, err)
		}
	}
	go func() { _, _ = io.Copy(s, s) }()
	roundTrip(t, c, bytes.Repeat([]byte("mptcp"), 1000))

	deadline := time.Now().Add(2 * time.Second)
	for {
		n, err := extraSubflows(s)
		if err != nil {
			t.Fatalf("MPTCP_INFO on converter side: %v", err)
		}
		if n >= 1 {
			t.Logf("converter side has %d extra subflow(s)", n)
			break
		}
		if time.Now().After(deadline) {
			out, _ := l.Command(t.Context(), l.Converter, "ss", "-tinM").CombinedOutput()
			t.Fatalf("no second subflow after 2s; ss -tinM in %s:\n%s", l.Converter, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	roundTrip(t, c, []byte("still alive with two subflows"))
}

// extraSubflows reads mptcp_info.mptcpi_subflows (the first byte): the
// number of subflows besides the initial one.
func extraSubflows(c *net.TCPConn) (int, error) {
	const mptcpInfo = 1 // MPTCP_INFO, not in x/sys/unix
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256)
	size := uint32(len(buf))
	var errno syscall.Errno
	err = rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_MPTCP, mptcpInfo,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	if size == 0 {
		return 0, errors.New("empty mptcp_info")
	}
	return int(buf[0]), nil
}

func checkStatus(t *testing.T, l *Lab) {
	rep, err := Status(l.Prefix)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		t.Fatalf("encode status: %v", err)
	}
	if !rep.Complete {
		t.Fatalf("status not complete:\n%s", js)
	}
	byRole := map[Role]NamespaceStatus{}
	for _, ns := range rep.Namespaces {
		byRole[ns.Role] = ns
		if ns.MPTCP == nil || ns.MPTCP.Limits != (MPTCPLimits{Subflows: mptcpLimit, AddAddrAccepted: mptcpLimit}) {
			t.Errorf("%s: mptcp limits %+v, want %d/%d", ns.Name, ns.MPTCP, mptcpLimit, mptcpLimit)
		}
	}
	cli := byRole[RoleClient]
	if !hasAddr(cli, IfClientPath2, "10.201.2.2/24") || !hasAddr(cli, IfClientPath2, "fd01:2::2/64") {
		t.Errorf("client c2 addresses missing:\n%s", js)
	}
	if eps := cli.MPTCP.Endpoints; len(eps) != 2 {
		t.Errorf("client endpoints = %+v, want 2", eps)
	}
	if got := byRole[RoleConverter].Sysctls["net.ipv4.ip_forward"]; got != "1" {
		t.Errorf("converter ip_forward = %q", got)
	}
	if got := cli.Sysctls["net.ipv4.tcp_fastopen"]; got != "5" {
		t.Errorf("client tcp_fastopen = %q", got)
	}
	// The fields scripts read, the same in both lab shapes.
	if rep.Client.Namespace != l.Client || rep.Server.Namespace != l.Server ||
		!slices.Equal(rep.Server.Addresses, []string{"10.201.3.2", "fd01:3::2"}) ||
		rep.VIP == nil || len(rep.VIP) != 0 || len(rep.Nodes) != 1 || rep.Nodes[0].Namespace != l.Converter ||
		!slices.Equal(rep.Nodes[0].Addresses, []string{"10.201.1.1", "fd01:1::1", "10.201.2.1", "fd01:2::1"}) {
		t.Errorf("status contract fields:\n%s", js)
	}
	if !strings.Contains(string(js), `"vip": []`) || rep.Cluster != nil || rep.BGP != nil {
		t.Errorf("a one-converter lab's status has cluster parts or a null vip:\n%s", js)
	}
}

func hasAddr(ns NamespaceStatus, link, addr string) bool {
	i := slices.IndexFunc(ns.Links, func(l LinkStatus) bool { return l.Name == link })
	return i >= 0 && slices.Contains(ns.Links[i].Addrs, addr)
}
