package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
)

// SchemaVersion is the version of the Summary layout; it changes when a
// field changes meaning or goes away.
const SchemaVersion = 1

// The paths bench/run.sh measures, in the order they are shown, with the
// label the table and the chart give each.
var paths = []struct{ Name, Label string }{
	{"direct-tcp", "direct TCP"},
	{"direct-mptcp", "direct MPTCP"},
	{"haproxy", "HAProxy"},
	{"min-tcp", "minimal relay, TCP leg"},
	{"min-mptcp", "minimal relay, MPTCP leg"},
	{"conv-tcp", "converter, TCP leg"},
	{"conv-mptcp", "converter, MPTCP leg"},
	// The same converter with --syn-hold: connection rate only.
	{"conv-mptcp-hold", "converter, MPTCP leg, --syn-hold"},
}

// The SYN hold's case and its baseline: the same converter without it.
const (
	holdPath     = "conv-mptcp-hold"
	holdBaseline = "conv-mptcp"
)

// The throughput directions, in the order they are shown.
var directions = []string{"up", "down", "both"}

// The ratios the project tracks, in the order they are shown: a path
// against its baseline, for every throughput direction and for the
// connection rate. New ratios go at the end: latest.json's readers may
// rely on the first ones.
var trackedRatios = []struct{ Path, Baseline string }{
	{"conv-tcp", "haproxy"},
	{"conv-tcp", "direct-tcp"},
	{"conv-mptcp", "direct-mptcp"},
	// The converter against the floor, the minimal relay (bench/minrelay)
	// on the same sockets, and the floor against HAProxy.
	{"conv-tcp", "min-tcp"},
	{"conv-mptcp", "min-mptcp"},
	{"min-tcp", "haproxy"},
	// The converter with --syn-hold against the same without (only the
	// connection rate is measured with the hold).
	{holdPath, holdBaseline},
}

// Metrics a ratio compares.
const (
	metricThroughput = "throughput"
	metricConnRate   = "connections_per_second"
)

