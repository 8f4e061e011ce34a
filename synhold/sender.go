package synhold

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/convert-tc/converter/bpf"
)

// sender sends whole Ethernet frames on an interface through a packet
// socket that receives nothing (protocol 0). Its frames carry
// bpf.ReleaseMark, so the hold programs let them pass; they go through
// the device's queue, where captures see them.
type sender struct{ fd int }

// openSender opens the socket; it needs CAP_NET_RAW (and CAP_NET_ADMIN
// for the mark) once, at start-up.
func openSender() (*sender, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("syn hold: open a packet socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, bpf.ReleaseMark); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("syn hold: mark the packet socket: %w", err)
	}
	return &sender{fd: fd}, nil
}

func (s *sender) send(ifindex int, frame []byte) error {
	if len(frame) < ethLen {
		return errFrame
	}
	proto := binary.BigEndian.Uint16(frame[12:14])
	to := &unix.SockaddrLinklayer{Ifindex: ifindex, Protocol: htons(proto)}
	if err := unix.Sendto(s.fd, frame, 0, to); err != nil {
		return fmt.Errorf("send %d bytes on ifindex %d: %w", len(frame), ifindex, err)
	}
	return nil
}

func (s *sender) close() { unix.Close(s.fd) }

func htons(v uint16) uint16 { return v<<8 | v>>8 }
