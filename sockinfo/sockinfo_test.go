package sockinfo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// --- layout tests on hand-built buffers -------------------------------

// field is one value written at a fixed offset of a hand-built buffer.
type field struct {
	off, size int
	val       uint64
}

func build(size int, fields ...field) []byte {
	b := make([]byte, size)
	for _, f := range fields {
		switch f.size {
		case 1:
			b[f.off] = byte(f.val)
		case 2:
			binary.NativeEndian.PutUint16(b[f.off:], uint16(f.val))
		case 4:
			binary.NativeEndian.PutUint32(b[f.off:], uint32(f.val))
		case 8:
			binary.NativeEndian.PutUint64(b[f.off:], f.val)
		}
	}
	return b
}

// mptcpInfoFields is struct mptcp_info of Linux 6.18 as listed by the
// running kernel's BTF (/sys/kernel/btf/vmlinux), with distinct values.
func mptcpInfoFields() []field {
	return []field{
		{0, 1, 1}, {1, 1, 2}, {2, 1, 3}, {3, 1, 4}, {4, 1, 5}, {5, 1, 6},
		{8, 4, 0x3}, {12, 4, 0xdeadbeef},
		{16, 8, 0x1111111111111111}, {24, 8, 0x2222222222222222}, {32, 8, 0x3333333333333333},
		{40, 1, 7}, {41, 1, 8}, {42, 1, 1}, {44, 4, 0x44444444},
		{48, 8, 0x4848484848484848}, {56, 8, 0x5656565656565656},
		{64, 8, 0x6464646464646464}, {72, 8, 0x7272727272727272},
		{80, 1, 9}, {81, 1, 10}, {82, 1, 11},
		{84, 4, 0x84848484}, {88, 4, 0x88888888}, {92, 4, 0x92929292},
	}
}

func TestDecodeMPTCPInfoLayout(t *testing.T) {
	want := MPTCPInfo{
		Len: 96, Subflows: 1, AddAddrSignal: 2, AddAddrAccepted: 3, SubflowsMax: 4,
		AddAddrSignalMax: 5, AddAddrAcceptedMax: 6, Flags: 3, Fallback: true,
		Token: 0xdeadbeef, WriteSeq: 0x1111111111111111, SndUna: 0x2222222222222222,
		RcvNxt: 0x3333333333333333, LocalAddrUsed: 7, LocalAddrMax: 8, CsumEnabled: true,
		Retransmits: 0x44444444, BytesRetrans: 0x4848484848484848,
		BytesSent: 0x5656565656565656, BytesReceived: 0x6464646464646464,
		BytesAcked: 0x7272727272727272, SubflowsTotal: 9, EndpLaminarMax: 10,
		EndpFullmeshMax: 11, LastDataSent: 0x84848484, LastDataRecv: 0x88888888,
		LastAckRecv: 0x92929292,
	}
	got := decodeMPTCPInfo(build(sizeofMPTCPInfo, mptcpInfoFields()...))
	if got != want {
		t.Fatalf("decode:\n got %+v\nwant %+v", got, want)
	}
	if !got.RemoteKeyReceived() || got.TotalSubflows() != 9 {
		t.Errorf("RemoteKeyReceived=%v TotalSubflows=%d", got.RemoteKeyReceived(), got.TotalSubflows())
	}
	// A longer struct from a future kernel decodes the same.
	long := append(build(sizeofMPTCPInfo, mptcpInfoFields()...), bytes.Repeat([]byte{0xff}, 40)...)
	if got := decodeMPTCPInfo(long); got.Len != len(long) || got.Token != 0xdeadbeef || got.LastAckRecv != 0x92929292 {
		t.Errorf("long struct: %+v", got)
	}
}

