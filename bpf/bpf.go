// Package bpf loads the converter's three tc programs and exposes them through
// a small API:
//
//   - Steering (steer.c) runs at tcx ingress on the client-facing interfaces
//     of a transparent converter. It assigns SYNs that carry a Convert
//     message, and MP_JOIN SYNs whose token was registered with AddToken, to
//     the converter's IP_TRANSPARENT MPTCP listener, and marks every packet
//     of locally terminated flows so that policy routing delivers it
//     locally:
//
//     ip rule add fwmark MARK lookup TABLE;    ip route add local 0.0.0.0/0 dev lo table TABLE
//     ip -6 rule add fwmark MARK lookup TABLE; ip -6 route add local ::/0 dev lo table TABLE
//
//     (the daemon's defaults: MARK 0x2263, TABLE 2263; internal/tproxy)
//
//     Packets of a flow whose local socket is in TIME_WAIT are not marked
//     (the client may reuse the 4-tuple for a plain connection). They reach
//     the real server only with net.ipv4.tcp_early_demux=0 in the
//     namespace: otherwise early demux attaches the time-wait socket and
//     the kernel drops the forwarded packet until TIME_WAIT ends.
//
//   - SynAckCapture (synack.c) runs at tcx ingress on the server-facing
//     interface and keeps the TCP options, which the kernel does not
//     expose, of the SYN+ACKs that answer the converter's own connects (a
//     local socket in SYN_SENT), keyed by 4-tuple, for the Extended TCP
//     Header TLV of the reply.
//
// The programs parse IPv4 and IPv6 TCP; IPv6 through up to 4 hop-by-hop,
// routing (no segments left) and destination options headers, 256 bytes
// together. Fragments and other IPv6 extension headers are left alone.
//
// Links are tcx links owned by the process: nothing is pinned, and the kernel
// detaches them when the process exits. Attach resolves the interface index
// in the network namespace of the calling thread.
package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("bpf: program closed")

// Status describes a loaded program, its links and its maps.
type Status struct {
	ProgramID uint32
	Links     []Attachment
	Maps      []MapStatus
}

// Attachment is one tcx link.
type Attachment struct {
	Hook      string // "tcx ingress" or "tcx egress"
	Interface string // name when attached
	Ifindex   int    // 0 once the interface is gone (the kernel detached the link)
	Netns     uint64 // inode of the network namespace it was attached in
	LinkID    uint32
	ProgramID uint32 // as the kernel reports it for the link
}

// MapStatus gives the fill level of one map.
type MapStatus struct {
	Name       string
	Entries    int
	MaxEntries uint32
}

// sumCounters reads a per-CPU array of u64 counters, one per name, and
// sums each over the CPUs.
func sumCounters(m *ebpf.Map, names []string) (map[string]uint64, error) {
	out := make(map[string]uint64, len(names))
	for i, name := range names {
		var perCPU []uint64
		if err := m.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// mapStatus counts the entries of m by walking its keys. The walk is
// bounded: a hash walk restarts when the current key is deleted under it.
func mapStatus(name string, m *ebpf.Map) (MapStatus, error) {
	st := MapStatus{Name: name, MaxEntries: m.MaxEntries()}
	var cur any // nil starts the walk
	for st.Entries < int(st.MaxEntries) {
		next, err := m.NextKeyBytes(cur)
		if err != nil {
			return st, fmt.Errorf("walk map %s: %w", name, err)
		}
		if next == nil {
			break
		}
		st.Entries++
		cur = next
	}
	return st, nil
}

// checkMap verifies that a map in the ELF has the key and value sizes the Go
// side uses, so a C change without `make generate` fails at load, not with
// garbage at run time.
func checkMap(spec *ebpf.CollectionSpec, name string, key, value any) error {
	m, ok := spec.Maps[name]
	if !ok {
		return fmt.Errorf("map %s missing from the BPF object", name)
	}
	if k := binary.Size(key); k < 0 || uint32(k) != m.KeySize {
		return fmt.Errorf("map %s: key is %d bytes in C, %d in Go (run make generate)", name, m.KeySize, k)
	}
	if v := binary.Size(value); v < 0 || uint32(v) != m.ValueSize {
		return fmt.Errorf("map %s: value is %d bytes in C, %d in Go (run make generate)", name, m.ValueSize, v)
	}
	return nil
}

// checkCounters verifies that a counter array has one slot per name.
func checkCounters(spec *ebpf.CollectionSpec, name string, names []string) error {
	if err := checkMap(spec, name, uint32(0), uint64(0)); err != nil {
		return err
	}
	if n := spec.Maps[name].MaxEntries; int(n) != len(names) {
		return fmt.Errorf("map %s: %d counters in C, %d names in Go", name, n, len(names))
	}
	return nil
}

func programID(p *ebpf.Program) uint32 {
	info, err := p.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return uint32(id)
}
