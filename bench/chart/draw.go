package main

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The chart's size and layout, in points.
const (
	chartWidth    = 1100
	chartHeight   = 880
	margin        = 12 // around the panels, and between them
	headerHeight  = 48
	topHeight     = 360
	bottomSplit   = 0.48 // the share of the width for the connection rate
	barWidth      = 22
	labelFontSize = 8
)

// Colors: one per throughput direction, one for the connection rate.
var (
	directionColors = map[string]color.Color{
		"up":   color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		"down": color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
		"both": color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	}
	directionLegend = map[string]string{
		"up":   "up: client to server",
		"down": "down: server to client",
		"both": "both: both ways at once",
	}
	connColor    = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}
	whiskerColor = color.Gray{Y: 0x20}
)

var sansFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

// Draw writes the chart of s as SVG: throughput per path and direction
// on top, the connection rate per path (with its p99 latency) and the
// tracked ratios below. Bars are medians; whiskers span the rounds.
func Draw(w io.Writer, s Summary) error {
	plot.DefaultFont = sansFont
	plotter.DefaultFont = sansFont

	canvas := vgsvg.New(chartWidth, chartHeight)
	dc := draw.New(canvas)
	dc.FillPolygon(color.White, []vg.Point{{X: 0, Y: 0}, {X: chartWidth, Y: 0}, {X: chartWidth, Y: chartHeight}, {X: 0, Y: chartHeight}})

	header(dc, s)
	top := draw.Crop(dc, margin, -margin, chartHeight-headerHeight-topHeight, -headerHeight)
	bottom := draw.Crop(dc, margin, -margin, margin, -(headerHeight + topHeight + margin))
	left := draw.Crop(bottom, 0, -(chartWidth-2*margin)*(1-bottomSplit), 0, 0)
	right := draw.Crop(bottom, (chartWidth-2*margin)*bottomSplit+margin, 0, 0, 0)

	for _, panel := range []struct {
		c    draw.Canvas
		plot func(Summary) (*plot.Plot, error)
	}{{top, throughputPlot}, {left, connectPlot}, {right, ratioPlot}} {
		p, err := panel.plot(s)
		if err != nil {
			return err
		}
		p.Draw(panel.c)
	}
	var buf bytes.Buffer
	if _, err := canvas.WriteTo(&buf); err != nil {
		return err
	}
	// Text is placed with Liberation Sans' metrics; Arial has the same, and
	// a viewer without either still gets a sans-serif face.
	out := bytes.ReplaceAll(buf.Bytes(), []byte("font-family:Liberation Sans;"), []byte(svgFontFamily))
	_, err := w.Write(out)
	return err
}

const svgFontFamily = "font-family:'Liberation Sans',Arial,Helvetica,sans-serif;"

// header writes the title and what the run was.
func header(dc draw.Canvas, s Summary) {
	title := "Transport Converter benchmark: every path measured with `converter bench`"
	var sub []string
	if m := s.Meta; m != nil {
		sub = append(sub, fmt.Sprintf("%d interleaved round(s); throughput: %s × %d stream(s) per run; connection rate: %s at concurrency %d, 64 B each way",
			m.Rounds, m.Bytes, m.Streams, m.Duration, m.Concurrency))
		sub = append(sub, fmt.Sprintf("%s · Linux %s · %d CPUs · bars: medians; whiskers: min–max of the rounds", m.Date, m.Kernel, m.CPUs))
	}
	sty := textStyle(13)
	sty.XAlign = draw.XCenter
	sty.YAlign = draw.YTop
	dc.FillText(sty, vg.Point{X: chartWidth / 2, Y: chartHeight - 6}, title)
	sty = textStyle(9)
	sty.XAlign = draw.XCenter
	sty.YAlign = draw.YTop
	dc.FillText(sty, vg.Point{X: chartWidth / 2, Y: chartHeight - 22}, strings.Join(sub, "\n"))
}

func textStyle(size vg.Length) text.Style {
	return text.Style{Color: color.Black, Font: font.From(sansFont, size), Handler: plot.DefaultTextHandler}
}

