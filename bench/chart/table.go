package main

import (
	"fmt"
	"io"
	"strings"
)

// WriteTables prints the summary as three tables: every path's medians
// with the range of the rounds, the tracked ratios, and the checks
// (subflows, joins, errors, failed runs). markdown selects Markdown
// tables, as the README quotes them; otherwise columns are aligned.
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
	return t.err
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
