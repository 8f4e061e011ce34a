package sockinfo

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	// sizeofSubflowData is sizeof(struct mptcp_subflow_data), the header
	// of the MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS answers.
	sizeofSubflowData = 16
	// sizeofSockaddrStorage is sizeof(struct __kernel_sockaddr_storage);
	// struct mptcp_subflow_addrs is two of them, local then remote.
	sizeofSockaddrStorage = 128
	sizeofSubflowAddrs    = 2 * sizeofSockaddrStorage

	// initialSubflows is the array room of the first attempt: the
	// in-kernel path manager allows at most 8 extra subflows, so 9 fit.
	initialSubflows = 9
	// readAttempts bounds retries when the subflow set changes between
	// the two getsockopt calls or outgrows the array.
	readAttempts = 4
)

// errSubflowsChanging is returned when the subflow set kept changing.
var errSubflowsChanging = errors.New("sockinfo: MPTCP subflow set kept changing during read")

// Subflow is one TCP subflow of an MPTCP connection. Addresses are
// unmapped (::ffff:a.b.c.d becomes a.b.c.d); an IPv6 scope id becomes a
// numeric zone.
type Subflow struct {
	Local, Remote netip.AddrPort
	TCP           TCPInfo
}

// GetSubflows returns the subflows of MPTCP connection c, in the kernel's
// order (the initial subflow first while it lives). It joins
// MPTCP_SUBFLOW_ADDRS with MPTCP_TCPINFO by index; these are two separate
// snapshots, so the read is retried if their subflow counts disagree.
func GetSubflows(c syscall.Conn) ([]Subflow, error) {
	var subs []Subflow
	err := control(c, func(fd int) error {
		var err error
		subs, err = readSubflows(func(opt, elemSize, room int) ([][]byte, int, error) {
			return readSubflowArray(fd, opt, elemSize, room)
		})
		return err
	})
	return subs, err
}

// subflowReader reads one subflow array: see readSubflowArray.
type subflowReader func(opt, elemSize, room int) (elems [][]byte, num int, err error)

// readSubflows reads both arrays and joins them. It retries with more
// room when the kernel has more subflows than fit, and when the two
// snapshots disagree on the subflow count.
func readSubflows(read subflowReader) ([]Subflow, error) {
	room := initialSubflows
	for range readAttempts {
		addrs, nAddrs, err := read(optSubflowAddrs, sizeofSubflowAddrs, room)
		if err != nil {
			return nil, mptcpError(subflowAddrsCall, err)
		}
		infos, nInfos, err := read(optTCPInfo, sizeofTCPInfo, room)
		if err != nil {
			return nil, mptcpError(mptcpTCPInfoCall, err)
		}
		if nAddrs == nInfos && len(addrs) == nAddrs && len(infos) == nInfos {
			return joinSubflows(addrs, infos), nil
		}
		room = max(nAddrs, nInfos) + 2 // slack for subflows being added
	}
	return nil, errSubflowsChanging
}

func joinSubflows(addrs, infos [][]byte) []Subflow {
	subs := make([]Subflow, len(addrs))
	for i := range subs {
		subs[i].Local, subs[i].Remote = decodeSubflowAddrs(addrs[i])
		subs[i].TCP = decodeTCPInfo(infos[i])
	}
	return subs
}

// readSubflowArray reads an SOL_MPTCP option answered with a struct
// mptcp_subflow_data header and an array of per-subflow elements. It
// offers room elements of elemSize bytes and returns the elements
// received and how many subflows the kernel has (possibly more).
func readSubflowArray(fd, opt, elemSize, room int) ([][]byte, int, error) {
	buf := make([]byte, sizeofSubflowData+room*elemSize)
	encodeSubflowData(buf, elemSize)
	n, err := getsockopt(fd, unix.SOL_MPTCP, opt, buf)
	if err != nil {
		return nil, 0, err
	}
	return decodeSubflowData(buf[:n])
}

// encodeSubflowData writes the request header: our header size and the
// size of one element we can take; the kernel requires the rest zero.
func encodeSubflowData(buf []byte, elemSize int) {
	clear(buf[:sizeofSubflowData])
	putU32(buf[0:], sizeofSubflowData)
	putU32(buf[12:], uint32(elemSize))
}

// decodeSubflowData splits an answer into its elements. The kernel writes
// back num_subflows, size_kernel and size_user = min(our size, its size);
// elements are size_user apart and the returned length tells how many it
// copied.
func decodeSubflowData(p []byte) ([][]byte, int, error) {
	b := raw(p)
	if len(b) < sizeofSubflowData {
		return nil, 0, fmt.Errorf("sockinfo: short mptcp_subflow_data: %d bytes", len(b))
	}
	hdrSize, num, stride := toInt(b.u32(0)), toInt(b.u32(4)), toInt(b.u32(12))
	if hdrSize < sizeofSubflowData || hdrSize > len(b) || stride == 0 {
		return nil, num, nil
	}
	data := p[hdrSize:]
	elems := make([][]byte, min(num, len(data)/stride))
	for i := range elems {
		elems[i] = data[i*stride : (i+1)*stride : (i+1)*stride]
	}
	return elems, num, nil
}

// decodeSubflowAddrs decodes struct mptcp_subflow_addrs.
func decodeSubflowAddrs(p []byte) (local, remote netip.AddrPort) {
	local = decodeSockaddr(p[:min(len(p), sizeofSockaddrStorage)])
	if len(p) > sizeofSockaddrStorage {
		remote = decodeSockaddr(p[sizeofSockaddrStorage:])
	}
	return local, remote
}

// decodeSockaddr decodes a sockaddr_in or sockaddr_in6; other families
// give the zero AddrPort.
func decodeSockaddr(p []byte) netip.AddrPort {
	b := raw(p)
	switch b.u16(0) {
	case unix.AF_INET:
		if len(p) < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(p[4:8])), bePort(p))
	case unix.AF_INET6:
		if len(p) < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}
		}
		addr := netip.AddrFrom16([16]byte(p[8:24])).Unmap()
		if scope := b.u32(24); scope != 0 && addr.Is6() {
			addr = addr.WithZone(strconv.FormatUint(uint64(scope), 10))
		}
		return netip.AddrPortFrom(addr, bePort(p))
	}
	return netip.AddrPort{}
}

// toInt converts a kernel u32 count without overflowing 32-bit int.
func toInt(v uint32) int { return int(min(v, math.MaxInt32)) }

// bePort reads sin_port/sin6_port, which is in network byte order.
func bePort(p []byte) uint16 { return uint16(p[2])<<8 | uint16(p[3]) }