// throughputPlot: grouped bars, one group per path, one bar per direction.
func throughputPlot(s Summary) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Throughput (Gbit/s); \"both\" counts both ways of one run"
	p.Y.Label.Text = "Gbit/s"
	p.Legend.Top = true
	p.Legend.Left = false
	dirs := s.directions()
	// The paths measured for throughput (the SYN hold's is not).
	var (
		paths []Path
		names []string
	)
	for _, path := range s.Paths {
		if !path.Throughput.empty() {
			paths = append(paths, path)
			names = append(names, path.Label)
		}
	}
	p.NominalX(names...)
	for k, d := range dirs {
		off := vg.Length(float64(k)-float64(len(dirs)-1)/2) * (barWidth + 2)
		var (
			vals          = make(plotter.Values, len(paths))
			ws            = whiskers{offset: off}
			labels        plotter.XYLabels
			labelSpacing  = vg.Points(3)
			haveAnyValues bool
		)
		for i, path := range paths {
			t := path.Throughput.get(d)
			if t == nil {
				continue
			}
			if len(t.Gbps.Rounds) == 0 {
				labels.XYs = append(labels.XYs, plotter.XY{X: float64(i), Y: 0})
				labels.Labels = append(labels.Labels, "failed")
				continue
			}
			haveAnyValues = true
			vals[i] = t.Gbps.Median
			ws.add(float64(i), t.Gbps.Min, t.Gbps.Max)
			labels.XYs = append(labels.XYs, plotter.XY{X: float64(i), Y: t.Gbps.Max})
			labels.Labels = append(labels.Labels, fmt.Sprintf("%.1f", t.Gbps.Median))
		}
		bars, err := plotter.NewBarChart(vals, barWidth)
		if err != nil {
			return nil, err
		}
		bars.Offset = off
		bars.Color = directionColors[d]
		bars.LineStyle.Width = 0
		p.Add(bars)
		p.Legend.Add(directionLegend[d], bars)
		if haveAnyValues {
			p.Add(&ws)
		}
		if err := addLabels(p, labels, vg.Point{X: off, Y: labelSpacing}); err != nil {
			return nil, err
		}
	}
	p.Y.Min = 0
	// Room for the legend above the bars.
	p.Y.Max *= 1.25
	p.Y.Tick.Marker = plainTicks{}
	return p, nil
}

// connectPlot: one bar per path, labelled with the median and the p99
// latency, and, where it was measured (the converter's MPTCP cases), the
// converter's median SYN-to-reply p50.
func connectPlot(s Summary) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Connection rate (conn/s), p99 latency; S→R: the converter's SYN-to-reply p50"
	var (
		names  []string
		vals   plotter.Values
		ws     whiskers
		labels plotter.XYLabels
	)
	for _, path := range s.Paths {
		c := path.Connect
		if c == nil {
			continue
		}
		x := float64(len(names))
		// On two lines: eight paths share the panel's width.
		names = append(names, connectLabel(path.Name))
		if len(c.PerSecond.Rounds) == 0 {
			vals = append(vals, 0)
			labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: 0})
			labels.Labels = append(labels.Labels, "failed")
			continue
		}
		vals = append(vals, c.PerSecond.Median)
		ws.add(x, c.PerSecond.Min, c.PerSecond.Max)
		labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: c.PerSecond.Max})
		label := fmt.Sprintf("%s\np99 %.1f ms", groupThousands(fmt.Sprintf("%.0f", c.PerSecond.Median)), c.P99US.Median/1e3)
		if st := c.SynToReplyP50US; st != nil && len(st.Rounds) > 0 {
			label += fmt.Sprintf("\nS→R %.2f ms", st.Median/1e3)
		}
		labels.Labels = append(labels.Labels, label)
	}
	if len(vals) == 0 {
		p.Title.Text += ": not measured"
		return p, nil
	}
	p.NominalX(names...)
	bars, err := plotter.NewBarChart(vals, 1.5*barWidth)
	if err != nil {
		return nil, err
	}
	bars.Color = connColor
	bars.LineStyle.Width = 0
	p.Add(bars, &ws)
	if err := addLabels(p, labels, vg.Point{Y: vg.Points(3)}); err != nil {
		return nil, err
	}
	p.Y.Min = 0
	padTop(p)
	p.Y.Tick.Marker = plainTicks{}
	return p, nil
}

