package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// records is a run of two rounds: every path up and down, a both run of
// two paths, connect runs, and one failed run; the minimal relay's paths
// (min-*) ran up, down and connect (TCP) and up (MPTCP).
const records = `
{"round":1,"case":"direct-tcp","mode":"throughput","direction":"up","bits_per_second":20e9,"up":{"bits_per_second":20e9}}
{"round":1,"case":"haproxy","mode":"throughput","direction":"up","bits_per_second":8e9,"up":{"bits_per_second":8e9}}
{"round":1,"case":"min-tcp","mode":"throughput","direction":"up","bits_per_second":16e9}
{"round":1,"case":"min-mptcp","mode":"throughput","direction":"up","bits_per_second":4e9,"subflows":2,"joins":1}
{"round":1,"case":"conv-tcp","mode":"throughput","direction":"up","bits_per_second":12e9,"up":{"bits_per_second":12e9}}
{"round":1,"case":"direct-mptcp","mode":"throughput","direction":"up","bits_per_second":6e9,"subflows":2,"joins":1}
{"round":1,"case":"conv-mptcp","mode":"throughput","direction":"up","bits_per_second":3e9,"subflows":2,"joins":1}
{"round":1,"case":"min-tcp","mode":"throughput","direction":"down","bits_per_second":12e9}
{"round":1,"case":"conv-tcp","mode":"throughput","direction":"down","bits_per_second":10e9}
{"round":1,"case":"haproxy","mode":"throughput","direction":"down","bits_per_second":5e9}
{"round":1,"case":"conv-tcp","mode":"throughput","direction":"both","bits_per_second":9e9,"up":{"bits_per_second":4e9},"down":{"bits_per_second":5e9}}
{"round":1,"case":"haproxy","mode":"throughput","direction":"both","bits_per_second":6e9,"up":{"bits_per_second":3e9},"down":{"bits_per_second":3e9}}
{"round":1,"case":"conv-tcp","mode":"connect","connections_per_second":6000,"errors":1,"latency_us":{"p50":4000,"p99":9000}}
{"round":1,"case":"haproxy","mode":"connect","connections_per_second":8000,"latency_us":{"p50":3000,"p99":8000}}
{"round":1,"case":"min-tcp","mode":"connect","connections_per_second":8000,"latency_us":{"p50":3500,"p99":8000}}
{"round":2,"case":"direct-tcp","mode":"throughput","direction":"up","bits_per_second":30e9}
{"round":2,"case":"haproxy","mode":"throughput","direction":"up","bits_per_second":6e9}
{"round":2,"case":"min-tcp","mode":"throughput","direction":"up","bits_per_second":14e9}
{"round":2,"case":"min-mptcp","mode":"throughput","direction":"up","bits_per_second":5e9,"subflows":2,"joins":1}
{"round":2,"case":"conv-tcp","mode":"throughput","direction":"up","bits_per_second":14e9}
{"round":2,"case":"direct-mptcp","mode":"throughput","direction":"up","bits_per_second":8e9,"subflows":2,"joins":1}
{"round":2,"case":"conv-mptcp","mode":"throughput","direction":"up","failed":true}
{"round":2,"case":"min-tcp","mode":"throughput","direction":"down","bits_per_second":15e9}
{"round":2,"case":"conv-tcp","mode":"throughput","direction":"down","bits_per_second":12e9}
{"round":2,"case":"haproxy","mode":"throughput","direction":"down","bits_per_second":6e9}
{"round":2,"case":"conv-tcp","mode":"connect","connections_per_second":7000,"errors":2,"latency_us":{"p50":5000,"p99":11000}}
{"round":2,"case":"haproxy","mode":"connect","connections_per_second":7000,"latency_us":{"p50":3000,"p99":7000}}
{"round":2,"case":"min-tcp","mode":"connect","connections_per_second":9000,"latency_us":{"p50":3500,"p99":9000}}
`

func summary(t *testing.T) Summary {
	t.Helper()
	recs, raw, err := ReadRecords(strings.NewReader(records))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 28 {
		t.Fatalf("%d raw records, want 28", len(raw))
	}
	return Summarize(recs)
}

