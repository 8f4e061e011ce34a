package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// WriteTables prints the summary as three tables: every path's medians
// with the range of the rounds, the tracked ratios, and the checks
// (subflows, joins, errors, failed runs); then, when the SYN hold was
// measured, a fourth: the converter with --syn-hold against the same
// without, and the hold's counters. markdown selects Markdown tables, as
// the README quotes them; otherwise columns are aligned.
func WriteTables(w io.Writer, s Summary, markdown bool) error {
	t := &tableWriter{w: w, markdown: markdown}
	dirs := s.directions()

	head := []string{"path"}
	for _, d := range dirs {
		head = append(head, d+" Gbit/s")
	}
	head = append(head, "conn/s", "p50 ms", "p99 ms")
	rows := [][]string{head}
	for _, p := range s.Paths {
		row := []string{p.Label}
		for _, d := range dirs {
			row = append(row, throughputCell(p.Throughput.get(d)))
		}
		if c := p.Connect; c != nil {
			row = append(row, statCell(c.PerSecond, 1, "%.0f", true), statCell(c.P50US, 1e3, "%.1f", false), statCell(c.P99US, 1e3, "%.1f", false))
		} else {
			row = append(row, "-", "-", "-")
		}
		rows = append(rows, row)
	}
	t.table(rows)

	rows = [][]string{append(append([]string{"ratio"}, dirs...), "conn/s")}
	for _, tr := range trackedRatios {
		row := []string{label(tr.Path) + " / " + label(tr.Baseline)}
		seen := false
		for _, d := range append(dirs, "") {
			cell := "-"
			for _, r := range s.Ratios {
				if r.Path == tr.Path && r.Baseline == tr.Baseline && r.Direction == d {
					cell, seen = ratioCell(r), true
				}
			}
			row = append(row, cell)
		}
		if seen {
			rows = append(rows, row)
		}
	}
	t.blank()
	t.table(rows)

	head = []string{"path"}
	for _, d := range dirs {
		head = append(head, d+" subflows / joins")
	}
	head = append(head, "connect errors", "failed runs")
	rows = [][]string{head}
	for _, p := range s.Paths {
		row := []string{p.Label}
		failed := 0
		for _, d := range dirs {
			tp := p.Throughput.get(d)
			if tp == nil {
				row = append(row, "-")
				continue
			}
			row = append(row, optCell(tp.Subflows)+" / "+optCell(tp.Joins))
			failed += tp.Failed
		}
		if c := p.Connect; c != nil {
			row = append(row, fmt.Sprint(c.Errors))
			failed += c.Failed
		} else {
			row = append(row, "-")
		}
		rows = append(rows, append(row, fmt.Sprint(failed)))
	}
	t.blank()
	t.table(rows)
	synHoldTable(t, s)
	return t.err
}

