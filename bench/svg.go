package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
)

// Chart geometry, in SVG user units.
const (
	chartW, chartH               = 780, 440
	marginL, marginR             = 72, 170
	marginT, marginB             = 44, 56
	plotW, plotH                 = chartW - marginL - marginR, chartH - marginT - marginB
	logYWhenRangeExceeds float64 = 8
)

var palette = []string{"#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"}

// chart draws one line per system: x = concurrency on a log2 axis, y =
// f(medians). With allowLogY the y axis turns logarithmic when the values
// span more than logYWhenRangeExceeds×, so that a fast system's line is
// not flattened against zero.
func (s *summary) chart(title, yLabel string, allowLogY bool, f func(medians) float64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", marginL, esc(title))

	lo, hi := math.Inf(1), math.Inf(-1)
	for _, l := range s.systems {
		for _, c := range s.concurrencies {
			if m, ok := s.cells[l][c]; ok {
				v := f(m)
				if v > 0 {
					lo, hi = math.Min(lo, v), math.Max(hi, v)
				}
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 1, 10
	}
	ys := newLinearAxis(hi)
	if allowLogY && hi/lo > logYWhenRangeExceeds {
		ys = newLogAxis(lo, hi)
	}
	xlo, xhi := 1.0, 1.0
	if len(s.concurrencies) > 0 {
		xlo, xhi = float64(s.concurrencies[0]), float64(s.concurrencies[len(s.concurrencies)-1])
	}
	if xhi <= xlo {
		xlo, xhi = xlo/2, xhi*2
	}
	xpos := func(c float64) float64 {
		return marginL + (math.Log2(c)-math.Log2(xlo))/(math.Log2(xhi)-math.Log2(xlo))*plotW
	}

	// Axes and grid.
	fmt.Fprintf(&b, `<g stroke="#ddd">`+"\n")
	for _, t := range ys.ticks {
		y := marginT + plotH - ys.pos(t)*plotH
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`+"\n", marginL, y, marginL+plotW, y)
	}
	for _, c := range s.concurrencies {
		x := xpos(float64(c))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`+"\n", x, marginT, x, marginT+plotH)
	}
	fmt.Fprintf(&b, "</g>\n")
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", marginL, marginT, plotW, plotH)
	for _, t := range ys.ticks {
		y := marginT + plotH - ys.pos(t)*plotH
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", marginL-6, y, formatTick(t))
	}
	for _, c := range s.concurrencies {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", xpos(float64(c)), marginT+plotH+18, c)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">concurrency (log scale)</text>`+"\n", marginL+plotW/2, chartH-12)
	axisNote := ""
	if ys.log {
		axisNote = ", log scale"
	}
	fmt.Fprintf(&b, `<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", marginT+plotH/2, esc(yLabel+axisNote))

	// One line per system, and the legend.
	for i, l := range s.systems {
		color := palette[i%len(palette)]
		width := 2.0
		if s.backendOf[l] == "keystore" {
			width = 3
		}
		dash := "" // plaintext: solid; over TLS: dashed
		if s.tlsOf[l] != "" {
			dash = ` stroke-dasharray="7 4"`
		}
		var pts bytes.Buffer
		var dots bytes.Buffer
		for _, c := range s.concurrencies {
			m, ok := s.cells[l][c]
			if !ok || (ys.log && f(m) <= 0) {
				continue
			}
			x, y := xpos(float64(c)), marginT+plotH-ys.pos(f(m))*plotH
			fmt.Fprintf(&pts, "%.1f,%.1f ", x, y)
			fmt.Fprintf(&dots, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s, concurrency %d: %s</title></circle>`+"\n",
				x, y, color, esc(l), c, strconv.FormatFloat(f(m), 'f', 2, 64))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="%.0f"%s points="%s"/>`+"\n", color, width, dash, bytes.TrimSpace(pts.Bytes()))
		b.Write(dots.Bytes())
		ly := marginT + 10 + i*20
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="%.0f"%s/>`+"\n", chartW-marginR+16, ly, chartW-marginR+40, ly, color, width, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", chartW-marginR+46, ly, esc(l))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// axis maps values to [0, 1] and carries its tick values.
type axis struct {
	log    bool
	lo, hi float64
	ticks  []float64
}

func (a axis) pos(v float64) float64 {
	if a.log {
		return (math.Log10(v) - math.Log10(a.lo)) / (math.Log10(a.hi) - math.Log10(a.lo))
	}
	return (v - a.lo) / (a.hi - a.lo)
}

// newLinearAxis runs from 0 to a round number above hi with 1-2-5 steps.
func newLinearAxis(hi float64) axis {
	if hi <= 0 {
		hi = 1
	}
	raw := hi * 1.05 / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	a := axis{lo: 0, hi: math.Ceil(hi*1.05/step) * step}
	for i := 0; float64(i)*step <= a.hi+step/2; i++ {
		a.ticks = append(a.ticks, math.Round(float64(i)*step/mag*1e6)/1e6*mag)
	}
	return a
}

// newLogAxis spans whole decades around [lo, hi] with ticks at 1, 2, 5.
func newLogAxis(lo, hi float64) axis {
	a := axis{log: true, lo: math.Pow(10, math.Floor(math.Log10(lo))), hi: math.Pow(10, math.Ceil(math.Log10(hi)))}
	if a.hi <= a.lo {
		a.hi = a.lo * 10
	}
	for d := a.lo; d < a.hi*1.01; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if t := d * m; t <= a.hi*1.01 {
				a.ticks = append(a.ticks, t)
			}
		}
	}
	return a
}

func formatTick(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