func TestSummarize(t *testing.T) {
	s := summary(t)
	var names []string
	for _, p := range s.Paths {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, " "); got != "direct-tcp direct-mptcp haproxy min-tcp min-mptcp conv-tcp conv-mptcp" {
		t.Fatalf("paths %q", got)
	}
	up := s.path("direct-tcp").Throughput.get("up").Gbps
	if up.Median != 25 || up.Min != 20 || up.Max != 30 || len(up.Rounds) != 2 {
		t.Errorf("direct-tcp up %+v: want median 25 of 20 and 30", up)
	}
	cm := s.path("conv-mptcp").Throughput.get("up")
	if cm.Failed != 1 || cm.Gbps.Median != 3 || *cm.Subflows != 2 {
		t.Errorf("conv-mptcp up %+v: want one failure, median 3, 2 subflows", cm)
	}
	both := s.path("conv-tcp").Throughput.get("both")
	if both.Gbps.Median != 9 || both.UpGbps.Median != 4 || both.DownGbps.Median != 5 {
		t.Errorf("conv-tcp both %+v", both)
	}
	c := s.path("conv-tcp").Connect
	if c.PerSecond.Median != 6500 || c.P99US.Median != 10000 || c.Errors != 3 {
		t.Errorf("conv-tcp connect %+v", c)
	}
	if s.path("direct-mptcp").Connect != nil {
		t.Error("direct-mptcp has connect figures without a connect run")
	}
	if p := s.path("min-tcp"); p.Label != "minimal relay, TCP leg" || p.Throughput.get("down").Gbps.Median != 13.5 || p.Connect.PerSecond.Median != 8500 {
		t.Errorf("min-tcp %+v", p)
	}
	if p := s.path("min-mptcp"); p.Label != "minimal relay, MPTCP leg" || p.Throughput.get("up").Gbps.Median != 4.5 || *p.Throughput.get("up").Joins != 1 || p.Connect != nil {
		t.Errorf("min-mptcp %+v", p)
	}
}