// Record is one line of bench/run.sh's results: the JSON that
// `converter bench --json` printed, tagged with the round and the path, or
// a failed run.
type Record struct {
	Round  int    `json:"round"`
	Case   string `json:"case"`
	Mode   string `json:"mode"`
	Failed bool   `json:"failed"`
	// Throughput runs.
	Direction     string    `json:"direction"`
	BitsPerSecond float64   `json:"bits_per_second"`
	Up            *Transfer `json:"up"`
	Down          *Transfer `json:"down"`
	Subflows      *int      `json:"subflows"`
	Joins         *int      `json:"joins"`
	// Connect runs.
	Connections          int64   `json:"connections"`
	ConnectionsPerSecond float64 `json:"connections_per_second"`
	Errors               int64   `json:"errors"`
	LatencyUS            struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"latency_us"`
	// SynToReply is the converter's SYN-to-reply histogram over a
	// connect run, as bench/run.sh scraped it (the converter's MPTCP
	// cases only; null when a scrape failed).
	SynToReply *Histogram `json:"syn_to_reply"`
}

// Histogram is the difference of two snapshots of a Prometheus histogram
// (the converter's convert_syn_to_reply_seconds): the observations
// between them.
type Histogram struct {
	Count      float64 `json:"count"`
	SumSeconds float64 `json:"sum_seconds"`
	// LeSeconds are the finite upper bounds, in order; Cumulative the
	// observations at or below each. Those above the last bound are
	// Count less the last cumulative count.
	LeSeconds  []float64 `json:"le_seconds"`
	Cumulative []float64 `json:"cumulative"`
}

// Quantile estimates the q-quantile (0 < q < 1) the way Prometheus'
// histogram_quantile does: linear interpolation within the bucket that
// holds it (from 0 in the first bucket), the highest finite bound when it
// lies above it. ok is false without observations.
func (h *Histogram) Quantile(q float64) (v float64, ok bool) {
	if h == nil || h.Count <= 0 || len(h.LeSeconds) == 0 || len(h.LeSeconds) != len(h.Cumulative) {
		return 0, false
	}
	rank := q * h.Count
	below, lower := 0.0, 0.0
	for i, le := range h.LeSeconds {
		c := h.Cumulative[i]
		if c >= rank && c > below {
			return lower + (le-lower)*(rank-below)/(c-below), true
		}
		below, lower = c, le
	}
	return h.LeSeconds[len(h.LeSeconds)-1], true
}

// Mean is the mean observation (exact: the sum is kept to the nanosecond).
func (h *Histogram) Mean() (v float64, ok bool) {
	if h == nil || h.Count <= 0 {
		return 0, false
	}
	return h.SumSeconds / h.Count, true
}

// Transfer is one direction of a throughput run.
type Transfer struct {
	BitsPerSecond float64 `json:"bits_per_second"`
}

// Summary is bench/results/latest.json: what the run was, every path's
// figures per direction and round with their medians, the ratios the
// project tracks and every record as measured.
type Summary struct {
	Schema int     `json:"schema"`
	Meta   *Meta   `json:"meta,omitempty"`
	Paths  []Path  `json:"paths"`
	Ratios []Ratio `json:"ratios"`
	// Idle is the memory per idle session, as bench/run.sh measured it.
	Idle json.RawMessage `json:"idle,omitempty"`
	// SynHold compares the converter with --syn-hold to the same without.
	SynHold *SynHold `json:"syn_hold,omitempty"`
	// Records are the runs as `converter bench --json` printed them,
	// in the order they ran.
	Records []json.RawMessage `json:"records"`
}

// Meta is what the run was: bench/run.sh writes it.
type Meta struct {
	Date    string `json:"date"`
	Kernel  string `json:"kernel"`
	CPUs    int    `json:"cpus"`
	Go      string `json:"go,omitempty"`
	HAProxy string `json:"haproxy,omitempty"`
	Source  string `json:"source,omitempty"`
	// The options of the run.
	Rounds      int      `json:"rounds"`
	Bytes       string   `json:"bytes"`
	Streams     int      `json:"streams"`
	Directions  []string `json:"directions"`
	Duration    string   `json:"duration"`
	Concurrency int      `json:"concurrency"`
}

// Path is one path's figures.
type Path struct {
	Name       string     `json:"name"`
	Label      string     `json:"label"`
	Throughput Directions `json:"throughput"`
	Connect    *Connect   `json:"connect,omitempty"`
}

// Directions holds a path's throughput runs in each direction that ran.
type Directions struct {
	Up   *Throughput `json:"up,omitempty"`
	Down *Throughput `json:"down,omitempty"`
	Both *Throughput `json:"both,omitempty"`
}

// get returns the runs in direction d (up, down or both), or nil.
func (ds *Directions) get(d string) *Throughput {
	return *ds.field(d)
}

func (ds *Directions) field(d string) **Throughput {
	switch d {
	case "up":
		return &ds.Up
	case "down":
		return &ds.Down
	case "both":
		return &ds.Both
	}
	panic("unknown direction " + d)
}

func (ds *Directions) empty() bool { return ds.Up == nil && ds.Down == nil && ds.Both == nil }

// Throughput is one path's throughput runs in one direction.
type Throughput struct {
	// Gbps is the whole run's rate; in both directions at once, the
	// bytes of both ways over the time of the longer.
	Gbps Stat `json:"gbit_per_second"`
	// UpGbps and DownGbps time each way of a run in both directions.
	UpGbps   *Stat `json:"up_gbit_per_second,omitempty"`
	DownGbps *Stat `json:"down_gbit_per_second,omitempty"`
	// Subflows is the median MPTCP subflow count at the end of the
	// transfers (MPTCP paths only); Joins the median count of MP_JOINs
	// accepted during a run.
	Subflows *float64 `json:"subflows,omitempty"`
	Joins    *float64 `json:"joins,omitempty"`
	Failed   int      `json:"failed"`
}

// Connect is one path's connection-rate runs.
type Connect struct {
	PerSecond Stat `json:"connections_per_second"`
	// P50US and P99US are each round's latency percentiles, connect to
	// the last response byte, in microseconds.
	P50US  Stat  `json:"p50_us"`
	P99US  Stat  `json:"p99_us"`
	Errors int64 `json:"errors"`
	Failed int   `json:"failed"`
	// The converter's own SYN-to-reply time (its histogram over each
	// round's run: p50, p99 and mean, in microseconds), for the cases
	// whose records have it.
	SynToReplyP50US  *Stat `json:"syn_to_reply_p50_us,omitempty"`
	SynToReplyP99US  *Stat `json:"syn_to_reply_p99_us,omitempty"`
	SynToReplyMeanUS *Stat `json:"syn_to_reply_mean_us,omitempty"`
}

// SynHold is the cost of `converter run --syn-hold`: the hold's case
// (conv-mptcp-hold) against the same converter without it (conv-mptcp),
// both in connect mode (MPTCP, Convert message in the SYN). Figures are
// medians of the rounds; null when a side has none.
type SynHold struct {
	Path     string `json:"path"`
	Baseline string `json:"baseline"`
	// ConnPerSecondRatio is the hold's median connection rate over the
	// baseline's; ConnPerSecondRatioRounds the ratio within each round.
	ConnPerSecondRatio       *float64  `json:"conn_per_s_ratio"`
	ConnPerSecondRatioRounds []float64 `json:"conn_per_s_ratio_rounds"`
	ConnPerSecond            Pair      `json:"conn_per_s"`
	// The generator's latency, connect to the last response byte.
	P50MS Pair `json:"p50_ms"`
	P99MS Pair `json:"p99_ms"`
	// The converter's, accept of the SYN to the Convert reply written.
	SynToReplyP50MS  Pair `json:"syn_to_reply_p50_ms"`
	SynToReplyP99MS  Pair `json:"syn_to_reply_p99_ms"`
	SynToReplyMeanMS Pair `json:"syn_to_reply_mean_ms"`
	// Connections is the generator's count of the hold's connections,
	// all rounds, to hold the counters against.
	Connections int64 `json:"connections"`
	// Counters are the hold converter's after all the rounds, as
	// bench/run.sh read them (`converter bpf status --json`:
	// syn_hold_counters, and pending).
	Counters json.RawMessage `json:"counters,omitempty"`
}

// Pair is one figure with the hold and without.
type Pair struct {
	Hold   *float64 `json:"hold"`
	NoHold *float64 `json:"no_hold"`
}

// Stat is one figure over the rounds.
type Stat struct {
	// Rounds holds the figure of each round that did not fail, in round
	// order; RoundNumbers the number of each.
	Rounds       []float64 `json:"rounds"`
	RoundNumbers []int     `json:"round_numbers"`
	Median       float64   `json:"median"`
	Min          float64   `json:"min"`
	Max          float64   `json:"max"`
}

// Ratio is a path's median over its baseline's, for one metric.
type Ratio struct {
	Path     string `json:"path"`
	Baseline string `json:"baseline"`
	Metric   string `json:"metric"`
	// Direction is set for throughput.
	Direction string `json:"direction,omitempty"`
	// Value is the ratio of the medians; null when either is missing.
	Value *float64 `json:"value"`
	// Rounds are the ratios within each round both ran in: the runs of a
	// round are next to each other in time, so these show the spread.
	Rounds []float64 `json:"rounds"`
}

// ReadRecords reads run.sh's results: one JSON object a line. Each line is
// kept as it is for Summary.Records.
func ReadRecords(r io.Reader) ([]Record, []json.RawMessage, error) {
	var (
		recs []Record
		raw  []json.RawMessage
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", n, err)
		}
		if rec.Case == "" || rec.Mode == "" {
			return nil, nil, fmt.Errorf("line %d: a record needs its case and mode", n)
		}
		recs = append(recs, rec)
		raw = append(raw, json.RawMessage(bytes.Clone(line)))
	}
	return recs, raw, sc.Err()
}

// Summarize computes every path's figures and the tracked ratios. A path
// or a direction that never ran is left out; one that only failed is kept
// with its failure count.
func Summarize(recs []Record) Summary {
	s := Summary{Schema: SchemaVersion, Paths: []Path{}, Ratios: []Ratio{}}
	byPath := map[string]*Path{}
	for _, p := range paths {
		path := Path{Name: p.Name, Label: p.Label}
		for _, d := range directions {
			*path.Throughput.field(d) = summarizeThroughput(recs, p.Name, d)
		}
		path.Connect = summarizeConnect(recs, p.Name)
		if !path.Throughput.empty() || path.Connect != nil {
			s.Paths = append(s.Paths, path)
			byPath[p.Name] = &s.Paths[len(s.Paths)-1]
		}
	}
	for _, tr := range trackedRatios {
		a, b := byPath[tr.Path], byPath[tr.Baseline]
		if a == nil || b == nil {
			continue
		}
		for _, d := range directions {
			if ta, tb := a.Throughput.get(d), b.Throughput.get(d); ta != nil && tb != nil {
				s.Ratios = append(s.Ratios, newRatio(tr.Path, tr.Baseline, metricThroughput, d, ta.Gbps, tb.Gbps))
			}
		}
		if a.Connect != nil && b.Connect != nil {
			s.Ratios = append(s.Ratios, newRatio(tr.Path, tr.Baseline, metricConnRate, "", a.Connect.PerSecond, b.Connect.PerSecond))
		}
	}
	s.SynHold = summarizeSynHold(recs, byPath[holdPath], byPath[holdBaseline])
	return s
}

// summarizeSynHold compares the hold's connect runs to the baseline's;
// nil when the hold's case never ran in connect mode.
func summarizeSynHold(recs []Record, hold, base *Path) *SynHold {
	if hold == nil || hold.Connect == nil {
		return nil
	}
	h := &SynHold{Path: holdPath, Baseline: holdBaseline, ConnPerSecondRatioRounds: []float64{}}
	var bc *Connect
	if base != nil {
		bc = base.Connect
	}
	hc := hold.Connect
	if bc != nil {
		r := newRatio(holdPath, holdBaseline, metricConnRate, "", hc.PerSecond, bc.PerSecond)
		h.ConnPerSecondRatio, h.ConnPerSecondRatioRounds = r.Value, r.Rounds
	}
	pair := func(get func(*Connect) *Stat, scale float64) Pair {
		var p Pair
		for _, side := range []struct {
			c   *Connect
			out **float64
		}{{hc, &p.Hold}, {bc, &p.NoHold}} {
			if side.c == nil {
				continue
			}
			if st := get(side.c); st != nil && len(st.Rounds) > 0 {
				v := st.Median * scale
				*side.out = &v
			}
		}
		return p
	}
	h.ConnPerSecond = pair(func(c *Connect) *Stat { return &c.PerSecond }, 1)
	h.P50MS = pair(func(c *Connect) *Stat { return &c.P50US }, 1e-3)
	h.P99MS = pair(func(c *Connect) *Stat { return &c.P99US }, 1e-3)
	h.SynToReplyP50MS = pair(func(c *Connect) *Stat { return c.SynToReplyP50US }, 1e-3)
	h.SynToReplyP99MS = pair(func(c *Connect) *Stat { return c.SynToReplyP99US }, 1e-3)
	h.SynToReplyMeanMS = pair(func(c *Connect) *Stat { return c.SynToReplyMeanUS }, 1e-3)
	for _, r := range recs {
		if r.Case == holdPath && r.Mode == "connect" && !r.Failed {
			h.Connections += r.Connections
		}
	}
	return h
}

func summarizeThroughput(recs []Record, path, dir string) *Throughput {
	var (
		t        Throughput
		up, down Stat
		subflows []float64
		joins    []float64
		seen     bool
	)
	for _, r := range recs {
		if r.Case != path || r.Mode != "throughput" || r.Direction != dir {
			continue
		}
		seen = true
		if r.Failed {
			t.Failed++
			continue
		}
		t.Gbps.add(r.Round, r.BitsPerSecond/1e9)
		if dir == "both" && r.Up != nil && r.Down != nil {
			up.add(r.Round, r.Up.BitsPerSecond/1e9)
			down.add(r.Round, r.Down.BitsPerSecond/1e9)
		}
		if r.Subflows != nil {
			subflows = append(subflows, float64(*r.Subflows))
		}
		if r.Joins != nil {
			joins = append(joins, float64(*r.Joins))
		}
	}
	if !seen {
		return nil
	}
	t.Gbps.finish()
	if len(up.Rounds) > 0 {
		up.finish()
		down.finish()
		t.UpGbps, t.DownGbps = &up, &down
	}
	t.Subflows, t.Joins = medianOrNil(subflows), medianOrNil(joins)
	return &t
}

func summarizeConnect(recs []Record, path string) *Connect {
	var (
		c                  Connect
		seen, hist         bool
		s2r50, s2r99, mean Stat
	)
	for _, r := range recs {
		if r.Case != path || r.Mode != "connect" {
			continue
		}
		seen = true
		if r.Failed {
			c.Failed++
			continue
		}
		c.PerSecond.add(r.Round, r.ConnectionsPerSecond)
		c.P50US.add(r.Round, r.LatencyUS.P50)
		c.P99US.add(r.Round, r.LatencyUS.P99)
		c.Errors += r.Errors
		if r.SynToReply != nil {
			hist = true
			p50, ok50 := r.SynToReply.Quantile(0.50)
			p99, ok99 := r.SynToReply.Quantile(0.99)
			m, okm := r.SynToReply.Mean()
			if ok50 && ok99 && okm {
				s2r50.add(r.Round, p50*1e6)
				s2r99.add(r.Round, p99*1e6)
				mean.add(r.Round, m*1e6)
			}
		}
	}
	if !seen {
		return nil
	}
	c.PerSecond.finish()
	c.P50US.finish()
	c.P99US.finish()
	if hist {
		s2r50.finish()
		s2r99.finish()
		mean.finish()
		c.SynToReplyP50US, c.SynToReplyP99US, c.SynToReplyMeanUS = &s2r50, &s2r99, &mean
	}
	return &c
}

func newRatio(path, baseline, metric, dir string, a, b Stat) Ratio {
	r := Ratio{Path: path, Baseline: baseline, Metric: metric, Direction: dir, Rounds: []float64{}}
	if len(a.Rounds) > 0 && len(b.Rounds) > 0 && b.Median > 0 {
		v := a.Median / b.Median
		r.Value = &v
	}
	for i, n := range a.RoundNumbers {
		if j := slices.Index(b.RoundNumbers, n); j >= 0 && b.Rounds[j] > 0 {
			r.Rounds = append(r.Rounds, a.Rounds[i]/b.Rounds[j])
		}
	}
	return r
}

func (s *Stat) add(round int, v float64) {
	s.Rounds = append(s.Rounds, v)
	s.RoundNumbers = append(s.RoundNumbers, round)
}

// finish computes the median and the range; a Stat without rounds gets
// empty lists, not nulls, in JSON.
func (s *Stat) finish() {
	if s.Rounds == nil {
		s.Rounds, s.RoundNumbers = []float64{}, []int{}
		return
	}
	s.Median = median(s.Rounds)
	s.Min, s.Max = slices.Min(s.Rounds), slices.Max(s.Rounds)
}

// median of vs, which must not be empty: the middle value, or the mean of
// the two middle values.
func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianOrNil(vs []float64) *float64 {
	if len(vs) == 0 {
		return nil
	}
	m := median(vs)
	return &m
}

// spread is the range of a ratio's rounds.
func spread(vs []float64) (lo, hi float64, ok bool) {
	if len(vs) == 0 {
		return math.NaN(), math.NaN(), false
	}
	return slices.Min(vs), slices.Max(vs), true
}

// path returns the summary of the named path, or nil.
func (s *Summary) path(name string) *Path {
	for i := range s.Paths {
		if s.Paths[i].Name == name {
			return &s.Paths[i]
		}
	}
	return nil
}

// label returns the label of a path name.
func label(name string) string {
	for _, p := range paths {
		if p.Name == name {
			return p.Label
		}
	}
	return name
}
