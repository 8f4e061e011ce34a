package main

import (
	"bytes"
	"encoding/json"
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
