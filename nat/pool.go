package nat

import (
	"container/heap"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Defaults of PoolConfig.
const (
	DefaultBlockSize          = 512
	DefaultMaxBlocksPerClient = 4
	DefaultPortMin            = 1024
	DefaultPortMax            = 65535
	DefaultHold               = 120 * time.Second
	DefaultIPv6AddrsPerPrefix = 16

	// MaxPoolAddrs bounds the number of external addresses of a Pool.
	MaxPoolAddrs = 1 << 20
)

// Family is the address family of a wanted external address.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// MarshalText makes a Family "IPv4" or "IPv6" in JSON.
func (f Family) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText parses "IPv4"/"4" or "IPv6"/"6".
func (f *Family) UnmarshalText(b []byte) error {
	switch string(b) {
	case "IPv4", "ipv4", "4":
		*f = IPv4
	case "IPv6", "ipv6", "6":
		*f = IPv6
	default:
		return fmt.Errorf("nat: bad family %q", b)
	}
	return nil
}

// FamilyOf is the family of a (possibly 4in6-mapped) address.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Errors of Allocate. ErrPoolFull, ErrAddressFull and ErrClientLimit wrap
// ErrExhausted; test with errors.Is(err, ErrExhausted).
var (
	ErrExhausted = errors.New("nat: port pool exhausted")
	// ErrPoolFull: no external address of the family has a free block
	// for a new Client.
	ErrPoolFull = fmt.Errorf("%w: no free block in the pool", ErrExhausted)
	// ErrAddressFull: the Client's paired external address has no free
	// block left.
	ErrAddressFull = fmt.Errorf("%w: paired external address has no free block", ErrExhausted)
	// ErrClientLimit: the Client's blocks are all busy (in use or on
	// hold) and it holds MaxBlocksPerClient blocks.
	ErrClientLimit = fmt.Errorf("%w: client at its block limit", ErrExhausted)

	// ErrNoFamily: the pool has no external address of the wanted
	// family. It is a configuration matter, not exhaustion.
	ErrNoFamily = errors.New("nat: no external address of that family")
	// ErrBadClient: the Client address is not valid.
	ErrBadClient = errors.New("nat: invalid client address")
	// ErrNotAllocated: Release of a mapping the pool does not hold.
	ErrNotAllocated = errors.New("nat: mapping not allocated")
)

// PoolConfig configures a Pool. Zero fields take their defaults.
type PoolConfig struct {
	// Prefixes give the external addresses (see the package comment
	// for how IPv4 and IPv6 prefixes are turned into addresses).
	// Overlapping prefixes are an error.
	Prefixes []netip.Prefix
	// IPv6AddrsPerPrefix is how many addresses each IPv6 prefix gives
	// (default 16, capped by the prefix size).
	IPv6AddrsPerPrefix int
	// BlockSize is the number of ports in a block (default 512).
	BlockSize int
	// MaxBlocksPerClient bounds the blocks of one Client per family
	// (default 4).
	MaxBlocksPerClient int
	// PortMin..PortMax is the usable port range (default 1024-65535).
	// Set both or neither.
	PortMin, PortMax uint16
	// Hold is how long a released port is not handed out again
	// (default 120 s; negative means no hold).
	Hold time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Rand chooses ports (default: math/rand/v2's global source).
	// It is only used with the Pool's lock held.
	Rand *rand.Rand
	// Log receives one line per block allocation and release
	// (optional). The Pool does not close it.
	Log *MappingLog
}

// Mapping is one allocated external transport address.
type Mapping struct {
	External netip.AddrPort `json:"external"`
	Client   netip.Addr     `json:"client"`
}

// Stats is a snapshot of a Pool. Ports: Free + Used + Held == Total.
// RefusalsLogFull counts allocations refused because the mapping log could
// not take their line (ErrLogFull); ReleasesDeferred counts the times an
// idle block stayed with its Client because the log could not take its
// release line (the release is retried at the next sweep). Log holds the
// mapping log's counters when there is one.
type Stats struct {
	Addresses   int `json:"addresses"`
	TotalBlocks int `json:"total_blocks"`
	UsedBlocks  int `json:"used_blocks"`
	TotalPorts  int `json:"total_ports"`
	UsedPorts   int `json:"used_ports"`
	// HeldPorts are released ports whose hold has not yet been
	// cleared; an elapsed hold is cleared lazily.
	HeldPorts int `json:"held_ports"`
	FreePorts int `json:"free_ports"`

	Allocations         uint64        `json:"allocations"`
	Releases            uint64        `json:"releases"`
	BlockAllocations    uint64        `json:"block_allocations"`
	BlockReleases       uint64        `json:"block_releases"`
	Refusals            uint64        `json:"refusals"`
	RefusalsPoolFull    uint64        `json:"refusals_pool_full"`
	RefusalsAddressFull uint64        `json:"refusals_address_full"`
	RefusalsClientLimit uint64        `json:"refusals_client_limit"`
	RefusalsLogFull     uint64        `json:"refusals_log_full"`
	ReleasesDeferred    uint64        `json:"releases_deferred"`
	Log                 *LogStats     `json:"log,omitempty"`
	Clients             []ClientStats `json:"clients"`
}

// ClientStats is one Client's share of the pool, per family.
type ClientStats struct {
	Client   netip.Addr `json:"client"`
	Family   Family     `json:"family"`
	External netip.Addr `json:"external"`
	Blocks   int        `json:"blocks"`
	Ports    int        `json:"ports"` // in use
}

// Pool hands out external addresses and ports. See the package comment.
type Pool struct {
	mu sync.Mutex

	blockSize uint16
	nBlocks   int // blocks per address
	maxBlocks int
	portMin   uint16
	hold      int64 // ns
	now       func() time.Time
	epoch     time.Time
	rnd       *rand.Rand
	log       *MappingLog

	addrs   []*extAddr
	byIP    map[netip.Addr]*extAddr
	heaps   [2]addrHeap // by family index
	clients map[clientKey]*client
	drain   []drainEntry
	drainHd int

	used, held int
	st         Stats

	// An upgrade (handover.go): reserve, while set, holds the only block
	// indices this pool may still assign, per address; quiet, once the
	// successor owns the blocks, stops the release lines of the blocks
	// it took (it logs them).
	reserve map[*extAddr][]uint16
	quiet   bool
}

type clientKey struct {
	addr netip.Addr
	fam  Family
}

type client struct {
	key    clientKey
	ext    *extAddr
	blocks []*block
	live   int
}

type extAddr struct {
	ip        netip.Addr
	fam       Family
	blocks    []*block // by block index, lazily
	freeIdx   []uint16 // returned block indices
	nextFresh int      // block indices >= nextFresh were never used
	used      int      // blocks assigned
	clients   int
	heapIdx   int
}

type block struct {
	ext   *extAddr
	idx   uint16
	first uint16
	owner *client
	live  int
	epoch uint64

	free  []uint16 // offsets of free ports
	inUse []uint64 // bitset of offsets in use

	// FIFO ring of held offsets; holds expire in order as Hold is fixed.
	holdOff  []uint16
	holdAt   []int64
	holdHead int
	holdN    int

	late bool // assigned from the hand-over reserve: released and logged here
}

type drainEntry struct {
	b     *block
	epoch uint64
	at    int64
}

// NewPool builds a Pool.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.MaxBlocksPerClient == 0 {
		cfg.MaxBlocksPerClient = DefaultMaxBlocksPerClient
	}
	if cfg.PortMin == 0 && cfg.PortMax == 0 {
		cfg.PortMin, cfg.PortMax = DefaultPortMin, DefaultPortMax
	}
	if cfg.Hold == 0 {
		cfg.Hold = DefaultHold
	} else if cfg.Hold < 0 {
		cfg.Hold = 0
	}
	if cfg.IPv6AddrsPerPrefix == 0 {
		cfg.IPv6AddrsPerPrefix = DefaultIPv6AddrsPerPrefix
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PortMin == 0 || cfg.PortMin > cfg.PortMax {
		return nil, fmt.Errorf("nat: bad port range %d-%d", cfg.PortMin, cfg.PortMax)
	}
	span := int(cfg.PortMax) - int(cfg.PortMin) + 1
	if cfg.BlockSize < 1 || cfg.BlockSize > span {
		return nil, fmt.Errorf("nat: block size %d does not fit port range %d-%d", cfg.BlockSize, cfg.PortMin, cfg.PortMax)
	}
	if cfg.MaxBlocksPerClient < 1 {
		return nil, fmt.Errorf("nat: bad MaxBlocksPerClient %d", cfg.MaxBlocksPerClient)
	}
	if cfg.IPv6AddrsPerPrefix < 1 {
		return nil, fmt.Errorf("nat: bad IPv6AddrsPerPrefix %d", cfg.IPv6AddrsPerPrefix)
	}
	p := &Pool{
		blockSize: uint16(cfg.BlockSize),
		nBlocks:   span / cfg.BlockSize,
		maxBlocks: cfg.MaxBlocksPerClient,
		portMin:   cfg.PortMin,
		hold:      int64(cfg.Hold),
		now:       cfg.Now,
		rnd:       cfg.Rand,
		log:       cfg.Log,
		byIP:      make(map[netip.Addr]*extAddr),
		clients:   make(map[clientKey]*client),
	}
	p.epoch = p.now()
	for _, pfx := range cfg.Prefixes {
		if err := p.addPrefix(pfx, cfg.IPv6AddrsPerPrefix); err != nil {
			return nil, err
		}
	}
	if len(p.addrs) == 0 {
		return nil, errors.New("nat: no external address")
	}
	for _, a := range p.addrs {
		h := &p.heaps[famIdx(a.fam)]
		a.heapIdx = len(*h)
		*h = append(*h, a)
	}
	heap.Init(&p.heaps[0])
	heap.Init(&p.heaps[1])
	p.st.Addresses = len(p.addrs)
	p.st.TotalBlocks = len(p.addrs) * p.nBlocks
	p.st.TotalPorts = p.st.TotalBlocks * int(p.blockSize)
	return p, nil
}

func famIdx(f Family) int {
	if f == IPv6 {
		return 1
	}
	return 0
}

func (p *Pool) addPrefix(pfx netip.Prefix, v6n int) error {
	if !pfx.IsValid() {
		return fmt.Errorf("nat: invalid prefix %v", pfx)
	}
	pfx = pfx.Masked()
	if pfx.Addr().Is4In6() {
		return fmt.Errorf("nat: use a plain IPv4 prefix, not %v", pfx)
	}
	hostBits := pfx.Addr().BitLen() - pfx.Bits()
	var n uint64
	skipFirst := false
	switch {
	case hostBits == 0:
		n = 1
	case pfx.Addr().Is4() && hostBits == 1:
		n = 2
	case pfx.Addr().Is4():
		n = 1<<hostBits - 2 // no network, broadcast
		skipFirst = true
	default:
		n = uint64(v6n)
		if hostBits < 64 && n > 1<<hostBits-1 {
			n = 1<<hostBits - 1
		}
		skipFirst = true // no Subnet-Router anycast
	}
	if uint64(len(p.addrs))+n > MaxPoolAddrs {
		return fmt.Errorf("nat: more than %d external addresses", MaxPoolAddrs)
	}
	a := pfx.Addr()
	if skipFirst {
		a = a.Next()
	}
	fam := IPv6
	if a.Is4() {
		fam = IPv4
	}
	for i := uint64(0); i < n; i, a = i+1, a.Next() {
		if _, dup := p.byIP[a]; dup {
			return fmt.Errorf("nat: address %v given twice (prefix %v)", a, pfx)
		}
		e := &extAddr{ip: a, fam: fam}
		p.byIP[a] = e
		p.addrs = append(p.addrs, e)
	}
	return nil
}

func (p *Pool) clock() int64 { return int64(p.now().Sub(p.epoch)) }

// Allocate returns a new mapping for client toward a server of family
// fam. It fails with an error wrapping ErrExhausted when the pool, the
// Client's paired address or the Client's block budget is used up, and
// with one wrapping ErrLogFull when the mapping log cannot take the line
// of the new block the mapping needs; either way nothing is allocated.
func (p *Pool) Allocate(clientAddr netip.Addr, fam Family) (Mapping, error) {
	if !clientAddr.IsValid() {
		return Mapping{}, ErrBadClient
	}
	if fam != IPv4 && fam != IPv6 {
		return Mapping{}, fmt.Errorf("nat: bad family %d", fam)
	}
	clientAddr = clientAddr.Unmap().WithZone("")
	key := clientKey{clientAddr, fam}

	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	p.sweep(now)

	c := p.clients[key]
	if c != nil {
		for _, b := range c.blocks {
			if port, ok := p.takePort(b, now); ok {
				return p.mapped(c, b, port), nil
			}
		}
		if len(c.blocks) >= p.maxBlocks {
			return Mapping{}, p.refuse(ErrClientLimit)
		}
		if _, ok := p.nextIdx(c.ext); !ok {
			return Mapping{}, p.refuse(ErrAddressFull)
		}
		if err := p.logAlloc(c.ext, clientAddr, now); err != nil {
			return Mapping{}, p.refuse(err)
		}
		b := p.assignBlock(c, now)
		port, _ := p.takePort(b, now)
		return p.mapped(c, b, port), nil
	}

	h := &p.heaps[famIdx(fam)]
	if len(*h) == 0 {
		return Mapping{}, ErrNoFamily
	}
	ext := (*h)[0]
	if _, ok := p.nextIdx(ext); !ok {
		return Mapping{}, p.refuse(ErrPoolFull)
	}
	if err := p.logAlloc(ext, clientAddr, now); err != nil {
		return Mapping{}, p.refuse(err)
	}
	c = &client{key: key, ext: ext, blocks: make([]*block, 0, min(p.maxBlocks, 4))}
	p.clients[key] = c
	ext.clients++
	b := p.assignBlock(c, now) // fixes the heap
	port, _ := p.takePort(b, now)
	return p.mapped(c, b, port), nil
}

func (p *Pool) refuse(err error) error {
	p.st.Refusals++
	switch err {
	case ErrPoolFull:
		p.st.RefusalsPoolFull++
	case ErrAddressFull:
		p.st.RefusalsAddressFull++
	case ErrClientLimit:
		p.st.RefusalsClientLimit++
	default:
		if errors.Is(err, ErrLogFull) {
			p.st.RefusalsLogFull++
		}
	}
	return err
}

// logAlloc queues the "alloc" line of the block assignBlock will give next
// on ext, before anything changes: an allocation the log cannot take is
// refused (RFC 6888 REQ-12), never made unlogged.
func (p *Pool) logAlloc(ext *extAddr, client netip.Addr, now int64) error {
	idx, _ := p.nextIdx(ext)
	first := p.portMin + idx*p.blockSize
	return p.log.logBlock(p.epoch.Add(time.Duration(now)), EventAlloc, client, ext.ip, first, first+p.blockSize-1)
}

func (p *Pool) mapped(c *client, b *block, port uint16) Mapping {
	c.live++
	p.used++
	p.st.Allocations++
	return Mapping{External: netip.AddrPortFrom(b.ext.ip, port), Client: c.key.addr}
}

// assignBlock gives c a free block of its paired address; logAlloc has
// logged it.
func (p *Pool) assignBlock(c *client, now int64) *block {
	ext := c.ext
	idx, _ := p.nextIdx(ext)
	late := false
	switch r := p.reserve[ext]; {
	case p.reserve != nil:
		p.reserve[ext] = r[:len(r)-1]
		late = true
	case len(ext.freeIdx) > 0:
		ext.freeIdx = ext.freeIdx[:len(ext.freeIdx)-1]
	default:
		ext.nextFresh++
	}
	if ext.blocks == nil {
		ext.blocks = make([]*block, p.nBlocks)
	}
	b := ext.blocks[idx]
	if b == nil {
		bs := int(p.blockSize)
		b = &block{
			ext:     ext,
			idx:     idx,
			first:   p.portMin + idx*p.blockSize,
			free:    make([]uint16, bs),
			inUse:   make([]uint64, (bs+63)/64),
			holdOff: make([]uint16, bs),
			holdAt:  make([]int64, bs),
		}
		ext.blocks[idx] = b
	}
	b.free = b.free[:p.blockSize]
	for i := range b.free {
		b.free[i] = uint16(i)
	}
	clear(b.inUse)
	b.holdHead, b.holdN, b.live = 0, 0, 0
	b.owner = c
	b.late = late
	b.epoch++
	c.blocks = append(c.blocks, b)
	ext.used++
	heap.Fix(&p.heaps[famIdx(ext.fam)], ext.heapIdx)
	p.st.UsedBlocks++
	p.st.BlockAllocations++
	return b
}

// takePort picks a random free port of b, first clearing elapsed holds.
func (p *Pool) takePort(b *block, now int64) (uint16, bool) {
	for b.holdN > 0 && b.holdAt[b.holdHead] <= now {
		b.free = append(b.free, b.holdOff[b.holdHead])
		b.holdHead++
		if b.holdHead == len(b.holdOff) {
			b.holdHead = 0
		}
		b.holdN--
		p.held--
	}
	n := len(b.free)
	if n == 0 {
		return 0, false
	}
	i := 0
	if n > 1 {
		if p.rnd != nil {
			i = p.rnd.IntN(n)
		} else {
			i = rand.IntN(n)
		}
	}
	off := b.free[i]
	b.free[i] = b.free[n-1]
	b.free = b.free[:n-1]
	b.inUse[off>>6] |= 1 << (off & 63)
	b.live++
	return b.first + off, true
}

// Release returns m's port; it goes on hold. Releasing a mapping that is
// not allocated (or twice) returns ErrNotAllocated and changes nothing.
// LogUnverified writes an "unverified" line for m's external port: the
// session that used it ended before its client completed the handshake.
// A line the log cannot take is counted by the log and not retried.
func (p *Pool) LogUnverified(m Mapping) {
	port := m.External.Port()
	p.log.logBlock(p.now(), EventUnverified, m.Client.Unmap(), m.External.Addr().Unmap(), port, port)
}

func (p *Pool) Release(m Mapping) error {
	ip := m.External.Addr().Unmap()
	cl := m.Client.Unmap().WithZone("")
	p.mu.Lock()
	defer p.mu.Unlock()
	ext := p.byIP[ip]
	port := m.External.Port()
	if ext == nil || port < p.portMin {
		return ErrNotAllocated
	}
	bi := int(port-p.portMin) / int(p.blockSize)
	if bi >= p.nBlocks || ext.blocks == nil {
		return ErrNotAllocated
	}
	b := ext.blocks[bi]
	if b == nil || b.owner == nil || b.owner.key.addr != cl {
		return ErrNotAllocated
	}
	off := port - b.first
	word, bit := off>>6, uint64(1)<<(off&63)
	if b.inUse[word]&bit == 0 {
		return ErrNotAllocated
	}
	now := p.clock()
	b.inUse[word] &^= bit
	b.live--
	b.owner.live--
	p.used--
	p.st.Releases++
	if p.hold == 0 {
		b.free = append(b.free, off)
	} else {
		i := b.holdHead + b.holdN
		if i >= len(b.holdOff) {
			i -= len(b.holdOff)
		}
		b.holdOff[i], b.holdAt[i] = off, now+p.hold
		b.holdN++
		p.held++
	}
	if b.live == 0 {
		b.epoch++
		p.drain = append(p.drain, drainEntry{b, b.epoch, now + p.hold})
	}
	p.sweep(now)
	return nil
}

// Sweep returns to the pool the blocks whose last port was released at
// least Hold ago, logging their release. Allocate and Release sweep too;
// a daemon calls Sweep periodically so idle Clients' blocks go back.
func (p *Pool) Sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sweep(p.clock())
}