// TestDecodeMPTCPInfoShort decodes the 48-byte struct of the first
// kernels with MPTCP_INFO: later fields stay zero.
func TestDecodeMPTCPInfoShort(t *testing.T) {
	got := decodeMPTCPInfo(build(sizeofMPTCPInfo, mptcpInfoFields()...)[:48])
	if got.Token != 0xdeadbeef || got.RcvNxt != 0x3333333333333333 || !got.CsumEnabled || got.Retransmits != 0x44444444 {
		t.Errorf("leading fields lost: %+v", got)
	}
	if got.BytesRetrans != 0 || got.BytesSent != 0 || got.SubflowsTotal != 0 || got.LastAckRecv != 0 {
		t.Errorf("fields past the end not zero: %+v", got)
	}
	if got.TotalSubflows() != int(got.Subflows)+1 {
		t.Errorf("TotalSubflows on an old kernel = %d, want Subflows+1", got.TotalSubflows())
	}
}

// TestDecodeTCPInfoMatchesXSys checks every field that x/sys exposes
// against unix.TCPInfo, whose layout cgo generated from the uapi header:
// fields are paired by name, ignoring case and underscores.
func TestDecodeTCPInfoMatchesXSys(t *testing.T) {
	var ref unix.TCPInfo
	rv := reflect.ValueOf(&ref).Elem()
	for i := range rv.NumField() {
		if f := rv.Field(i); f.CanSet() {
			f.SetUint(0x0101010101010101*uint64(i+1) + uint64(i)) // truncated to the field size
		}
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&ref)), unsafe.Sizeof(ref))
	if len(buf) != sizeofTCPInfo {
		t.Fatalf("unix.TCPInfo is %d bytes, decoder assumes %d", len(buf), sizeofTCPInfo)
	}
	got := reflect.ValueOf(decodeTCPInfo(bytes.Clone(buf)))
	ours := map[string]reflect.Value{}
	for i := range got.NumField() {
		ours[normalize(got.Type().Field(i).Name)] = got.Field(i)
	}
	for i := range rv.NumField() {
		name := rv.Type().Field(i).Name
		if name == "_" {
			continue
		}
		g, ok := ours[normalize(name)]
		if !ok {
			t.Errorf("unix.TCPInfo.%s has no TCPInfo counterpart", name)
			continue
		}
		if g.Uint() != rv.Field(i).Uint() {
			t.Errorf("%s = %#x, want %#x", name, g.Uint(), rv.Field(i).Uint())
		}
	}
}

func normalize(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }

// TestDecodeTCPInfoBitfields covers what x/sys hides in padding: the
// bitfields of bytes 6 and 7 and the AccECN fields at 276 and 278.
func TestDecodeTCPInfoBitfields(t *testing.T) {
	b := build(sizeofTCPInfo,
		field{0, 1, uint64(StateSynRecv)},
		field{5, 1, uint64(OptTimestamps | OptSACK | OptWScale | OptSynData)},
		field{6, 1, 0xa7},     // rcv_wscale 10, snd_wscale 7
		field{7, 1, 0b101},    // fastopen_client_fail 2, app_limited 1
		field{276, 2, 0x0102}, // accecn_fail_mode
		field{278, 2, 0x0304}, // accecn_opt_seen
	)
	got := decodeTCPInfo(b)
	if got.SndWScale != 7 || got.RcvWScale != 10 || got.FastOpenClientFail != 2 ||
		!got.DeliveryRateAppLimited || got.AccECNFailMode != 0x0102 || got.AccECNOptSeen != 0x0304 {
		t.Errorf("bitfields: %+v", got)
	}
	if !got.HasTimestamps() || !got.HasSACK() || !got.HasWScale() || !got.SynData() || got.HasECN() || got.TFOChild() {
		t.Errorf("option bits %#x decoded wrong", got.Options)
	}
	if got.StateName() != "SYN_RECV" || StateName(200) != "STATE(200)" {
		t.Errorf("state names: %q %q", got.StateName(), StateName(200))
	}
	// A 104-byte struct (Linux 3.x) leaves the 64-bit counters zero.
	short := decodeTCPInfo(append(b[:100:100], 1, 0, 0, 0))
	if short.Len != 104 || short.TotalRetrans != 1 || short.PacingRate != 0 || short.AccECNOptSeen != 0 {
		t.Errorf("short struct: %+v", short)
	}
}

