package sockinfo

import (
	"fmt"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// sizeofTCPInfo is sizeof(struct tcp_info) on Linux 6.18, the last offset
// we decode. Newer kernels truncate their longer struct to it.
const sizeofTCPInfo = 280

// TCP states (include/net/tcp_states.h), as found in TCPInfo.State.
const (
	StateEstablished   uint8 = 1
	StateSynSent       uint8 = 2
	StateSynRecv       uint8 = 3
	StateFinWait1      uint8 = 4
	StateFinWait2      uint8 = 5
	StateTimeWait      uint8 = 6
	StateClose         uint8 = 7
	StateCloseWait     uint8 = 8
	StateLastAck       uint8 = 9
	StateListen        uint8 = 10
	StateClosing       uint8 = 11
	StateNewSynRecv    uint8 = 12
	StateBoundInactive uint8 = 13
)

// Bits of TCPInfo.Options (TCPI_OPT_* in include/uapi/linux/tcp.h).
const (
	OptTimestamps uint8 = 0x01
	OptSACK       uint8 = 0x02
	OptWScale     uint8 = 0x04
	OptECN        uint8 = 0x08
	OptECNSeen    uint8 = 0x10
	OptSynData    uint8 = 0x20
	OptUsecTS     uint8 = 0x40
	OptTFOChild   uint8 = 0x80
)

// TCPInfo is struct tcp_info. Times are in microseconds unless noted,
// as in the kernel. Len is how many bytes the kernel returned: fields
// that start at or beyond Len were not provided and are zero.
type TCPInfo struct {
	Len int

	State                  uint8
	CAState                uint8
	Retransmits            uint8
	Probes                 uint8
	Backoff                uint8
	Options                uint8
	SndWScale, RcvWScale   uint8
	DeliveryRateAppLimited bool
	FastOpenClientFail     uint8

	RTO, ATO, SndMSS, RcvMSS uint32
	Unacked, Sacked          uint32
	Lost, Retrans, Fackets   uint32

	// Milliseconds since the last event.
	LastDataSent, LastAckSent, LastDataRecv, LastAckRecv uint32

	PMTU, RcvSSThresh, RTT, RTTVar       uint32
	SndSSThresh, SndCwnd, AdvMSS         uint32
	Reordering, RcvRTT, RcvSpace         uint32
	TotalRetrans                         uint32
	PacingRate, MaxPacingRate            uint64 // bytes per second
	BytesAcked, BytesReceived            uint64
	SegsOut, SegsIn                      uint32
	NotsentBytes, MinRTT                 uint32
	DataSegsIn, DataSegsOut              uint32
	DeliveryRate                         uint64 // bytes per second
	BusyTime, RwndLimited, SndbufLimited uint64
	Delivered, DeliveredCE               uint32
	BytesSent, BytesRetrans              uint64
	DSACKDups, ReordSeen, RcvOOOPack     uint32
	SndWnd, RcvWnd, Rehash               uint32
	TotalRTO, TotalRTORecoveries         uint16
	TotalRTOTime                         uint32 // milliseconds
	ReceivedCE                           uint32
	DeliveredE1Bytes, DeliveredE0Bytes   uint32
	DeliveredCEBytes                     uint32
	ReceivedE1Bytes, ReceivedE0Bytes     uint32
	ReceivedCEBytes                      uint32
	AccECNFailMode, AccECNOptSeen        uint16
}

// GetTCPInfo returns TCP_INFO of c. On an MPTCP socket this is the
// initial subflow's.
func GetTCPInfo(c syscall.Conn) (TCPInfo, error) {
	var t TCPInfo
	err := control(c, func(fd int) error {
		var err error
		t, err = readTCPInfo(fd)
		return err
	})
	return t, err
}

// TCPHead is the head of struct tcp_info: the state and the options
// negotiated, read without decoding (or allocating) the whole structure.
type TCPHead struct {
	State   uint8
	Options uint8 // Opt* bits
}

// SynData is TCPInfo.SynData.
func (h TCPHead) SynData() bool { return h.Options&OptSynData != 0 }

// GetTCPHead reads the head of c's struct tcp_info.
func GetTCPHead(c syscall.Conn) (TCPHead, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return TCPHead{}, err
	}
	var h TCPHead
	var herr error
	if err := rc.Control(func(fd uintptr) { h, herr = readTCPHead(int(fd)) }); err != nil {
		return TCPHead{}, err
	}
	return h, herr
}

func readTCPHead(fd int) (TCPHead, error) {
	var buf [8]byte
	n, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_INFO, buf[:])
	if err != nil {
		return TCPHead{}, fmt.Errorf("%s: %w", tcpInfoCall, err)
	}
	if n < 6 {
		return TCPHead{}, fmt.Errorf("%s: %d bytes", tcpInfoCall, n)
	}
	return TCPHead{State: buf[0], Options: buf[5]}, nil
}

func readTCPInfo(fd int) (TCPInfo, error) {
	buf := make([]byte, sizeofTCPInfo)
	n, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_INFO, buf)
	if err != nil {
		return TCPInfo{}, fmt.Errorf("%s: %w", tcpInfoCall, err)
	}
	return decodeTCPInfo(buf[:n]), nil
}

