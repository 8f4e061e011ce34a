package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// KernelMPTCPCounters are the MPTcpExt counters of /proc/net/netstat
// that operators alert on (the names nstat prints, without the prefix).
// A kernel without one of them leaves it out.
var KernelMPTCPCounters = []string{
	// MP_CAPABLE received, and the handshakes that fell back to TCP.
	"MPCapableSYNRX", "MPCapableACKRX", "MPCapableFallbackACK", "MPCapableFallbackSYNACK",
	"MPFallbackTokenInit", "MPCapableDataFallback", "DssFallback", "FallbackFailed",
	// MP_JOIN received, and refused (no token, HMAC failure, port
	// mismatch, path manager limits).
	"MPJoinSynRx", "MPJoinAckRx", "MPJoinNoTokenFound", "MPJoinSynAckHMacFailure", "MPJoinAckHMacFailure",
	"MPJoinRejected", "MismatchPortSynRx", "MPJoinPortSynRx",
	// Addresses announced and dropped.
	"AddAddr", "AddAddrDrop", "AddAddrTx", "AddAddrTxDrop",
	// Data-level trouble and retransmissions.
	"NoDSSInWindow", "DSSNotMatching", "DataCsumErr", "MPTCPRetrans",
	// Connections ended abruptly.
	"MPFastcloseTx", "MPFastcloseRx", "MPRstTx", "MPRstRx",
}

// Netstat reads /proc/net/netstat of one network namespace: the file is
// opened once, in the daemon's namespace, and read again from its start
// at every scrape (procfs regenerates it), so a thread that happens to
// be in another namespace never changes what is read.
type Netstat struct {
	mu  sync.Mutex
	f   io.ReadSeeker
	buf bytes.Buffer
}

// OpenNetstat opens path (DefaultNetstat) for reading at scrape time.
func OpenNetstat(path string) (*Netstat, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Netstat{f: f}, nil
}

// DefaultNetstat is the calling thread's namespace's netstat file.
const DefaultNetstat = "/proc/thread-self/net/netstat"

// NewNetstat reads r (a netstat file's content) instead of a file, for
// tests.
func NewNetstat(r io.ReadSeeker) *Netstat { return &Netstat{f: r} }

// Close closes the file.
func (n *Netstat) Close() error {
	if c, ok := n.f.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// MPTCP returns the MPTcpExt counters.
func (n *Netstat) MPTCP() (map[string]uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := n.f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("netstat: %w", err)
	}
	n.buf.Reset()
	if _, err := n.buf.ReadFrom(n.f); err != nil {
		return nil, fmt.Errorf("netstat: %w", err)
	}
	return ParseNetstat(&n.buf, "MPTcpExt")
}

// ParseNetstat reads the counters of one group (TcpExt, MPTcpExt...) of
// a netstat file: a line of names then a line of values, each led by
// the group's name.
func ParseNetstat(r io.Reader, group string) (map[string]uint64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	prefix := group + ":"
	var names []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != prefix {
			continue
		}
		if names == nil {
			names = fields[1:]
			continue
		}
		values := fields[1:]
		if len(values) != len(names) {
			return nil, fmt.Errorf("netstat %s: %d names, %d values", group, len(names), len(values))
		}
		out := make(map[string]uint64, len(names))
		for i, name := range names {
			v, err := strconv.ParseUint(values[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("netstat %s %s: %w", group, name, err)
			}
			out[name] = v
		}
		return out, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("netstat: %w", err)
	}
	return nil, fmt.Errorf("netstat: no %s counters (a kernel without MPTCP?)", group)
}

// kernelCollector exports KernelMPTCPCounters.
type kernelCollector struct {
	src    *Netstat
	events *prometheus.Desc
}

func newKernelCollector(src *Netstat) *kernelCollector {
	return &kernelCollector{
		src: src,
		events: desc("kernel_mptcp_events_total",
			"The kernel's MPTCP counters (MPTcpExt in /proc/net/netstat) of the converter's network namespace, by counter name; they count every MPTCP socket of the namespace, not only the converter's.",
			"counter"),
	}
}

func (c *kernelCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.events }

func (c *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.src.MPTCP()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.events, err)
		return
	}
	for _, name := range KernelMPTCPCounters {
		if v, ok := counts[name]; ok {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(v), name)
		}
	}
}