func subflowData(num, stride uint32, elems ...[]byte) []byte {
	b := build(sizeofSubflowData, field{0, 4, sizeofSubflowData}, field{4, 4, uint64(num)},
		field{8, 4, 300}, field{12, 4, uint64(stride)})
	for _, e := range elems {
		b = append(b, e...)
	}
	return b
}

func TestDecodeSubflowData(t *testing.T) {
	e1, e2 := bytes.Repeat([]byte{1}, 8), bytes.Repeat([]byte{2}, 8)
	// The kernel has 3 subflows but copied only 2: report both facts.
	elems, num, err := decodeSubflowData(subflowData(3, 8, e1, e2))
	if err != nil || num != 3 || len(elems) != 2 || !bytes.Equal(elems[0], e1) || !bytes.Equal(elems[1], e2) {
		t.Fatalf("got %v, %d, %v", elems, num, err)
	}
	if _, _, err := decodeSubflowData(make([]byte, 15)); err == nil {
		t.Error("short header accepted")
	}
	if elems, _, _ := decodeSubflowData(subflowData(2, 0, e1)); len(elems) != 0 {
		t.Error("zero stride yielded elements")
	}
	hdr := make([]byte, sizeofSubflowData)
	encodeSubflowData(hdr, 280)
	if want := build(16, field{0, 4, 16}, field{12, 4, 280}); !bytes.Equal(hdr, want) {
		t.Errorf("request header %x, want %x", hdr, want)
	}
}

// fakeKernel answers subflow array reads like the kernel would with n
// subflows, or with addrsN and infosN if they differ (a racing change).
type fakeKernel struct {
	addrsN, infosN int
	rooms          []int
}

func (k *fakeKernel) read(opt, elemSize, room int) ([][]byte, int, error) {
	k.rooms = append(k.rooms, room)
	n := k.infosN
	if opt == optSubflowAddrs {
		n = k.addrsN
	}
	elems := make([][]byte, min(n, room))
	for i := range elems {
		if opt == optSubflowAddrs {
			elems[i] = append(sockaddr4([4]byte{10, 0, 0, byte(i)}, 1), sockaddr4([4]byte{10, 1, 0, byte(i)}, 2)...)
		} else {
			elems[i] = build(elemSize, field{100, 4, uint64(i)}) // total_retrans
		}
	}
	return elems, n, nil
}

func TestReadSubflowsGrows(t *testing.T) {
	k := &fakeKernel{addrsN: 12, infosN: 12}
	subs, err := readSubflows(k.read)
	if err != nil || len(subs) != 12 {
		t.Fatalf("got %d subflows, %v", len(subs), err)
	}
	for i, s := range subs {
		if s.Local.Addr().As4()[3] != byte(i) || s.Remote.Port() != 2 || s.TCP.TotalRetrans != uint32(i) {
			t.Errorf("subflow %d joined wrong: %+v", i, s)
		}
	}
	if want := []int{9, 9, 14, 14}; !reflect.DeepEqual(k.rooms, want) {
		t.Errorf("rooms offered %v, want %v", k.rooms, want)
	}
}

func TestReadSubflowsUnstable(t *testing.T) {
	k := &fakeKernel{addrsN: 2, infosN: 3}
	if _, err := readSubflows(k.read); !errors.Is(err, errSubflowsChanging) {
		t.Fatalf("got %v, want errSubflowsChanging", err)
	}
	if len(k.rooms) != 2*readAttempts {
		t.Errorf("%d reads, want %d", len(k.rooms), 2*readAttempts)
	}
}

func sockaddr4(ip [4]byte, port uint16) []byte {
	b := build(sizeofSockaddrStorage, field{0, 2, unix.AF_INET})
	binary.BigEndian.PutUint16(b[2:], port)
	copy(b[4:], ip[:])
	return b
}