func TestRatios(t *testing.T) {
	s := summary(t)
	find := func(path, base, metric, dir string) Ratio {
		t.Helper()
		for _, r := range s.Ratios {
			if r.Path == path && r.Baseline == base && r.Metric == metric && r.Direction == dir {
				return r
			}
		}
		t.Fatalf("no ratio %s/%s %s %s", path, base, metric, dir)
		return Ratio{}
	}
	// conv-tcp up: median 13 against HAProxy's 7; per round 12/8, 14/6.
	r := find("conv-tcp", "haproxy", metricThroughput, "up")
	if *r.Value != 13.0/7 || len(r.Rounds) != 2 || r.Rounds[0] != 1.5 || r.Rounds[1] != 14.0/6 {
		t.Errorf("conv-tcp/haproxy up %v %v", *r.Value, r.Rounds)
	}
	// conv-mptcp up failed in round 2: one round's ratio.
	r = find("conv-mptcp", "direct-mptcp", metricThroughput, "up")
	if *r.Value != 3.0/7 || len(r.Rounds) != 1 || r.Rounds[0] != 0.5 {
		t.Errorf("conv-mptcp/direct-mptcp up %v %v", *r.Value, r.Rounds)
	}
	r = find("conv-tcp", "haproxy", metricConnRate, "")
	if *r.Value != 6500.0/7500 {
		t.Errorf("conv-tcp/haproxy conn/s %v", *r.Value)
	}
	// The converter against the minimal relay: 13 against 15 (12/16,
	// 14/14); 11 against 13.5 (10/12, 12/15); 6,500 against 8,500.
	r = find("conv-tcp", "min-tcp", metricThroughput, "up")
	if *r.Value != 13.0/15 || len(r.Rounds) != 2 || r.Rounds[0] != 0.75 || r.Rounds[1] != 1 {
		t.Errorf("conv-tcp/min-tcp up %v %v", *r.Value, r.Rounds)
	}
	r = find("conv-tcp", "min-tcp", metricThroughput, "down")
	if *r.Value != 11/13.5 || len(r.Rounds) != 2 || r.Rounds[0] != 10.0/12 || r.Rounds[1] != 0.8 {
		t.Errorf("conv-tcp/min-tcp down %v %v", *r.Value, r.Rounds)
	}
	r = find("conv-tcp", "min-tcp", metricConnRate, "")
	if *r.Value != 6500.0/8500 || len(r.Rounds) != 2 || r.Rounds[0] != 0.75 {
		t.Errorf("conv-tcp/min-tcp conn/s %v %v", *r.Value, r.Rounds)
	}
	// conv-mptcp's round 2 failed: round 1's 3 against 4.
	r = find("conv-mptcp", "min-mptcp", metricThroughput, "up")
	if *r.Value != 3/4.5 || len(r.Rounds) != 1 || r.Rounds[0] != 0.75 {
		t.Errorf("conv-mptcp/min-mptcp up %v %v", *r.Value, r.Rounds)
	}
	// The floor against HAProxy.
	r = find("min-tcp", "haproxy", metricThroughput, "up")
	if *r.Value != 15.0/7 || len(r.Rounds) != 2 || r.Rounds[0] != 2 {
		t.Errorf("min-tcp/haproxy up %v %v", *r.Value, r.Rounds)
	}
	r = find("min-tcp", "haproxy", metricConnRate, "")
	if *r.Value != 8500.0/7500 || len(r.Rounds) != 2 || r.Rounds[0] != 1 || r.Rounds[1] != 9000.0/7000 {
		t.Errorf("min-tcp/haproxy conn/s %v %v", *r.Value, r.Rounds)
	}
	// No down run of direct-tcp: no ratio.
	for _, r := range s.Ratios {
		if r.Baseline == "direct-tcp" && r.Direction == "down" {
			t.Errorf("ratio %+v without a baseline run", r)
		}
	}
}

// The ratios come in trackedRatios' order, the first three as they were
// before the minimal relay: latest.json's readers may rely on it.
func TestRatioOrder(t *testing.T) {
	s := summary(t)
	var got []string
	for _, r := range s.Ratios {
		pair := r.Path + "/" + r.Baseline
		if len(got) == 0 || got[len(got)-1] != pair {
			got = append(got, pair)
		}
	}
	want := "conv-tcp/haproxy conv-tcp/direct-tcp conv-mptcp/direct-mptcp conv-tcp/min-tcp conv-mptcp/min-mptcp min-tcp/haproxy"
	if strings.Join(got, " ") != want {
		t.Errorf("ratio order %q, want %q", strings.Join(got, " "), want)
	}
	if r := s.Ratios[0]; r.Path != "conv-tcp" || r.Baseline != "haproxy" || r.Metric != metricThroughput || r.Direction != "up" {
		t.Errorf("first ratio %+v", r)
	}
}