func (p *Pool) sweep(now int64) {
	for p.drainHd < len(p.drain) && p.drain[p.drainHd].at <= now {
		e := p.drain[p.drainHd]
		if e.b.owner != nil && e.b.live == 0 && e.b.epoch == e.epoch && !p.freeBlock(e.b, now) {
			// The log cannot take the release line: the block stays
			// with its Client (never handed to another unlogged) and
			// the entry stays first, retried at the next sweep.
			p.st.ReleasesDeferred++
			break
		}
		p.drain[p.drainHd] = drainEntry{}
		p.drainHd++
	}
	if p.drainHd == len(p.drain) {
		p.drain, p.drainHd = p.drain[:0], 0
	} else if p.drainHd > 1024 && p.drainHd > len(p.drain)/2 {
		n := copy(p.drain, p.drain[p.drainHd:])
		clear(p.drain[n:])
		p.drain, p.drainHd = p.drain[:n], 0
	}
}

// freeBlock returns an idle block whose holds have all elapsed, once its
// release line is queued; it reports false, changing nothing, when the log
// cannot take the line.
func (p *Pool) freeBlock(b *block, now int64) bool {
	c, ext := b.owner, b.ext
	if (!p.quiet || b.late) && p.log.logBlock(p.epoch.Add(time.Duration(now)), EventRelease, c.key.addr, ext.ip, b.first, b.first+p.blockSize-1) != nil {
		return false
	}
	p.held -= b.holdN
	b.holdN, b.holdHead = 0, 0
	b.owner = nil
	b.epoch++
	for i, x := range c.blocks {
		if x == b {
			last := len(c.blocks) - 1
			c.blocks[i] = c.blocks[last]
			c.blocks[last] = nil
			c.blocks = c.blocks[:last]
			break
		}
	}
	if len(c.blocks) == 0 {
		delete(p.clients, c.key)
		ext.clients--
	}
	ext.used--
	ext.freeIdx = append(ext.freeIdx, b.idx)
	heap.Fix(&p.heaps[famIdx(ext.fam)], ext.heapIdx)
	p.st.UsedBlocks--
	p.st.BlockReleases++
	return true
}