func sockaddr6(ip netip.Addr, port uint16, scope uint32) []byte {
	b := build(sizeofSockaddrStorage, field{0, 2, unix.AF_INET6}, field{24, 4, uint64(scope)})
	binary.BigEndian.PutUint16(b[2:], port)
	a := ip.As16()
	copy(b[8:], a[:])
	return b
}

func TestDecodeSubflowAddrs(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want netip.AddrPort
	}{
		{"v4", sockaddr4([4]byte{192, 0, 2, 1}, 8080), netip.MustParseAddrPort("192.0.2.1:8080")},
		{"v6", sockaddr6(netip.MustParseAddr("2001:db8::1"), 443, 0), netip.MustParseAddrPort("[2001:db8::1]:443")},
		{"v4-mapped", sockaddr6(netip.MustParseAddr("::ffff:10.0.0.1"), 1, 0), netip.MustParseAddrPort("10.0.0.1:1")},
		{"scoped", sockaddr6(netip.MustParseAddr("fe80::1"), 2, 3), netip.MustParseAddrPort("[fe80::1%3]:2")},
		{"unspec", make([]byte, sizeofSockaddrStorage), netip.AddrPort{}},
		{"truncated v6", sockaddr6(netip.MustParseAddr("::1"), 2, 0)[:20], netip.AddrPort{}},
	}
	for _, tt := range tests {
		if got := decodeSockaddr(tt.in); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
	l, r := decodeSubflowAddrs(append(tests[0].in, tests[1].in...))
	if l != tests[0].want || r != tests[1].want {
		t.Errorf("pair: %v %v", l, r)
	}
}

// FuzzDecode feeds arbitrary kernel answers of any length to every decoder.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add(build(sizeofMPTCPInfo, mptcpInfoFields()...))
	f.Add(subflowData(2, 8, make([]byte, 12)))
	f.Add(sockaddr6(netip.MustParseAddr("fe80::1"), 2, 3))
	f.Fuzz(func(t *testing.T, p []byte) {
		if got := decodeTCPInfo(p); got.Len != len(p) {
			t.Fatalf("TCPInfo.Len = %d, want %d", got.Len, len(p))
		}
		decodeMPTCPInfo(p).TotalSubflows()
		decodeSockaddr(p)
		decodeSubflowAddrs(p)
		elems, num, err := decodeSubflowData(p)
		if err == nil && len(elems) > num {
			t.Fatalf("%d elements for %d subflows", len(elems), num)
		}
		for _, e := range elems {
			if len(e) != len(elems[0]) {
				t.Fatal("elements of different sizes")
			}
		}
	})
}

// --- live sockets -----------------------------------------------------

// requireMPTCP skips when the kernel cannot do MPTCP, unless CI is set.
func requireMPTCP(t *testing.T) {
	t.Helper()
	reason := ""
	if b, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err != nil || strings.TrimSpace(string(b)) != "1" {
		reason = "net.mptcp.enabled is not 1"
	} else if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP); err != nil {
		reason = "socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP): " + err.Error()
	} else {
		unix.Close(fd)
	}
	switch {
	case reason == "":
	case os.Getenv("CI") != "":
		t.Fatalf("MPTCP unavailable in CI: %s", reason)
	default:
		t.Skipf("MPTCP unavailable: %s", reason)
	}
}

