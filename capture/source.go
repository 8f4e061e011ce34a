package capture

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/google/gopacket"
	"github.com/google/gopacket/pcapgo"
)

// Link types (LINKTYPE_* of pcap and pcapng files).
const (
	linkNull     = 0
	linkEthernet = 1
	linkRaw12    = 12 // DLT_RAW as some systems wrote it
	linkRaw14    = 14
	linkRaw      = 101
	linkLoop     = 108
	linkSLL      = 113
	linkIPv4     = 228
	linkIPv6     = 229
	linkSLL2     = 276
)

const snapLimit = 1 << 20 // longest packet read from a capture

// source reads packets and the link type each is framed with.
type source struct {
	read func() ([]byte, gopacket.CaptureInfo, error)
	link func(gopacket.CaptureInfo) uint32
}

func linkSupported(link uint32) bool {
	switch link {
	case linkNull, linkEthernet, linkRaw12, linkRaw14, linkRaw, linkLoop,
		linkSLL, linkIPv4, linkIPv6, linkSLL2:
		return true
	}
	return false
}

// openSource reads a pcap or pcapng stream, gzip-compressed or not.
func openSource(r io.Reader) (source, error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil {
		return source{}, fmt.Errorf("not a capture file: %w", err)
	}
	if magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return source{}, err
		}
		br = bufio.NewReader(gz)
		if magic, err = br.Peek(4); err != nil {
			return source{}, fmt.Errorf("not a capture file: %w", err)
		}
	}
	if binary.BigEndian.Uint32(magic) == 0x0a0d0d0a {
		return openPcapng(br)
	}
	return openPcap(br)
}

// openPcap reads the link type from the file header itself: pcapgo keeps
// only its low 8 bits, which turns SLL2 (276) into 20.
func openPcap(br *bufio.Reader) (source, error) {
	hdr, err := br.Peek(24)
	if err != nil {
		return source{}, fmt.Errorf("not a capture file: %w", err)
	}
	var order binary.ByteOrder = binary.BigEndian
	if m := binary.LittleEndian.Uint32(hdr); m == 0xa1b2c3d4 || m == 0xa1b23c4d {
		order = binary.LittleEndian
	}
	link := order.Uint32(hdr[20:24]) & 0xffff // the high bits carry FCS information
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return source{}, err
	}
	if !linkSupported(link) {
		return source{}, fmt.Errorf("unsupported link type %d", link)
	}
	pr.SetSnaplen(snapLimit)
	return source{read: pr.ReadPacketData, link: func(gopacket.CaptureInfo) uint32 { return link }}, nil
}

func openPcapng(r io.Reader) (source, error) {
	// pcapgo reads through g.br itself: bufio.NewReader keeps a large
	// enough *bufio.Reader as it is.
	g := &pcapngGuard{br: bufio.NewReaderSize(r, pcapngGuardWindow), order: binary.LittleEndian}
	if err := g.check(); err != nil {
		return source{}, err
	}
	var nr *pcapgo.NgReader
	err := pcapngRecover(func() (err error) {
		nr, err = pcapgo.NewNgReader(g.br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		return err
	})
	if err != nil {
		return source{}, err
	}
	read := func() (data []byte, ci gopacket.CaptureInfo, err error) {
		if err := g.check(); err != nil {
			return nil, ci, err
		}
		err = pcapngRecover(func() (err error) {
			data, ci, err = nr.ReadPacketData()
			return err
		})
		return data, ci, err
	}
	link := func(ci gopacket.CaptureInfo) uint32 {
		iface, err := nr.Interface(ci.InterfaceIndex)
		if err != nil {
			return ^uint32(0)
		}
		// pcapgo keeps only the low 8 bits of the link type: 20 is SLL2
		// (276), as LINKTYPE 20 is not assigned.
		if l := uint32(iface.LinkType); l != linkSLL2&0xff {
			return l
		}
		return linkSLL2
	}
	return source{read: read, link: link}, nil
}

// pcapngRecover runs f, turning a panic of pcapgo's pcapng reader into an
// error: it has a few on corrupt files (a zero timestamp resolution divides
// by zero).
func pcapngRecover(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("corrupt pcapng file (%v)", r)
		}
	}()
	return f()
}

// pcapngGuard looks at the blocks pcapgo is about to read: pcapgo allocates
// the captured length of a packet unchecked, so a corrupt length would ask
// for up to 4 GiB.
type pcapngGuard struct {
	br    *bufio.Reader
	order binary.ByteOrder // of the current section
}

// Block types of pcapng.
const (
	pcapngSectionHeader  = 0x0a0d0d0a
	pcapngPacket         = 2 // obsolete Packet Block
	pcapngSimplePacket   = 3
	pcapngEnhancedPacket = 6
	pcapngGuardWindow    = 1 << 16
)

// check walks the blocks up to the next packet block and refuses a packet
// longer than snapLimit or than its block. What it cannot see (the end of
// the file, blocks beyond its window) it leaves to pcapgo.
func (g *pcapngGuard) check() error {
	for off := 0; off+12 <= pcapngGuardWindow; {
		h, err := g.br.Peek(off + 12)
		if err != nil {
			return nil
		}
		typ := g.order.Uint32(h[off:])
		if typ == pcapngSectionHeader {
			g.order = binary.LittleEndian
			if binary.BigEndian.Uint32(h[off+8:]) == 0x1a2b3c4d {
				g.order = binary.BigEndian
			}
		}
		length := g.order.Uint32(h[off+4:])
		if length < 12 || length%4 != 0 {
			return fmt.Errorf("corrupt pcapng block of length %d", length)
		}
		switch typ {
		case pcapngEnhancedPacket, pcapngPacket:
			return g.checkLength(off+20, length-32)
		case pcapngSimplePacket:
			return g.checkLength(off+8, snapLimit)
		}
		off += int(length)
	}
	return nil
}

// checkLength refuses a packet length at off above limit or snapLimit.
func (g *pcapngGuard) checkLength(off int, limit uint32) error {
	h, err := g.br.Peek(off + 4)
	if err != nil {
		return nil
	}
	if n := g.order.Uint32(h[off:]); n > limit || n > snapLimit {
		return fmt.Errorf("corrupt pcapng packet of %d bytes", n)
	}
	return nil
}
