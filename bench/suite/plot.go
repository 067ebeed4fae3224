package main

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// plotPanel is one server's run in a side-by-side latency plot.
type plotPanel struct {
	Title   string     // e.g. "baton · 0 failed"
	Samples []sample   // every request of the run
	Marks   []plotMark // moments to mark with a vertical line (a HUP, an upgrade, a kill)
	Spans   []plotSpan // optional shaded spans (e.g. a reload from start to end); may be empty
}

// plotMark is one moment of a run, drawn as a dashed vertical line.
type plotMark struct {
	At    time.Duration // since the load started
	Label string        // short, e.g. "HUP", "USR2", "kill -9"; may be ""
}

// plotSpan is a stretch of a run, drawn as a shaded band.
type plotSpan struct{ From, To time.Duration }

// Sizes of the picture, in pixels at plotDPI. A panel is as wide as it
// is because 20,000 points over a minute or so still show their spread
// at 800 px; the height keeps four or five decades of latency apart.
const (
	plotDPI        = 96
	plotPanelWidth = 800 // px per panel
	plotHeight     = 560 // px
	plotFloorMs    = 0.1 // latencies below this are drawn at it: log(0) is undefined
)

// Colours, chosen so that thousands of overlapping successes read as a
// density while a single failure still stands out.
var (
	plotOKColor   = color.NRGBA{R: 31, G: 119, B: 180, A: 70}
	plotFailColor = color.NRGBA{R: 214, G: 39, B: 40, A: 255}
	plotMarkColor = color.NRGBA{R: 40, G: 40, B: 40, A: 220}
	plotSpanColor = color.NRGBA{R: 255, G: 190, B: 60, A: 60}
	plotGridColor = color.NRGBA{R: 0, G: 0, B: 0, A: 30}
)

// px converts a size in pixels to gonum's length unit at plotDPI, so the
// sizes above can be thought of in the pixels the PNG ends up with.
func px(n float64) vg.Length { return vg.Length(n) * vg.Inch / plotDPI }

// writeLatencyPlot draws every request of each panel as a point: x = its start
// time in seconds since the load started, y = its latency in ms on a log scale.
// Panels sit side by side in one PNG and share the y range, so they compare
// at a glance; failed requests are drawn in a distinct colour/shape and
// counted in a legend entry; marks are vertical lines.
func writeLatencyPlot(path, title string, panels []plotPanel) error {
	if len(panels) == 0 {
		return fmt.Errorf("latency plot %s: no panels", path)
	}
	xr, yr := sharedRanges(panels)
	row := make([]*plot.Plot, len(panels))
	for i, p := range panels {
		row[i] = panelPlot(p, xr, yr)
	}

	w, h := px(float64(plotPanelWidth*len(panels))), px(plotHeight)
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(plotDPI))
	dc := draw.New(img)
	top := drawSuperTitle(dc, title)

	// plot.Align sizes every panel's data area alike, so equal times and
	// latencies are equal distances in all of them.
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadTop: top, PadBottom: px(8), PadLeft: px(8), PadRight: px(16), PadX: px(24)}
	cells := plot.Align([][]*plot.Plot{row}, tiles, dc)
	for i, p := range row {
		p.Draw(withYLabel(p, cells[0][i], plotYLabel))
	}
	return savePNG(path, img)
}

// plotRange is an axis range, shared by all panels.
type plotRange struct{ Min, Max float64 }

// sharedRanges finds the x range (seconds) and y range (ms) that hold every
// panel's samples, marks and spans, so that all panels use one scale.
// The y range is widened to whole decades at the bottom and given headroom
// at the top, where the legend and the marks' labels sit.
func sharedRanges(panels []plotPanel) (x, y plotRange) {
	x = plotRange{0, 1}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range panels {
		for _, s := range p.Samples {
			x.Max = max(x.Max, s.Start.Seconds())
			ms := latencyMs(s.Latency)
			lo, hi = min(lo, ms), max(hi, ms)
		}
		for _, m := range p.Marks {
			x.Max = max(x.Max, m.At.Seconds())
		}
		for _, s := range p.Spans {
			x.Max = max(x.Max, s.To.Seconds())
		}
	}
	if math.IsInf(lo, 1) { // no samples at all: any sensible range
		lo, hi = 1, 100
	}
	y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	y.Max = max(math.Pow(10, math.Ceil(math.Log10(hi))), 4*hi)
	return x, y
}

