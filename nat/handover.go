package nat

import (
	"container/heap"
	"errors"
	"fmt"
	"net/netip"
)

// HandedBlock is a port block passed to a successor process on an
// upgrade. Its client keeps it, and with it its external address (paired
// pooling across the upgrade); the successor hands out none of the ports
// the predecessor uses or holds until the predecessor is gone.
type HandedBlock struct {
	// Client owns the block; invalid for a block the predecessor keeps in
	// reserve for its last sessions (all of it is the predecessor's).
	Client   netip.Addr `json:"client,omitzero"`
	Family   Family     `json:"family"`
	External netip.Addr `json:"external"`
	First    uint16     `json:"first"`
	// Busy are the ports in use or on hold in the predecessor.
	Busy []uint16 `json:"busy,omitempty"`
}

// nextIdx is the block index the next assignment on ext takes: during a
// hand-over only from the reserve.
func (p *Pool) nextIdx(ext *extAddr) (uint16, bool) {
	if p.reserve != nil {
		r := p.reserve[ext]
		if len(r) == 0 {
			return 0, false
		}
		return r[len(r)-1], true
	}
	if n := len(ext.freeIdx); n > 0 {
		return ext.freeIdx[n-1], true
	}
	if ext.nextFresh < p.nBlocks {
		return uint16(ext.nextFresh), true
	}
	return 0, false
}

// PrepareHandOver lists every block in use for a successor and sets aside
// up to spare free blocks per external address for this pool's own last
// sessions (those accepted before the successor took the sockets): until
// CancelHandOver, new blocks come only from those, so the successor,
// which is told of them, never assigns one of them.
func (p *Pool) PrepareHandOver(spare int) []HandedBlock {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []HandedBlock
	for _, c := range p.clients {
		for _, b := range c.blocks {
			hb := HandedBlock{Client: c.key.addr, Family: c.key.fam, External: b.ext.ip, First: b.first}
			for off := range p.blockSize {
				if b.inUse[off>>6]&(1<<(off&63)) != 0 {
					hb.Busy = append(hb.Busy, b.first+off)
				}
			}
			for i := range b.holdN {
				j := (b.holdHead + i) % len(b.holdOff)
				hb.Busy = append(hb.Busy, b.first+b.holdOff[j])
			}
			out = append(out, hb)
		}
	}
	p.reserve = make(map[*extAddr][]uint16, len(p.addrs))
	for _, ext := range p.addrs {
		var r []uint16
		for len(r) < spare {
			if n := len(ext.freeIdx); n > 0 {
				r = append(r, ext.freeIdx[n-1])
				ext.freeIdx = ext.freeIdx[:n-1]
			} else if ext.nextFresh < p.nBlocks {
				r = append(r, uint16(ext.nextFresh))
				ext.nextFresh++
			} else {
				break
			}
		}
		p.reserve[ext] = r
		for _, idx := range r {
			out = append(out, HandedBlock{Family: ext.fam, External: ext.ip, First: p.portMin + idx*p.blockSize})
		}
	}
	return out
}

// CancelHandOver returns the reserve: the hand-over failed.
func (p *Pool) CancelHandOver() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ext, r := range p.reserve {
		ext.freeIdx = append(ext.freeIdx, r...)
	}
	p.reserve = nil
}

// HandedOver: the successor owns the blocks listed; their release is its
// to log. Blocks assigned from the reserve stay this pool's.
func (p *Pool) HandedOver() {
	p.mu.Lock()
	p.quiet = true
	p.mu.Unlock()
}