// synHoldTable prints the SYN hold's figures, each with the range of the
// rounds, and the ratio of the medians with the hold over without.
func synHoldTable(t *tableWriter, s Summary) {
	h := s.SynHold
	if h == nil {
		return
	}
	var hold, base *Connect
	if p := s.path(h.Path); p != nil {
		hold = p.Connect
	}
	if p := s.path(h.Baseline); p != nil {
		base = p.Connect
	}
	rows := [][]string{{"--syn-hold (" + h.Path + " / " + h.Baseline + ")", "without", "with", "with / without"}}
	for _, f := range []struct {
		name   string
		get    func(*Connect) *Stat
		div    float64
		format string
	}{
		{"conn/s", func(c *Connect) *Stat { return &c.PerSecond }, 1, "%.0f"},
		{"connect p50 ms", func(c *Connect) *Stat { return &c.P50US }, 1e3, "%.1f"},
		{"connect p99 ms", func(c *Connect) *Stat { return &c.P99US }, 1e3, "%.1f"},
		{"SYN to reply p50 ms", func(c *Connect) *Stat { return c.SynToReplyP50US }, 1e3, "%.3f"},
		{"SYN to reply p99 ms", func(c *Connect) *Stat { return c.SynToReplyP99US }, 1e3, "%.3f"},
		{"SYN to reply mean ms", func(c *Connect) *Stat { return c.SynToReplyMeanUS }, 1e3, "%.3f"},
	} {
		row := []string{f.name}
		var medians [2]*float64
		for i, c := range []*Connect{base, hold} {
			var st *Stat
			if c != nil {
				st = f.get(c)
			}
			if st == nil {
				row = append(row, "-")
				continue
			}
			row = append(row, statCell(*st, f.div, f.format, f.name == "conn/s"))
			if len(st.Rounds) > 0 {
				medians[i] = &st.Median
			}
		}
		ratio := "-"
		if medians[0] != nil && medians[1] != nil && *medians[0] > 0 {
			ratio = fmt.Sprintf("%.2f", *medians[1] / *medians[0])
		}
		if f.name == "conn/s" && h.ConnPerSecondRatio != nil {
			ratio = ratioCell(Ratio{Value: h.ConnPerSecondRatio, Rounds: h.ConnPerSecondRatioRounds})
		}
		rows = append(rows, append(row, ratio))
	}
	t.blank()
	t.table(rows)
	if len(h.Counters) > 0 {
		var counters map[string]json.RawMessage
		if err := json.Unmarshal(h.Counters, &counters); err != nil {
			t.printf("\nhold counters: %s\n", h.Counters)
			return
		}
		names := make([]string, 0, len(counters))
		for n := range counters {
			names = append(names, n)
		}
		slices.Sort(names)
		parts := make([]string, len(names))
		for i, n := range names {
			parts[i] = fmt.Sprintf("%s %s", n, counters[n])
		}
		t.printf("\nhold counters (all rounds; %d connections measured): %s\n", h.Connections, strings.Join(parts, ", "))
	}
}

// directions returns the throughput directions that some path ran.
func (s *Summary) directions() []string {
	var ds []string
	for _, d := range directions {
		for _, p := range s.Paths {
			if p.Throughput.get(d) != nil {
				ds = append(ds, d)
				break
			}
		}
	}
	return ds
}

func throughputCell(t *Throughput) string {
	if t == nil {
		return "-"
	}
	return statCell(t.Gbps, 1, "%.1f", false)
}

// statCell is a median and, with more than one round, the range of the
// rounds in parentheses, each divided by div and printed with format;
// thousands groups digits.
func statCell(s Stat, div float64, format string, thousands bool) string {
	if len(s.Rounds) == 0 {
		return "failed"
	}
	f := func(v float64) string {
		out := fmt.Sprintf(format, v/div)
		if thousands {
			out = groupThousands(out)
		}
		return out
	}
	if len(s.Rounds) == 1 {
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Median), f(s.Min), f(s.Max))
}

func ratioCell(r Ratio) string {
	if r.Value == nil {
		return "-"
	}
	out := fmt.Sprintf("%.2f", *r.Value)
	if lo, hi, ok := spread(r.Rounds); ok && len(r.Rounds) > 1 {
		out += fmt.Sprintf(" (%.2f–%.2f)", lo, hi)
	}
	return out
}

func optCell(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.0f", *v)
}

// groupThousands puts commas between groups of three digits of the
// integer part of a number's text.
func groupThousands(s string) string {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return groupThousands(s[:i]) + s[i:]
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// tableWriter prints tables and keeps the first write error.
type tableWriter struct {
	w        io.Writer
	markdown bool
	err      error
}

func (t *tableWriter) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

func (t *tableWriter) blank() { t.printf("\n") }

// table prints rows, the first one the header.
func (t *tableWriter) table(rows [][]string) {
	if t.markdown {
		for i, row := range rows {
			t.printf("| %s |\n", strings.Join(row, " | "))
			if i == 0 {
				t.printf("|%s\n", strings.Repeat("---|", len(row)))
			}
		}
		return
	}
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], len([]rune(cell)))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, cell := range row {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(cell)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-len([]rune(cell))))
			}
		}
		t.printf("%s\n", b.String())
	}
}