func TestTables(t *testing.T) {
	s := summary(t)
	var text, md bytes.Buffer
	if err := WriteTables(&text, s, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteTables(&md, s, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"converter, TCP leg 13.0 (12.0–14.0) 11.0 (10.0–12.0) 9.0 6,500 (6,000–7,000) 4.5 (4.0–5.0) 10.0 (9.0–11.0)\n",
		"converter, TCP leg / HAProxy 1.86 (1.50–2.33) 2.00 (2.00–2.00) 1.50 0.87 (0.75–1.00)\n",
		"minimal relay, TCP leg 15.0 (14.0–16.0) 13.5 (12.0–15.0) - 8,500 (8,000–9,000) 3.5 (3.5–3.5) 8.5 (8.0–9.0)\n",
		"converter, TCP leg / minimal relay, TCP leg 0.87 (0.75–1.00) 0.81 (0.80–0.83) - 0.76 (0.75–0.78)\n",
		"converter, MPTCP leg / minimal relay, MPTCP leg 0.67 - - -\n",
		"minimal relay, TCP leg / HAProxy 2.14 (2.00–2.33) 2.45 (2.40–2.50) - 1.13 (1.00–1.29)\n",
		"minimal relay, MPTCP leg 2 / 1 - - - 0\n",
	} {
		// Columns are aligned with runs of spaces: compare the words.
		var words strings.Builder
		for line := range strings.Lines(text.String()) {
			words.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
		}
		if !strings.Contains(words.String(), want) {
			t.Errorf("text tables lack %q:\n%s", want, text.String())
		}
	}
	if !strings.Contains(md.String(), "| path | up Gbit/s | down Gbit/s | both Gbit/s | conn/s | p50 ms | p99 ms |\n|---|") {
		t.Errorf("markdown header:\n%s", md.String())
	}
	if !strings.Contains(md.String(), "| converter, MPTCP leg | 3.0 | - | - | - | - | - |") {
		t.Errorf("markdown conv-mptcp row:\n%s", md.String())
	}
	if !strings.Contains(md.String(), "| minimal relay, MPTCP leg | 4.5 (4.0–5.0) | - | - | - | - | - |") {
		t.Errorf("markdown min-mptcp row:\n%s", md.String())
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	recs := write("records.jsonl", records)
	meta := write("meta.json", `{"date":"2026-11-30T00:00:00Z","kernel":"6.18","cpus":2,"rounds":2,"bytes":"2G","streams":1,"directions":["up","down","both"],"duration":"5s","concurrency":32}`)
	idle := write("idle.json", `{"connections":10}`)
	var out, errOut bytes.Buffer
	if err := run([]string{"summarize", "-meta", meta, "-idle", idle, recs}, &out, &errOut); err != nil {
		t.Fatal(err, errOut.String())
	}
	var s Summary
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	var idleOut bytes.Buffer
	if err := json.Compact(&idleOut, s.Idle); err != nil {
		t.Fatal(err)
	}
	if s.Schema != SchemaVersion || s.Meta.CPUs != 2 || len(s.Records) != 28 || idleOut.String() != `{"connections":10}` {
		t.Fatalf("summary: schema %d, meta %+v, %d records, idle %s", s.Schema, s.Meta, len(s.Records), s.Idle)
	}
	sum := write("latest.json", out.String())
	svg := filepath.Join(dir, "latest.svg")
	if err := run([]string{"draw", sum, svg}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "converter, TCP leg", "conv. TCP / HAProxy, up: 1.86", "p99 10.0 ms", "2 interleaved round(s)", svgFontFamily,
		"minimal relay, TCP leg", "minimal relay, MPTCP leg", "conv. TCP / min. TCP, up: 0.87", "conv. MPTCP / min. MPTCP, up: 0.67", "min. TCP / HAProxy, conn/s: 1.13", "p99 8.5 ms"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("the chart lacks %q", want)
		}
	}
	out.Reset()
	if err := run([]string{"table", "-markdown", sum}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "| path |") {
		t.Errorf("table:\n%s", out.String())
	}
	if err := run([]string{"draw", sum}, &out, &errOut); err != errUsage {
		t.Errorf("draw without an output: %v, want the usage error", err)
	}
}

func TestGroupThousands(t *testing.T) {
	for in, want := range map[string]string{
		"0": "0", "999": "999", "1000": "1,000", "123456": "123,456", "-1234567": "-1,234,567",
		"12.5": "12.5", "12345.25": "12,345.25",
	} {
		if got := groupThousands(in); got != want {
			t.Errorf("groupThousands(%q) = %q, want %q", in, got, want)
		}
	}
}

// holdRecords add the SYN hold's case to records: two rounds of connect
// runs of the converter's MPTCP leg without the hold (conv-mptcp) and with
// it (conv-mptcp-hold), with the converter's SYN-to-reply histogram over
// each run; round 2's scrape of conv-mptcp failed (null), and round 2 of
// the hold put half its observations above the last bound.
const holdRecords = `
{"round":1,"case":"conv-mptcp","mode":"connect","connections":20000,"connections_per_second":4000,"latency_us":{"p50":7600,"p99":18000},"syn_to_reply":{"count":100,"sum_seconds":0.03,"le_seconds":[5e-05,0.0001,0.00025,0.0005,0.001],"cumulative":[0,10,60,90,100]}}
{"round":1,"case":"conv-mptcp-hold","mode":"connect","connections":18000,"connections_per_second":3600,"latency_us":{"p50":8000,"p99":19000},"syn_to_reply":{"count":100,"sum_seconds":0.05,"le_seconds":[5e-05,0.0001,0.00025,0.0005,0.001],"cumulative":[0,0,20,70,100]}}
{"round":2,"case":"conv-mptcp","mode":"connect","connections":22000,"connections_per_second":4400,"latency_us":{"p50":7000,"p99":17000},"syn_to_reply":null}
{"round":2,"case":"conv-mptcp-hold","mode":"connect","connections":20000,"connections_per_second":4000,"latency_us":{"p50":7400,"p99":18000},"syn_to_reply":{"count":10,"sum_seconds":0.006,"le_seconds":[5e-05,0.0001,0.00025,0.0005,0.001],"cumulative":[0,0,0,0,5]}}
`

const holdCounters = `{"syns_noted":38050,"synacks_held":38050,"released":38050,"released_at_cap":0,"refused_reset":0,"pending":0}`

func holdSummary(t *testing.T) Summary {
	t.Helper()
	recs, _, err := ReadRecords(strings.NewReader(records + holdRecords))
	if err != nil {
		t.Fatal(err)
	}
	return Summarize(recs)
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func nearPtr(p *float64, want float64) bool { return p != nil && near(*p, want) }

func TestQuantile(t *testing.T) {
	h := &Histogram{Count: 100, SumSeconds: 0.03, LeSeconds: []float64{0.001, 0.002, 0.004}, Cumulative: []float64{50, 50, 90}}
	for _, c := range []struct{ q, want float64 }{
		{0.25, 0.0005}, // within the first bucket, from 0
		{0.5, 0.001},   // its upper bound; the empty bucket after it is skipped
		{0.7, 0.003},   // half-way through the third
		{0.95, 0.004},  // above the last bound: the last bound
	} {
		if got, ok := h.Quantile(c.q); !ok || !near(got, c.want) {
			t.Errorf("quantile %v = %v, %v; want %v", c.q, got, ok, c.want)
		}
	}
	if m, ok := h.Mean(); !ok || !near(m, 0.0003) {
		t.Errorf("mean %v %v", m, ok)
	}
	for _, empty := range []*Histogram{nil, {}, {Count: 0, LeSeconds: []float64{1}, Cumulative: []float64{0}}, {Count: 3, LeSeconds: []float64{1, 2}, Cumulative: []float64{1}}} {
		if _, ok := empty.Quantile(0.5); ok {
			t.Errorf("quantile of %+v", empty)
		}
	}
	if _, ok := (&Histogram{}).Mean(); ok {
		t.Error("mean of an empty histogram")
	}
}

func TestSynHold(t *testing.T) {
	s := holdSummary(t)
	if p := s.Paths[len(s.Paths)-1]; p.Name != "conv-mptcp-hold" || p.Label != "converter, MPTCP leg, --syn-hold" || !p.Throughput.empty() {
		t.Fatalf("last path %+v", p)
	}
	hc := s.path("conv-mptcp-hold").Connect
	if hc.PerSecond.Median != 3800 || hc.SynToReplyP50US == nil || len(hc.SynToReplyP50US.Rounds) != 2 {
		t.Fatalf("hold connect %+v", hc)
	}
	// Round 1: p50 in (250 µs, 500 µs], 30 of its 50 observations in;
	// round 2: p50 at the last bound, p99 above it.
	if r := hc.SynToReplyP50US.Rounds; !near(r[0], 400) || !near(r[1], 1000) {
		t.Errorf("hold SYN-to-reply p50 rounds %v", r)
	}
	if r := hc.SynToReplyP99US.Rounds; !near(r[0], 500+500*29.0/30) || !near(r[1], 1000) {
		t.Errorf("hold SYN-to-reply p99 rounds %v", r)
	}
	if r := hc.SynToReplyMeanUS.Rounds; !near(r[0], 500) || !near(r[1], 600) {
		t.Errorf("hold SYN-to-reply mean rounds %v", r)
	}
	// The baseline's round 2 scrape failed: one round of SYN-to-reply,
	// two of the rest.
	bc := s.path("conv-mptcp").Connect
	if len(bc.PerSecond.Rounds) != 2 || bc.SynToReplyP50US == nil || len(bc.SynToReplyP50US.Rounds) != 1 || bc.SynToReplyP50US.RoundNumbers[0] != 1 {
		t.Fatalf("baseline connect %+v", bc)
	}
	// The paths without histograms have no SYN-to-reply figures.
	if c := s.path("conv-tcp").Connect; c.SynToReplyP50US != nil {
		t.Errorf("conv-tcp has SYN-to-reply figures: %+v", c)
	}

	h := s.SynHold
	if h == nil {
		t.Fatal("no syn_hold")
	}
	if h.Path != "conv-mptcp-hold" || h.Baseline != "conv-mptcp" || h.Connections != 38000 || h.Counters != nil {
		t.Errorf("syn_hold %+v", h)
	}
	if !nearPtr(h.ConnPerSecondRatio, 3800.0/4200) || len(h.ConnPerSecondRatioRounds) != 2 ||
		!near(h.ConnPerSecondRatioRounds[0], 0.9) || !near(h.ConnPerSecondRatioRounds[1], 4000.0/4400) {
		t.Errorf("conn/s ratio %v %v", h.ConnPerSecondRatio, h.ConnPerSecondRatioRounds)
	}
	for _, c := range []struct {
		name       string
		p          Pair
		hold, base float64
	}{
		{"conn/s", h.ConnPerSecond, 3800, 4200},
		{"p50", h.P50MS, 7.7, 7.3},
		{"p99", h.P99MS, 18.5, 17.5},
		{"SYN to reply p50", h.SynToReplyP50MS, 0.7, 0.22},
		{"SYN to reply p99", h.SynToReplyP99MS, (0.5 + 0.5*29.0/30 + 1) / 2, 0.95},
		{"SYN to reply mean", h.SynToReplyMeanMS, 0.55, 0.3},
	} {
		if !nearPtr(c.p.Hold, c.hold) || !nearPtr(c.p.NoHold, c.base) {
			t.Errorf("%s: hold %v, no hold %v; want %v, %v", c.name, deref(c.p.Hold), deref(c.p.NoHold), c.hold, c.base)
		}
	}
	// The hold's ratio comes last, after the ratios as they were.
	last := s.Ratios[len(s.Ratios)-1]
	if last.Path != "conv-mptcp-hold" || last.Baseline != "conv-mptcp" || last.Metric != metricConnRate || !nearPtr(last.Value, 3800.0/4200) {
		t.Errorf("last ratio %+v", last)
	}
	if r := s.Ratios[0]; r.Path != "conv-tcp" || r.Baseline != "haproxy" || r.Direction != "up" {
		t.Errorf("first ratio %+v", r)
	}
	// Without the hold's runs: no syn_hold, and the summary as before.
	if s := summary(t); s.SynHold != nil || s.path("conv-mptcp-hold") != nil {
		t.Errorf("syn_hold without its runs: %+v", s.SynHold)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestSynHoldTables(t *testing.T) {
	s := holdSummary(t)
	s.SynHold.Counters = json.RawMessage(holdCounters)
	var text bytes.Buffer
	if err := WriteTables(&text, s, false); err != nil {
		t.Fatal(err)
	}
	var words strings.Builder
	for line := range strings.Lines(text.String()) {
		words.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
	}
	for _, want := range []string{
		"converter, MPTCP leg, --syn-hold - - - 3,800 (3,600–4,000) 7.7 (7.4–8.0) 18.5 (18.0–19.0)\n",
		"converter, MPTCP leg, --syn-hold / converter, MPTCP leg - - - 0.90 (0.90–0.91)\n",
		"--syn-hold (conv-mptcp-hold / conv-mptcp) without with with / without\n",
		"conn/s 4,200 (4,000–4,400) 3,800 (3,600–4,000) 0.90 (0.90–0.91)\n",
		"connect p50 ms 7.3 (7.0–7.6) 7.7 (7.4–8.0) 1.05\n",
		"SYN to reply p50 ms 0.220 0.700 (0.400–1.000) 3.18\n",
		"SYN to reply mean ms 0.300 0.550 (0.500–0.600) 1.83\n",
		"hold counters (all rounds; 38000 connections measured): pending 0, refused_reset 0, released 38050, released_at_cap 0, synacks_held 38050, syns_noted 38050\n",
	} {
		if !strings.Contains(words.String(), want) {
			t.Errorf("tables lack %q:\n%s", want, text.String())
		}
	}
	// Without the hold's runs, no fourth table.
	text.Reset()
	if err := WriteTables(&text, summary(t), false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(text.String(), "syn-hold") {
		t.Errorf("a SYN hold table without its runs:\n%s", text.String())
	}
}

func TestRunSynHold(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	recs := write("records.jsonl", records+holdRecords)
	counters := write("synhold.json", holdCounters+"\n")
	var out, errOut bytes.Buffer
	if err := run([]string{"summarize", "-synhold", counters, recs}, &out, &errOut); err != nil {
		t.Fatal(err, errOut.String())
	}
	// The JSON names, as latest.json's readers see them.
	var doc struct {
		SynHold map[string]json.RawMessage `json:"syn_hold"`
		Records []json.RawMessage          `json:"records"`
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"path", "baseline", "conn_per_s_ratio", "conn_per_s_ratio_rounds", "conn_per_s", "p50_ms", "p99_ms",
		"syn_to_reply_p50_ms", "syn_to_reply_p99_ms", "syn_to_reply_mean_ms", "connections", "counters"} {
		if _, ok := doc.SynHold[k]; !ok {
			t.Errorf("syn_hold lacks %q: %s", k, out.String())
		}
	}
	var p50 map[string]*float64
	if err := json.Unmarshal(doc.SynHold["p50_ms"], &p50); err != nil || !nearPtr(p50["hold"], 7.7) || !nearPtr(p50["no_hold"], 7.3) {
		t.Errorf("p50_ms %s (%v)", doc.SynHold["p50_ms"], err)
	}
	var c map[string]int
	if err := json.Unmarshal(doc.SynHold["counters"], &c); err != nil || c["synacks_held"] != 38050 || c["released_at_cap"] != 0 {
		t.Errorf("counters %s (%v)", doc.SynHold["counters"], err)
	}
	if len(doc.Records) != 32 || !bytes.Contains(doc.Records[31], []byte(`"syn_to_reply":{"count":10,`)) {
		t.Errorf("records: %d, the last %s", len(doc.Records), doc.Records[len(doc.Records)-1])
	}
	if !bytes.Contains(out.Bytes(), []byte(`"syn_to_reply_p50_us": {`)) {
		t.Error("no syn_to_reply_p50_us in the paths")
	}
	sum := write("latest.json", out.String())
	svg := filepath.Join(dir, "latest.svg")
	if err := run([]string{"draw", sum, svg}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"conv. MPTCP hold / conv. MPTCP, conn/s: 0.90", "SYN hold", "3,800", "p99 18.5 ms", "S→R 0.70 ms", "S→R 0.22 ms"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("the chart lacks %q", want)
		}
	}
	// Not in the throughput panel: it has no throughput runs.
	if bytes.Contains(b, []byte("converter, MPTCP leg, --syn-hold")) {
		t.Error("the hold's case is in the throughput panel")
	}
	// Counters that are not an object are refused.
	bad := write("bad.json", "[1]")
	if err := run([]string{"summarize", "-synhold", bad, recs}, &out, &errOut); err == nil {
		t.Error("counters as an array: no error")
	}
}