// Stats returns a snapshot; Clients is sorted by client then family.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := p.st
	s.UsedPorts = p.used
	s.HeldPorts = p.held
	s.FreePorts = s.TotalPorts - p.used - p.held
	s.Clients = make([]ClientStats, 0, len(p.clients))
	for _, c := range p.clients {
		s.Clients = append(s.Clients, ClientStats{
			Client: c.key.addr, Family: c.key.fam, External: c.ext.ip,
			Blocks: len(c.blocks), Ports: c.live,
		})
	}
	p.mu.Unlock()
	if p.log != nil {
		ls := p.log.Stats()
		s.Log = &ls
	}
	sort.Slice(s.Clients, func(i, j int) bool {
		if c := s.Clients[i].Client.Compare(s.Clients[j].Client); c != 0 {
			return c < 0
		}
		return s.Clients[i].Family < s.Clients[j].Family
	})
	return s
}

// addrHeap orders external addresses of one family by load.
type addrHeap []*extAddr

func (h addrHeap) Len() int { return len(h) }
func (h addrHeap) Less(i, j int) bool {
	if h[i].used != h[j].used {
		return h[i].used < h[j].used
	}
	if h[i].clients != h[j].clients {
		return h[i].clients < h[j].clients
	}
	return h[i].ip.Less(h[j].ip)
}
func (h addrHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *addrHeap) Push(x any) { panic("unused") }
func (h *addrHeap) Pop() any   { panic("unused") }

// Contains reports whether a is one of the pool's external addresses: a
// destination there is a hairpin (a client reaching another client's
// mapping through the converter).
func (p *Pool) Contains(a netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.byIP[a.Unmap()]
	return ok
}