// latencyMs is d in milliseconds, raised to plotFloorMs so that it can go
// on a log axis.
func latencyMs(d time.Duration) float64 {
	return max(float64(d)/float64(time.Millisecond), plotFloorMs)
}

// panelPlot builds one panel on the shared ranges. The order of Add is the
// drawing order: shading and grid under the points, failures over the
// successes so that none hides under the cloud, marks on top.
func panelPlot(p plotPanel, xr, yr plotRange) *plot.Plot {
	pl := plot.New()
	// The title is never empty, as gonum drops its padding with it, and
	// that padding is the room above the data area for the marks' labels.
	pl.Title.Text = cmp.Or(p.Title, " ")
	pl.Title.TextStyle.Font.Size = 14
	pl.Title.Padding = px(4) + plotMarkRows*markTextStyle(pl).Rectangle("Mg").Size().Y
	styleAxes(pl)

	ok, failed := splitSamples(p.Samples)
	pl.Add(spanShades(p.Spans), gridLines())
	okDots := scatter(ok, draw.GlyphStyle{Color: plotOKColor, Radius: px(1.6), Shape: draw.CircleGlyph{}})
	failCrosses := scatter(failed, draw.GlyphStyle{Color: plotFailColor, Radius: px(4), Shape: draw.CrossGlyph{}})
	pl.Add(okDots, failCrosses, markLines(p.Marks))
	pl.Add(panelLegend(pl, p.Samples, len(ok), len(failed)))

	// Fixed after Add, which would otherwise grow the axes to the data.
	pl.X.Min, pl.X.Max = xr.Min, xr.Max
	pl.Y.Min, pl.Y.Max = yr.Min, yr.Max
	return pl
}

// styleAxes sets the axes' labels, the log scale and font sizes that stay
// readable when the PNG is shown shrunk in a report.
func styleAxes(pl *plot.Plot) {
	pl.X.Label.Text = "time since the load started (s)"
	// No pl.Y.Label: see withYLabel.
	pl.X.Tick.Marker = secondTicks{}
	pl.Y.Scale = plot.LogScale{}
	pl.Y.Tick.Marker = logMsTicks{}
	for _, a := range []*plot.Axis{&pl.X, &pl.Y} {
		a.Label.TextStyle.Font.Size = 12
		a.Tick.Label.Font.Size = 11
	}
}

// plotYLabel names the y axis.
const plotYLabel = "latency (ms, log scale)"

// withYLabel writes the y axis' label, turned upright, at the left of a
// panel's cell and returns the rest of the cell for the plot. gonum would
// draw it, but on a log axis it reserves the label's space around the
// linear midpoint of the range, near the top, which pushes the data area
// far down. Every panel loses the same width, so their data areas stay
// alike.
func withYLabel(pl *plot.Plot, cell draw.Canvas, label string) draw.Canvas {
	sty := pl.X.Label.TextStyle // the same font as the x label
	sty.Rotation = math.Pi / 2
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YBottom
	h := sty.Height(label)
	rest := draw.Crop(cell, h+px(4), 0, 0, 0)
	data := pl.DataCanvas(rest)
	mid := data.Center().Y
	cell.FillText(sty, vg.Point{X: cell.Min.X + h - sty.FontExtents().Descent, Y: mid}, label)
	return rest
}

// logMsTicks labels each decade of a log axis (0.1, 1, 10, 100, 1000 …)
// with unlabelled minor ticks between. plot.LogTicks would do, but it
// truncates log10 of the minimum towards zero, so below 1 ms it starts a
// decade too high and the 0.1 ms floor would get no label.
type logMsTicks struct{}

// Ticks implements plot.Ticker.
func (logMsTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		decade := math.Pow(10, e)
		ts = append(ts, plot.Tick{Value: decade, Label: strconv.FormatFloat(decade, 'f', -1, 64)})
		for m := 2.0; m < 10 && m*decade <= hi; m++ {
			ts = append(ts, plot.Tick{Value: m * decade})
		}
	}
	return ts
}