// ratioPlot: the tracked ratios as horizontal bars, with a line at 1 and
// the median in each bar's name. A round's ratio far off the scale is
// clipped at its edge, where its value is written.
func ratioPlot(s Summary) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Ratios of medians (whiskers: the ratio within each round)"
	var (
		names  []string
		colors []color.Color
		vals   plotter.Values
		ws     = whiskers{horizontal: true}
		his    []float64
		top    = 1.0 // the largest median
	)
	// Bars go bottom up: list them in reverse so that the first ratio is
	// on top.
	for i := len(s.Ratios) - 1; i >= 0; i-- {
		r := s.Ratios[i]
		if r.Value == nil {
			continue
		}
		y := float64(len(names))
		what := "conn/s"
		clr := color.Color(connColor)
		if r.Metric == metricThroughput {
			what, clr = r.Direction, directionColors[r.Direction]
		}
		names = append(names, fmt.Sprintf("%s / %s, %s: %.2f", shortLabel(r.Path), shortLabel(r.Baseline), what, *r.Value))
		colors = append(colors, clr)
		vals = append(vals, *r.Value)
		top = max(top, *r.Value)
		if lo, hi, ok := spread(r.Rounds); ok {
			ws.add(y, lo, hi)
			his = append(his, hi)
		}
	}
	if len(vals) == 0 {
		p.Title.Text = "Ratios: not measured"
		return p, nil
	}
	// The scale holds every median and the rounds up to 2.5 times the
	// largest median; rounds beyond are clipped.
	right := top
	for _, hi := range his {
		if hi <= 2.5*top {
			right = max(right, hi)
		}
	}
	right = niceCeil(right * 1.08)
	ws.clip = right

	p.NominalY(names...)
	// One bar chart per bar, for its color.
	for i, v := range vals {
		one := make(plotter.Values, len(vals))
		one[i] = v
		bars, err := plotter.NewBarChart(one, 11)
		if err != nil {
			return nil, err
		}
		bars.Horizontal = true
		bars.Color = colors[i]
		bars.LineStyle.Width = 0
		p.Add(bars)
	}
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(len(vals)) - 0.5}})
	if err != nil {
		return nil, err
	}
	one.LineStyle.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
	one.LineStyle.Color = color.Gray{Y: 0x60}
	p.Add(one, &ws)
	p.X.Min = 0
	p.X.Max = right
	p.X.Tick.Marker = ratioTicks{}
	return p, nil
}

// plainTicks are plot's default ticks, labelled without trailing zeros
// and with thousands grouped.
type plainTicks struct{}

// Ticks implements plot.Ticker.
func (plainTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label != "" {
			ticks[i].Label = groupThousands(strconv.FormatFloat(t.Value, 'f', -1, 64))
		}
	}
	return ticks
}

// niceCeil rounds v up to a multiple of 0.25, 0.5 or 1 as it grows.
func niceCeil(v float64) float64 {
	step := 0.25
	switch {
	case v > 10:
		step = 2
	case v > 5:
		step = 1
	case v > 3:
		step = 0.5
	}
	return math.Ceil(v/step) * step
}

// ratioTicks marks a ratio axis at steps that keep about a dozen ticks,
// labelling every other one.
type ratioTicks struct{}

// Ticks implements plot.Ticker.
func (ratioTicks) Ticks(lo, hi float64) []plot.Tick {
	step := 0.25
	for _, s := range []float64{0.25, 0.5, 1, 2, 5, 10, 20, 50} {
		step = s
		if (hi-lo)/s <= 14 {
			break
		}
	}
	var ticks []plot.Tick
	for i := 0; float64(i)*step <= hi+1e-9; i++ {
		v := float64(i) * step
		if v < lo-1e-9 {
			continue
		}
		t := plot.Tick{Value: v}
		if i%2 == 0 {
			t.Label = fmt.Sprintf("%g", v)
		}
		ticks = append(ticks, t)
	}
	return ticks
}

// addLabels puts labels centred above points, shifted by off.
func addLabels(p *plot.Plot, labels plotter.XYLabels, off vg.Point) error {
	if len(labels.XYs) == 0 {
		return nil
	}
	lab, err := newLabels(labels, off)
	if err != nil {
		return err
	}
	p.Add(lab)
	return nil
}

