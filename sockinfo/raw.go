package sockinfo

import "encoding/binary"

// raw is a kernel struct as returned by getsockopt, in host byte order.
// Reads past its end yield zero, which is how fields that an older kernel
// does not fill come out as zero.
type raw []byte

func (b raw) u8(off int) uint8 {
	if off < 0 || off >= len(b) {
		return 0
	}
	return b[off]
}

func (b raw) u16(off int) uint16 {
	if off < 0 || off+2 > len(b) {
		return 0
	}
	return binary.NativeEndian.Uint16(b[off:])
}

func (b raw) u32(off int) uint32 {
	if off < 0 || off+4 > len(b) {
		return 0
	}
	return binary.NativeEndian.Uint32(b[off:])
}

func (b raw) u64(off int) uint64 {
	if off < 0 || off+8 > len(b) {
		return 0
	}
	return binary.NativeEndian.Uint64(b[off:])
}

func putU32(b []byte, v uint32) { binary.NativeEndian.PutUint32(b, v) }