// secondTicks puts about ten labelled ticks on the time axis at a round
// step (1, 2 or 5 × 10ⁿ s) with a minor tick between each, labelled
// without trailing zeros: gonum's default gives three or four ticks with
// two decimals ("25.00"), too coarse to place a HUP on a minute's run.
type secondTicks struct{}

// Ticks implements plot.Ticker.
func (secondTicks) Ticks(lo, hi float64) []plot.Tick {
	step := roundStep((hi - lo) / 10)
	half := step / 2
	// Decimals that the step needs; multiples of 0.1 are not exact in
	// floating point, so labels are rounded to these and the end is given
	// a little slack (else 0.6000000000000001 and a lost last tick).
	decimals := max(0, int(-math.Floor(math.Log10(step))))
	var ts []plot.Tick
	for i := math.Ceil(lo / half); i*half <= hi+half*1e-9; i++ {
		t := plot.Tick{Value: i * half}
		if math.Mod(i, 2) == 0 {
			t.Label = trimZeros(strconv.FormatFloat(t.Value, 'f', decimals, 64))
		}
		ts = append(ts, t)
	}
	return ts
}

// trimZeros drops the trailing zeros of a decimal number: "1.50" → "1.5",
// "2.0" → "2".
func trimZeros(s string) string {
	if !strings.Contains(s, ".") {
		return s
	}
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

// roundStep is the smallest of 1, 2 or 5 × 10ⁿ that is at least x.
func roundStep(x float64) float64 {
	if x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

// splitSamples turns a panel's samples into points, successes and failures
// apart so each gets its own style and count.
func splitSamples(ss []sample) (ok, failed plotter.XYs) {
	for _, s := range ss {
		pt := plotter.XY{X: s.Start.Seconds(), Y: latencyMs(s.Latency)}
		if s.Kind == OK {
			ok = append(ok, pt)
		} else {
			failed = append(failed, pt)
		}
	}
	return ok, failed
}

// failedLabel counts failures by kind, most common first, so the legend
// says at once what went wrong: "failed: 12 (refused 10, reset 2)".
func failedLabel(ss []sample, n int) string {
	if n == 0 {
		return "failed: 0"
	}
	var counts [numKinds]int
	for _, s := range ss {
		if s.Kind != OK && s.Kind >= 0 && s.Kind < numKinds {
			counts[s.Kind]++
		}
	}
	kinds := make([]Kind, 0, numKinds)
	for k := OK + 1; k < numKinds; k++ {
		if counts[k] > 0 {
			kinds = append(kinds, k)
		}
	}
	slices.SortStableFunc(kinds, func(a, b Kind) int { return cmp.Compare(counts[b], counts[a]) })
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s %d", k, counts[k])
	}
	return fmt.Sprintf("failed: %d (%s)", n, strings.Join(parts, ", "))
}

// scatter wraps plotter.Scatter for points that are already valid: it
// skips plotter.NewScatter's copy and checks, which cost time at 20,000
// points and would reject an empty set (a legend entry is still wanted).
func scatter(pts plotter.XYs, g draw.GlyphStyle) *plotter.Scatter {
	return &plotter.Scatter{XYs: pts, GlyphStyle: g}
}

// gridLines is a faint grid at the labelled ticks only, to read values
// across a wide panel without hiding the points.
func gridLines() *plotter.Grid {
	g := plotter.NewGrid()
	g.Vertical.Color, g.Horizontal.Color = plotGridColor, plotGridColor
	g.Vertical.Width, g.Horizontal.Width = px(1), px(1)
	return g
}

// spanShades draws each span as a band over the full height.
type spanShades []plotSpan

// Plot implements plot.Plotter.
func (ss spanShades) Plot(c draw.Canvas, pl *plot.Plot) {
	trX, _ := pl.Transforms(&c)
	c.SetColor(plotSpanColor)
	for _, s := range ss {
		x0, x1 := trX(s.From.Seconds()), trX(s.To.Seconds())
		x0, x1 = max(x0, c.Min.X), min(x1, c.Max.X)
		if x1 <= x0 { // a zero-length span still deserves a sliver
			x1 = x0 + px(2)
		}
		r := vg.Rectangle{Min: vg.Point{X: x0, Y: c.Min.Y}, Max: vg.Point{X: x1, Y: c.Max.Y}}
		c.Fill(r.Path())
	}
}

// plotMarkRows is how many rows of mark labels there are above a panel's
// data area: two let a HUP and a kill a second apart both be read.
const plotMarkRows = 2

// markLines draws each mark as a dashed line over the full height and on
// up into the rows above the data area, where its label hangs beside it
// like a flag. Labels go above the data so that neither the points nor the
// legend hide them.
type markLines []plotMark

// Plot implements plot.Plotter.
func (ms markLines) Plot(c draw.Canvas, pl *plot.Plot) {
	trX, _ := pl.Transforms(&c)
	line := draw.LineStyle{Color: plotMarkColor, Width: px(1.5), Dashes: []vg.Length{px(6), px(4)}}
	sty := markTextStyle(pl)
	rowH := sty.Rectangle("Mg").Size().Y
	var flags []markFlag
	for _, f := range layoutMarks(ms, trX, sty, c) {
		top := c.Max.Y
		if f.label != "" {
			top += px(2) + vg.Length(f.row+1)*rowH
			flags = append(flags, f)
		}
		c.StrokeLine2(line, f.x, c.Min.Y, f.x, top)
	}
	// Labels after all lines, on a white box, so a later mark's line
	// rising to a higher row does not run through an earlier label.
	for _, f := range flags {
		at := vg.Point{X: f.from, Y: c.Max.Y + px(2) + vg.Length(f.row)*rowH}
		labelBackdrop(c, sty, at, f.label)
		c.FillText(sty, at, f.label)
	}
}

// markFlag is where one mark and its label go on the canvas.
type markFlag struct {
	x        vg.Length // the line
	from, to vg.Length // the label's horizontal extent
	row      int       // 0 is the row next to the data area
	label    string
}

// layoutMarks places the marks that fall in the data area. A label hangs
// right of its line, or left of it where it would pass the right edge
// (into the next panel), and takes the lowest row where it clears the
// labels before it. Where no row is free (three marks within a few
// pixels) it is joined to the label that ends soonest, "HUP, kill -9",
// rather than printed over it.
func layoutMarks(ms []plotMark, trX func(float64) vg.Length, sty text.Style, c draw.Canvas) []markFlag {
	sorted := slices.Clone(ms)
	slices.SortStableFunc(sorted, func(a, b plotMark) int { return cmp.Compare(a.At, b.At) })
	var last [plotMarkRows]int // index in fs of each row's last label; -1 for none
	for r := range last {
		last[r] = -1
	}
	var fs []markFlag
	for _, m := range sorted {
		f := markFlag{x: trX(m.At.Seconds()), label: m.Label}
		if f.x < c.Min.X || f.x > c.Max.X {
			continue
		}
		if f.label == "" {
			fs = append(fs, f)
			continue
		}
		f.from, f.to = placeLabel(f.x, f.label, sty, c)
		r, free := pickRow(fs, last[:], f.from-px(4))
		if !free {
			g := &fs[last[r]]
			g.label += ", " + f.label
			g.from, g.to = placeLabel(g.x, g.label, sty, c)
			f.label = ""
		} else {
			f.row, last[r] = r, len(fs)
		}
		fs = append(fs, f)
	}
	return fs
}

// placeLabel is the horizontal extent of the label of a line at x: to
// its right, or to its left where it would pass the data area's edge.
func placeLabel(x vg.Length, label string, sty text.Style, c draw.Canvas) (from, to vg.Length) {
	w := sty.Rectangle(label).Size().X
	if x+px(3)+w > c.Max.X {
		return x - px(3) - w, x - px(3)
	}
	return x + px(3), x + px(3) + w
}

// pickRow is the first row whose last label ends before from (free), else
// the row whose last label ends soonest.
func pickRow(fs []markFlag, last []int, from vg.Length) (row int, free bool) {
	for r, i := range last {
		if i < 0 || fs[i].to < from {
			return r, true
		}
		if fs[i].to < fs[last[row]].to {
			row = r
		}
	}
	return row, false
}

// labelBackdrop whitens the box a mark's label will take, so that a
// neighbouring mark's line or the points do not run through the text.
func labelBackdrop(c draw.Canvas, sty text.Style, at vg.Point, label string) {
	r := sty.Rectangle(label).Add(at)
	r.Min.X, r.Max.X = r.Min.X-px(2), r.Max.X+px(2)
	c.SetColor(color.NRGBA{R: 255, G: 255, B: 255, A: 210})
	c.Fill(r.Path())
}

// markTextStyle is the plot's tick font, anchored at the label's bottom
// left, as labels are placed by their left edge and row.
func markTextStyle(pl *plot.Plot) text.Style {
	sty := pl.X.Tick.Label
	sty.Color = plotMarkColor
	sty.Font.Size = 11
	sty.XAlign, sty.YAlign = draw.XLeft, draw.YBottom
	sty.Rotation = 0
	return sty
}

// opaque is c without transparency.
func opaque(c color.NRGBA) color.NRGBA { c.A = 255; return c }

// panelLegend makes the legend: the two kinds of point with their counts.
// The legend's dot is opaque and larger than the plotted ones: a faint
// 1.6 px dot, right for a cloud of thousands, would be hard to see alone.
func panelLegend(pl *plot.Plot, ss []sample, nOK, nFailed int) *legendBox {
	lg := plot.NewLegend()
	lg.TextStyle.Font.Size = 11
	lg.Top = true
	lg.Padding = px(2)
	okThumb := scatter(nil, draw.GlyphStyle{Color: opaque(plotOKColor), Radius: px(3.5), Shape: draw.CircleGlyph{}})
	failThumb := scatter(nil, draw.GlyphStyle{Color: plotFailColor, Radius: px(4.5), Shape: draw.CrossGlyph{}})
	lg.Add(fmt.Sprintf("ok: %d", nOK), okThumb)
	lg.Add(failedLabel(ss, nFailed), failThumb)
	return &legendBox{lg}
}

// legendBox draws a legend at the top right inside the data area, on a
// near-opaque box so its text stays readable over a dense cloud of
// points. It is a plotter rather than the plot's own Legend because
// Plot.Draw places that one on a larger area than the data canvas (above
// it, with a title), and Legend.Rectangle misplaces a right-hand legend,
// so the box could not be put under it reliably.
type legendBox struct{ plot.Legend }

// Plot implements plot.Plotter.
func (l *legendBox) Plot(c draw.Canvas, _ *plot.Plot) {
	m := px(8)   // from the data area's edges
	pad := px(6) // around the text, inside the box
	inner := draw.Crop(c, 0, -(m + pad), 0, -(m + pad))
	size := l.Rectangle(inner).Size()
	r := vg.Rectangle{
		Min: vg.Point{X: inner.Max.X - size.X - pad, Y: inner.Max.Y - size.Y - pad},
		Max: vg.Point{X: inner.Max.X + pad, Y: inner.Max.Y + pad},
	}
	c.SetColor(color.NRGBA{R: 255, G: 255, B: 255, A: 225})
	c.Fill(r.Path())
	c.SetLineStyle(draw.LineStyle{Color: color.NRGBA{A: 60}, Width: px(1)})
	c.Stroke(r.Path())
	l.Draw(inner)
}

// drawSuperTitle writes the overall title centred across the top of the
// picture and returns the height it took, for the panels to start below.
func drawSuperTitle(dc draw.Canvas, title string) vg.Length {
	if title == "" {
		return px(8)
	}
	sty := plot.New().Title.TextStyle
	sty.Font.Size = 17
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YTop
	pad := px(8)
	dc.FillText(sty, vg.Point{X: dc.Center().X, Y: dc.Max.Y - pad}, title)
	return sty.Rectangle(title).Size().Y + 2*pad
}

// savePNG encodes the canvas into path, reporting a failed close too: a
// short write can show up only there.
func savePNG(path string, img *vgimg.Canvas) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("latency plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("latency plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("latency plot %s: %w", path, err)
	}
	return nil
}