// pair returns a connected client and server on addr.
func pair(t *testing.T, addr string, srvMPTCP, cliMPTCP bool) (client, server *net.TCPConn) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(srvMPTCP)
	ln, err := lc.Listen(t.Context(), "tcp", addr)
	if err != nil && strings.HasPrefix(addr, "[") {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var d net.Dialer
	d.SetMultipathTCP(cliMPTCP)
	c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// transfer sends n bytes from src to dst and waits until dst read them.
func transfer(t *testing.T, src, dst net.Conn, n int64) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(src, io.LimitReader(zeros{}, n))
		errc <- err
	}()
	if got, err := io.CopyN(io.Discard, dst, n); err != nil {
		t.Fatalf("read %d of %d bytes: %v", got, n, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestMPTCPLoopback(t *testing.T) {
	requireMPTCP(t)
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(addr, func(t *testing.T) { testMPTCPLoopback(t, addr) })
	}
}

func testMPTCPLoopback(t *testing.T, addr string) {
	const up, down = 1 << 20, 64 << 10
	client, server := pair(t, addr, true, true)
	for _, c := range []*net.TCPConn{client, server} {
		if !IsMPTCP(c) {
			t.Fatal("IsMPTCP = false on an MPTCP socket")
		}
		if err := WaitEstablished(t.Context(), c); err != nil {
			t.Fatal(err)
		}
	}
	transfer(t, client, server, up)
	transfer(t, server, client, down)

	ci, si := mptcpInfo(t, client), mptcpInfo(t, server)
	t.Logf("client: %+v", ci)
	t.Logf("server: %+v", si)
	if ci.Token == 0 || si.Token == 0 || ci.Token == si.Token {
		t.Errorf("tokens: client %#x server %#x, want distinct non-zero", ci.Token, si.Token)
	}
	if ci.Fallback || si.Fallback || !ci.RemoteKeyReceived() || !si.RemoteKeyReceived() {
		t.Errorf("flags: client %#x server %#x", ci.Flags, si.Flags)
	}
	// Each side received exactly what the other wrote (the counters are at
	// the MPTCP data level); sent counts may include retransmissions.
	if si.BytesReceived != up || ci.BytesReceived != down {
		t.Errorf("bytes_received: server %d (want %d), client %d (want %d)", si.BytesReceived, up, ci.BytesReceived, down)
	}
	if ci.BytesSent < up || ci.BytesSent > up+ci.BytesRetrans || si.BytesSent < down || si.BytesSent > down+si.BytesRetrans {
		t.Errorf("bytes_sent: client %d (wrote %d), server %d (wrote %d)", ci.BytesSent, up, si.BytesSent, down)
	}
	if ci.TotalSubflows() < 1 || si.TotalSubflows() < 1 {
		t.Errorf("subflows: client %d server %d", ci.TotalSubflows(), si.TotalSubflows())
	}

	checkSubflows(t, client, up)
	checkSubflows(t, server, down)
}

func mptcpInfo(t *testing.T, c *net.TCPConn) MPTCPInfo {
	t.Helper()
	m, err := GetMPTCPInfo(c)
	if err != nil {
		t.Fatal(err)
	}
	if m.Len < 48 {
		t.Fatalf("MPTCP_INFO returned %d bytes", m.Len)
	}
	return m
}

// checkSubflows finds c's own 4-tuple among its subflows, established,
// and checks that the subflows together carried at least sent bytes.
func checkSubflows(t *testing.T, c *net.TCPConn, sent uint64) {
	t.Helper()
	subs, err := GetSubflows(c)
	if err != nil {
		t.Fatal(err)
	}
	local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	found, total := false, uint64(0)
	for i, s := range subs {
		t.Logf("subflow %d: %v -> %v %s rtt=%dus sent=%d", i, s.Local, s.Remote, s.TCP.StateName(), s.TCP.RTT, s.TCP.BytesSent)
		found = found || (s.Local == local && s.Remote == remote && s.TCP.State == StateEstablished)
		total += s.TCP.BytesSent
	}
	if !found {
		t.Errorf("no established subflow %v -> %v among %d", local, remote, len(subs))
	}
	if total < sent {
		t.Errorf("subflows sent %d bytes, conn wrote %d", total, sent)
	}
	ti, err := GetTCPInfo(c)
	if err != nil || ti.State != StateEstablished || ti.Len != sizeofTCPInfo {
		t.Errorf("TCP_INFO of the initial subflow: %+v, %v", ti, err)
	}
	checkNoRoom(t, c, len(subs))
}

// checkNoRoom offers the kernel room for no element: it must still
// report how many subflows exist, which is how truncation is detected.
func checkNoRoom(t *testing.T, c *net.TCPConn, want int) {
	t.Helper()
	for opt, size := range map[int]int{optSubflowAddrs: sizeofSubflowAddrs, optTCPInfo: sizeofTCPInfo} {
		err := control(c, func(fd int) error {
			elems, num, err := readSubflowArray(fd, opt, size, 0)
			if err == nil && (len(elems) != 0 || num != want) {
				t.Errorf("option %d with no room: %d elements, num_subflows %d, want 0, %d", opt, len(elems), num, want)
			}
			return err
		})
		if err != nil {
			t.Errorf("option %d with no room: %v", opt, err)
		}
	}
}

func TestPlainTCP(t *testing.T) {
	client, server := pair(t, "127.0.0.1:0", false, false)
	for _, c := range []*net.TCPConn{client, server} {
		if IsMPTCP(c) {
			t.Error("IsMPTCP = true on plain TCP")
		}
		if _, err := GetMPTCPInfo(c); !errors.Is(err, ErrNotMPTCP) {
			t.Errorf("GetMPTCPInfo: %v, want ErrNotMPTCP", err)
		} else {
			t.Logf("GetMPTCPInfo: %v", err)
		}
		if _, err := GetSubflows(c); !errors.Is(err, ErrNotMPTCP) {
			t.Errorf("GetSubflows: %v, want ErrNotMPTCP", err)
		}
		ti, err := GetTCPInfo(c)
		if err != nil {
			t.Fatal(err)
		}
		if ti.State != StateEstablished || !ti.HasTimestamps() || !ti.HasSACK() || !ti.HasWScale() || ti.SndMSS == 0 || ti.RTO == 0 {
			t.Errorf("TCP_INFO of a loopback conn: %+v", ti)
		}
	}
}

// TestFallback connects an MPTCP client to a plain TCP server: the client
// socket stays IPPROTO_MPTCP but falls back to TCP.
func TestFallback(t *testing.T) {
	requireMPTCP(t)
	client, _ := pair(t, "127.0.0.1:0", false, true)
	checkFallback(t, client)
}

// TestPlainClientOfMPTCPListener connects a plain TCP client to an MPTCP
// listener: the accepted socket is a plain TCP socket.
func TestPlainClientOfMPTCPListener(t *testing.T) {
	requireMPTCP(t)
	_, server := pair(t, "127.0.0.1:0", true, false)
	if IsMPTCP(server) {
		t.Error("IsMPTCP = true on a socket accepted from a plain TCP client")
	}
	if _, err := GetMPTCPInfo(server); !errors.Is(err, ErrNotMPTCP) {
		t.Errorf("GetMPTCPInfo: %v, want ErrNotMPTCP", err)
	}
}

func checkFallback(t *testing.T, client *net.TCPConn) {
	t.Helper()
	if !IsMPTCP(client) {
		t.Error("IsMPTCP = false on a fallen-back MPTCP socket")
	}
	_, err := GetMPTCPInfo(client)
	if !errors.Is(err, ErrNotMPTCP) {
		t.Fatalf("GetMPTCPInfo: %v, want ErrNotMPTCP", err)
	}
	t.Logf("fallback: %v", err)
	if ti, err := GetTCPInfo(client); err != nil || ti.State != StateEstablished {
		t.Errorf("TCP_INFO: %+v, %v", ti, err)
	}
}

func TestClosedConn(t *testing.T) {
	client, _ := pair(t, "127.0.0.1:0", false, false)
	client.Close()
	if _, err := GetTCPInfo(client); !errors.Is(err, net.ErrClosed) {
		t.Errorf("GetTCPInfo on a closed conn: %v", err)
	}
}

func TestWaitEstablishedPrompt(t *testing.T) {
	client, server := pair(t, "127.0.0.1:0", true, true)
	for _, c := range []*net.TCPConn{client, server} {
		start := time.Now()
		if err := WaitEstablished(t.Context(), c); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("WaitEstablished on an established conn took %v", d)
		}
	}
}

