package sockinfo

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// sizeofMPTCPInfo is sizeof(struct mptcp_info) on Linux 6.18.
const sizeofMPTCPInfo = 96

// Bits of MPTCPInfo.Flags (MPTCP_INFO_FLAG_* in include/uapi/linux/mptcp.h).
const (
	FlagFallback          uint32 = 0x1
	FlagRemoteKeyReceived uint32 = 0x2
)

// MPTCPInfo is struct mptcp_info. Len is how many bytes the kernel
// returned: fields that start at or beyond Len were not provided.
type MPTCPInfo struct {
	Len int

	// Subflows counts additional subflows only; SubflowsTotal (Linux 6.10+)
	// includes the initial one. Use TotalSubflows for a portable count.
	Subflows           uint8
	AddAddrSignal      uint8
	AddAddrAccepted    uint8
	SubflowsMax        uint8
	AddAddrSignalMax   uint8
	AddAddrAcceptedMax uint8
	Flags              uint32
	// Token is the local connection token, the one peers put in MP_JOIN.
	Token         uint32
	Fallback      bool
	WriteSeq      uint64
	SndUna        uint64
	RcvNxt        uint64
	LocalAddrUsed uint8
	LocalAddrMax  uint8
	CsumEnabled   bool
	Retransmits   uint32
	BytesRetrans  uint64
	BytesSent     uint64
	BytesReceived uint64
	BytesAcked    uint64
	SubflowsTotal uint8
	// EndpLaminarMax is new in 6.18; EndpFullmeshMax is reserved (zero) in
	// 6.18 and defined by later kernels at the same offset.
	EndpLaminarMax  uint8
	EndpFullmeshMax uint8
	// Milliseconds since the last event, at the MPTCP level.
	LastDataSent, LastDataRecv, LastAckRecv uint32
}

// offSubflowsTotal is where mptcpi_subflows_total lives; kernels that
// return fewer bytes predate it.
const offSubflowsTotal = 80

// GetMPTCPInfo returns MPTCP_INFO of c. It fails with an error matching
// ErrNotMPTCP when c is plain TCP or fell back to TCP.
func GetMPTCPInfo(c syscall.Conn) (MPTCPInfo, error) {
	var m MPTCPInfo
	err := control(c, func(fd int) error {
		buf := make([]byte, sizeofMPTCPInfo)
		n, err := getsockopt(fd, unix.SOL_MPTCP, optMPTCPInfo, buf)
		if err != nil {
			return mptcpError(mptcpInfoCall, err)
		}
		m = decodeMPTCPInfo(buf[:n])
		return nil
	})
	return m, err
}

// decodeMPTCPInfo decodes struct mptcp_info at the offsets of
// include/uapi/linux/mptcp.h (v6.18).
func decodeMPTCPInfo(p []byte) MPTCPInfo {
	b := raw(p)
	flags := b.u32(8)
	return MPTCPInfo{
		Len:                len(b),
		Subflows:           b.u8(0),
		AddAddrSignal:      b.u8(1),
		AddAddrAccepted:    b.u8(2),
		SubflowsMax:        b.u8(3),
		AddAddrSignalMax:   b.u8(4),
		AddAddrAcceptedMax: b.u8(5),
		Flags:              flags,
		Fallback:           flags&FlagFallback != 0,
		Token:              b.u32(12),
		WriteSeq:           b.u64(16),
		SndUna:             b.u64(24),
		RcvNxt:             b.u64(32),
		LocalAddrUsed:      b.u8(40),
		LocalAddrMax:       b.u8(41),
		CsumEnabled:        b.u8(42) != 0,
		Retransmits:        b.u32(44),
		BytesRetrans:       b.u64(48),
		BytesSent:          b.u64(56),
		BytesReceived:      b.u64(64),
		BytesAcked:         b.u64(72),
		SubflowsTotal:      b.u8(offSubflowsTotal),
		EndpLaminarMax:     b.u8(81),
		EndpFullmeshMax:    b.u8(82),
		LastDataSent:       b.u32(84),
		LastDataRecv:       b.u32(88),
		LastAckRecv:        b.u32(92),
	}
}

// TotalSubflows returns the number of subflows including the initial one,
// also on kernels that predate mptcpi_subflows_total.
func (m MPTCPInfo) TotalSubflows() int {
	if m.Len > offSubflowsTotal {
		return int(m.SubflowsTotal)
	}
	return int(m.Subflows) + 1
}

// RemoteKeyReceived reports whether the peer's key is known, i.e. the
// MPTCP handshake completed.
func (m MPTCPInfo) RemoteKeyReceived() bool { return m.Flags&FlagRemoteKeyReceived != 0 }
