package bpf

import "encoding/binary"

// tokenKey turns a token as MPTCP_INFO reports it (host order) into the
// tokens map key: the u32 whose memory holds the 4 bytes of the MP_JOIN
// option, which carries the token big-endian. BPF reads those bytes as a
// native u32, so on little-endian hosts the key is the byte-swapped token.
func tokenKey(token uint32) uint32 {
	var wire [4]byte
	binary.BigEndian.PutUint32(wire[:], token)
	return binary.NativeEndian.Uint32(wire[:])
}