func TestWaitEstablishedCancel(t *testing.T) {
	c := synSentSocket(t)
	if ti, err := GetTCPInfo(c); err != nil || ti.State != StateSynSent {
		t.Fatalf("want a SYN_SENT socket, got %s, %v", ti.StateName(), err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := WaitEstablished(ctx, c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitEstablished: %v, want DeadlineExceeded", err)
	}
	// The deadline plus at most one capped backoff step, with slack.
	if d := time.Since(start); d > 30*time.Millisecond+maxWaitBackoff+100*time.Millisecond {
		t.Errorf("returned %v after the start", d)
	}
}

func TestWaitEstablishedClosed(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "unconnected")
	defer f.Close()
	if err := WaitEstablished(t.Context(), f); !errors.Is(err, ErrConnClosed) {
		t.Fatalf("WaitEstablished on an unconnected socket: %v, want ErrConnClosed", err)
	}
}

// synSentSocket returns a socket stuck in SYN_SENT: its SYN goes to a
// listener with backlog 0 whose accept queue is already full, and Linux
// drops SYNs to a full queue.
func synSentSocket(t *testing.T) syscall.Conn {
	t.Helper()
	lfd := socket(t, 0)
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := unix.Bind(lfd, sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	bound, err := unix.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	sa.Port = bound.(*unix.SockaddrInet4).Port
	filler := socket(t, 0)
	if err := unix.Connect(filler, sa); err != nil {
		t.Fatal(err)
	}
	fd := socket(t, unix.SOCK_NONBLOCK)
	if err := unix.Connect(fd, sa); !errors.Is(err, unix.EINPROGRESS) {
		t.Fatalf("non-blocking connect: %v", err)
	}
	f := os.NewFile(uintptr(fd), "syn-sent")
	t.Cleanup(func() { f.Close() })
	return f
}

func socket(t *testing.T, flags int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|flags, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// synSentConn is synSentSocket as a *net.TCPConn (in Go's netpoller).
func synSentConn(t *testing.T) *net.TCPConn {
	t.Helper()
	f := synSentSocket(t).(*os.File)
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

func TestWaitConnected(t *testing.T) {
	client, _ := pair(t, "127.0.0.1:0", false, false)
	if err := WaitConnected(t.Context(), client); err != nil {
		t.Fatalf("established conn: %v", err)
	}
	// The wait leaves no deadline behind.
	if err := client.SetWriteDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatalf("write after the wait: %v", err)
	}

	c := synSentConn(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if err := WaitConnected(ctx, c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SYN_SENT with a deadline: %v, want DeadlineExceeded", err)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	time.AfterFunc(20*time.Millisecond, cancel2)
	if err := WaitConnected(ctx2, c); !errors.Is(err, context.Canceled) {
		t.Fatalf("SYN_SENT, canceled: %v, want Canceled", err)
	}
}

func TestWaitConnectedClosed(t *testing.T) {
	client, _ := pair(t, "127.0.0.1:0", false, false)
	client.Close()
	if err := WaitConnected(t.Context(), client); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed conn: %v", err)
	}
}

// The not-MPTCP error reads and matches as fmt's wrapping did.
func TestNotMPTCPError(t *testing.T) {
	err := mptcpError(mptcpInfoCall, unix.EOPNOTSUPP)
	want := fmt.Errorf("%s: %w (%w)", mptcpInfoCall, ErrNotMPTCP, unix.EOPNOTSUPP)
	if err.Error() != want.Error() {
		t.Fatalf("%q, want %q", err, want)
	}
	if !errors.Is(err, ErrNotMPTCP) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("%v does not match its causes", err)
	}
}
