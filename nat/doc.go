// Package nat allocates server-leg source addresses for the converter's
// "sharing" mode, where many Clients share a small pool of public
// addresses the way a carrier-grade NAT does (RFC 6888, RFC 7857,
// RFC 6056).
//
// # Pool
//
// A Pool holds the external addresses given by PoolConfig.Prefixes:
//
//   - An IPv4 prefix contributes every address in it, except the network
//     and broadcast addresses of prefixes shorter than /31 (a /32 is the
//     one address, a /31 both).
//   - An IPv6 prefix is not enumerated: it contributes
//     PoolConfig.IPv6AddrsPerPrefix addresses (default 16) derived
//     deterministically as prefix + 1, prefix + 2, ... (the all-zero
//     Subnet-Router anycast address is skipped; a /128 is the one
//     address). The set is fixed and predictable so the operator can
//     route or bind exactly those addresses and read them back in the
//     mapping log; it never depends on which Clients come.
//
// The port range PortMin..PortMax of every external address is cut into
// aligned blocks of BlockSize ports (trailing ports that do not fill a
// whole block are not used). Ports are handed out per Client in blocks:
//
//   - Paired pooling (RFC 7857 §4, RFC 6888 REQ-2): the first allocation
//     of a Client for a family picks the least loaded external address of
//     that family (fewest blocks in use, then fewest Clients); every later
//     allocation of that Client for that family uses the same address for
//     as long as the Client holds any block. If that address has no free
//     block left the allocation is refused; it never moves to another
//     address.
//   - A Client (per family) holds at most MaxBlocksPerClient blocks.
//   - Inside its blocks a Client gets a port chosen at random among the
//     free ones (RFC 6056 spirit).
//   - A released port goes on hold for Hold (default 120 s) and is not
//     handed out again, to anyone, before the hold has elapsed.
//   - A block stays with its Client while the Client has a session in
//     it. Once its last port is released the block is returned to the
//     address (and a "release" line is logged) when the hold of that last
//     port elapses, unless the Client used the block again in between.
//     Release is lazy: it happens during Allocate, Release or Sweep; a
//     daemon calls Sweep periodically so idle Clients' blocks are
//     returned (and logged) in time.
//   - Exhaustion refuses the new session with an error wrapping
//     ErrExhausted (the engine maps it to Resource Exceeded); no live
//     mapping is ever evicted.
//
// Allocate and Release are O(1) for the port (bounded by
// MaxBlocksPerClient); taking or returning a block also costs
// O(log addresses) for the least-loaded heap and O(BlockSize) to reset
// the block. A Pool is safe for concurrent use.
//
// # Mapping log
//
// MappingLog writes one JSON line per port-block allocation and release
// (RFC 6888 REQ-12, REQ-14): time, event, client, external address and
// port range, and never a destination. Lines are queued on a buffered
// channel and written by one goroutine; queuing never blocks. A mapping
// is never made unlogged: when the buffer is full (or the log closed) the
// allocation that needs a new block is refused with an error wrapping
// ErrLogFull (the engine answers Resource Exceeded), and an idle block
// whose release line cannot be queued stays with its Client until a later
// sweep can log it, so the log never shows a block held by two Clients.
// Refusals are counted by reason (LogStats, Stats.RefusalsLogFull,
// Stats.ReleasesDeferred). A write error keeps the unwritten lines and
// retries them every second; meanwhile the writer takes no new lines, so
// new blocks are refused once the buffer is full. The file is opened with
// O_NOFOLLOW (a symbolic link there is refused) and created with mode
// 0640. Reopen opens the file again by name, outside any lock the
// allocation path takes, then switches the writer to it, for log rotation
// on SIGHUP.
package nat