// decodeTCPInfo decodes struct tcp_info at the offsets of
// include/uapi/linux/tcp.h. Bytes 6 and 7 hold bitfields that x/sys's
// TCPInfo hides in padding, hence the raw decoding.
func decodeTCPInfo(p []byte) TCPInfo {
	b := raw(p)
	return TCPInfo{
		Len:                    len(b),
		State:                  b.u8(0),
		CAState:                b.u8(1),
		Retransmits:            b.u8(2),
		Probes:                 b.u8(3),
		Backoff:                b.u8(4),
		Options:                b.u8(5),
		SndWScale:              b.u8(6) & 0x0f,
		RcvWScale:              b.u8(6) >> 4,
		DeliveryRateAppLimited: b.u8(7)&1 != 0,
		FastOpenClientFail:     (b.u8(7) >> 1) & 3,
		RTO:                    b.u32(8),
		ATO:                    b.u32(12),
		SndMSS:                 b.u32(16),
		RcvMSS:                 b.u32(20),
		Unacked:                b.u32(24),
		Sacked:                 b.u32(28),
		Lost:                   b.u32(32),
		Retrans:                b.u32(36),
		Fackets:                b.u32(40),
		LastDataSent:           b.u32(44),
		LastAckSent:            b.u32(48),
		LastDataRecv:           b.u32(52),
		LastAckRecv:            b.u32(56),
		PMTU:                   b.u32(60),
		RcvSSThresh:            b.u32(64),
		RTT:                    b.u32(68),
		RTTVar:                 b.u32(72),
		SndSSThresh:            b.u32(76),
		SndCwnd:                b.u32(80),
		AdvMSS:                 b.u32(84),
		Reordering:             b.u32(88),
		RcvRTT:                 b.u32(92),
		RcvSpace:               b.u32(96),
		TotalRetrans:           b.u32(100),
		PacingRate:             b.u64(104),
		MaxPacingRate:          b.u64(112),
		BytesAcked:             b.u64(120),
		BytesReceived:          b.u64(128),
		SegsOut:                b.u32(136),
		SegsIn:                 b.u32(140),
		NotsentBytes:           b.u32(144),
		MinRTT:                 b.u32(148),
		DataSegsIn:             b.u32(152),
		DataSegsOut:            b.u32(156),
		DeliveryRate:           b.u64(160),
		BusyTime:               b.u64(168),
		RwndLimited:            b.u64(176),
		SndbufLimited:          b.u64(184),
		Delivered:              b.u32(192),
		DeliveredCE:            b.u32(196),
		BytesSent:              b.u64(200),
		BytesRetrans:           b.u64(208),
		DSACKDups:              b.u32(216),
		ReordSeen:              b.u32(220),
		RcvOOOPack:             b.u32(224),
		SndWnd:                 b.u32(228),
		RcvWnd:                 b.u32(232),
		Rehash:                 b.u32(236),
		TotalRTO:               b.u16(240),
		TotalRTORecoveries:     b.u16(242),
		TotalRTOTime:           b.u32(244),
		ReceivedCE:             b.u32(248),
		DeliveredE1Bytes:       b.u32(252),
		DeliveredE0Bytes:       b.u32(256),
		DeliveredCEBytes:       b.u32(260),
		ReceivedE1Bytes:        b.u32(264),
		ReceivedE0Bytes:        b.u32(268),
		ReceivedCEBytes:        b.u32(272),
		AccECNFailMode:         b.u16(276),
		AccECNOptSeen:          b.u16(278),
	}
}

// HasTimestamps reports whether TCP timestamps were negotiated.
func (t TCPInfo) HasTimestamps() bool { return t.Options&OptTimestamps != 0 }

// HasSACK reports whether SACK was negotiated.
func (t TCPInfo) HasSACK() bool { return t.Options&OptSACK != 0 }

// HasWScale reports whether window scaling was negotiated.
func (t TCPInfo) HasWScale() bool { return t.Options&OptWScale != 0 }

// HasECN reports whether ECN was negotiated.
func (t TCPInfo) HasECN() bool { return t.Options&OptECN != 0 }

// SynData reports whether the SYN carried data that the peer acknowledged
// (TCP Fast Open) on the client side.
func (t TCPInfo) SynData() bool { return t.Options&OptSynData != 0 }

// TFOChild reports whether this server-side socket was created by a
// TCP Fast Open SYN.
func (t TCPInfo) TFOChild() bool { return t.Options&OptTFOChild != 0 }

// StateName returns the kernel name of t.State, e.g. "ESTABLISHED".
func (t TCPInfo) StateName() string { return StateName(t.State) }

// StateName returns the kernel name of TCP state s.
func StateName(s uint8) string {
	switch s {
	case StateEstablished:
		return "ESTABLISHED"
	case StateSynSent:
		return "SYN_SENT"
	case StateSynRecv:
		return "SYN_RECV"
	case StateFinWait1:
		return "FIN_WAIT1"
	case StateFinWait2:
		return "FIN_WAIT2"
	case StateTimeWait:
		return "TIME_WAIT"
	case StateClose:
		return "CLOSE"
	case StateCloseWait:
		return "CLOSE_WAIT"
	case StateLastAck:
		return "LAST_ACK"
	case StateListen:
		return "LISTEN"
	case StateClosing:
		return "CLOSING"
	case StateNewSynRecv:
		return "NEW_SYN_RECV"
	case StateBoundInactive:
		return "BOUND_INACTIVE"
	}
	return "STATE(" + strconv.Itoa(int(s)) + ")"
}