// Adopt takes a predecessor's blocks into a pool that has assigned none
// yet. It returns release, to call once the predecessor is gone: the
// ports it held then go on hold as released ports do, and its reserve
// back to the pool.
func (p *Pool) Adopt(blocks []HandedBlock) (release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st.BlockAllocations > 0 {
		return nil, errors.New("nat: adopt into a pool in use")
	}
	highest := map[*extAddr]int{} // the highest block index taken, per address
	type adopted struct {
		b    *block
		busy []uint16
	}
	var owned []adopted
	var reserved []*block
	for _, hb := range blocks {
		ext := p.byIP[hb.External.Unmap()]
		if ext == nil {
			return nil, fmt.Errorf("nat: handed block %v:%d: address not in this pool", hb.External, hb.First)
		}
		rel := int(hb.First) - int(p.portMin)
		idx := rel / int(p.blockSize)
		if rel < 0 || rel%int(p.blockSize) != 0 || idx >= p.nBlocks || ext.blocks != nil && ext.blocks[idx] != nil {
			return nil, fmt.Errorf("nat: handed block %v:%d does not fit this pool's blocks (port block size or range changed?)", hb.External, hb.First)
		}
		if hi, ok := highest[ext]; !ok || idx > hi {
			highest[ext] = idx
		}
		if ext.blocks == nil {
			ext.blocks = make([]*block, p.nBlocks)
		}
		bs := int(p.blockSize)
		b := &block{ext: ext, idx: uint16(idx), first: hb.First, inUse: make([]uint64, (bs+63)/64),
			holdOff: make([]uint16, bs), holdAt: make([]int64, bs)}
		ext.blocks[idx] = b
		ext.used++
		p.st.UsedBlocks++
		if !hb.Client.IsValid() {
			reserved = append(reserved, b)
			continue
		}
		key := clientKey{hb.Client.Unmap().WithZone(""), hb.Family}
		c := p.clients[key]
		if c == nil {
			c = &client{key: key, ext: ext}
			p.clients[key] = c
			ext.clients++
		} else if c.ext != ext {
			return nil, fmt.Errorf("nat: client %v holds blocks on %v and %v", hb.Client, c.ext.ip, ext.ip)
		}
		b.owner = c
		c.blocks = append(c.blocks, b)
		var busy []uint16
		for _, port := range hb.Busy {
			off := port - hb.First
			if port < hb.First || off >= p.blockSize || b.inUse[off>>6]&(1<<(off&63)) != 0 {
				continue // outside the block, or listed twice
			}
			b.inUse[off>>6] |= 1 << (off & 63)
			busy = append(busy, port)
		}
		for off := range p.blockSize {
			if b.inUse[off>>6]&(1<<(off&63)) == 0 {
				b.free = append(b.free, off)
			}
		}
		b.live += len(busy)
		c.live += len(busy)
		p.used += len(busy)
		owned = append(owned, adopted{b, busy})
	}
	for ext, hi := range highest {
		for i := ext.nextFresh; i <= hi; i++ {
			if ext.blocks[i] == nil {
				ext.freeIdx = append(ext.freeIdx, uint16(i))
			}
		}
		ext.nextFresh = max(ext.nextFresh, hi+1)
		heap.Fix(&p.heaps[famIdx(ext.fam)], ext.heapIdx)
	}
	return func() {
		p.mu.Lock()
		now := p.clock()
		for _, a := range owned {
			if len(a.busy) == 0 && a.b.live == 0 {
				// Idle already: back to the pool after a hold, as a
				// block whose last port was released.
				a.b.epoch++
				p.drain = append(p.drain, drainEntry{a.b, a.b.epoch, now + p.hold})
			}
		}
		p.mu.Unlock()
		for _, a := range owned {
			for _, port := range a.busy {
				p.Release(Mapping{External: netip.AddrPortFrom(a.b.ext.ip, port), Client: a.b.owner.key.addr})
			}
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, b := range reserved {
			b.ext.blocks[b.idx] = nil
			b.ext.used--
			b.ext.freeIdx = append(b.ext.freeIdx, b.idx)
			p.st.UsedBlocks--
			heap.Fix(&p.heaps[famIdx(b.ext.fam)], b.ext.heapIdx)
		}
	}, nil
}