func newLabels(labels plotter.XYLabels, off vg.Point) (*plotter.Labels, error) {
	lab, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	lab.Offset = off
	for i := range lab.TextStyle {
		lab.TextStyle[i] = textStyle(labelFontSize)
		lab.TextStyle[i].XAlign = draw.XCenter
		lab.TextStyle[i].YAlign = draw.YBottom
	}
	return lab, nil
}

// padTop leaves room above the highest whisker for its label.
func padTop(p *plot.Plot) {
	p.Y.Max *= 1.12
}

// shortLabel names a path in the narrow panels.
func shortLabel(name string) string {
	switch name {
	case "direct-tcp":
		return "direct TCP"
	case "direct-mptcp":
		return "direct MPTCP"
	case "haproxy":
		return "HAProxy"
	case "min-tcp":
		return "min. TCP"
	case "min-mptcp":
		return "min. MPTCP"
	case "conv-tcp":
		return "conv. TCP"
	case "conv-mptcp":
		return "conv. MPTCP"
	case "conv-mptcp-hold":
		return "conv. MPTCP hold"
	}
	return name
}

// connectLabel names a path under the connection rate's bars, on two
// lines.
func connectLabel(name string) string {
	if name == "conv-mptcp-hold" {
		return "conv. MPTCP\nSYN hold"
	}
	return strings.Replace(shortLabel(name), " ", "\n", 1)
}

// whiskers draws a line from lo to hi with caps at both ends, at each
// bar's position (x, or y when horizontal), shifted by offset like the
// bars.
type whiskers struct {
	pos, lo, hi []float64
	offset      vg.Length
	horizontal  bool
	// clip, when set, is the end of a horizontal scale: a whisker past it
	// stops there, without its cap, and its value is written there.
	clip float64
}

func (w *whiskers) add(pos, lo, hi float64) {
	w.pos, w.lo, w.hi = append(w.pos, pos), append(w.lo, lo), append(w.hi, hi)
}

// Plot implements plot.Plotter.
func (w *whiskers) Plot(c draw.Canvas, p *plot.Plot) {
	trX, trY := p.Transforms(&c)
	sty := draw.LineStyle{Color: whiskerColor, Width: vg.Points(1)}
	const capHalf = 4
	for i := range w.pos {
		if w.lo[i] == w.hi[i] {
			continue
		}
		if w.horizontal {
			y := trY(w.pos[i]) + w.offset
			x0, x1 := trX(w.lo[i]), trX(w.hi[i])
			clipped := w.clip > 0 && w.hi[i] > w.clip
			if clipped {
				x1 = trX(w.clip)
			}
			c.StrokeLine2(sty, x0, y, x1, y)
			c.StrokeLine2(sty, x0, y-capHalf, x0, y+capHalf)
			if !clipped {
				c.StrokeLine2(sty, x1, y-capHalf, x1, y+capHalf)
				continue
			}
			note := textStyle(labelFontSize)
			note.XAlign, note.YAlign = draw.XRight, draw.YBottom
			c.FillText(note, vg.Point{X: x1, Y: y + 2}, fmt.Sprintf("up to %.2f →", w.hi[i]))
			continue
		}
		x := trX(w.pos[i]) + w.offset
		y0, y1 := trY(w.lo[i]), trY(w.hi[i])
		c.StrokeLine2(sty, x, y0, x, y1)
		c.StrokeLine2(sty, x-capHalf, y0, x+capHalf, y0)
		c.StrokeLine2(sty, x-capHalf, y1, x+capHalf, y1)
	}
}

// DataRange implements plot.DataRanger, so that the axes hold the whiskers.
func (w *whiskers) DataRange() (xmin, xmax, ymin, ymax float64) {
	xmin, ymin = math.Inf(1), math.Inf(1)
	xmax, ymax = math.Inf(-1), math.Inf(-1)
	for i := range w.pos {
		if w.horizontal {
			hi := w.hi[i]
			if w.clip > 0 {
				hi = min(hi, w.clip)
			}
			ymin, ymax = min(ymin, w.pos[i]), max(ymax, w.pos[i])
			xmin, xmax = min(xmin, w.lo[i]), max(xmax, hi)
		} else {
			xmin, xmax = min(xmin, w.pos[i]), max(xmax, w.pos[i])
			ymin, ymax = min(ymin, w.lo[i]), max(ymax, w.hi[i])
		}
	}
	return xmin, xmax, ymin, ymax
}
