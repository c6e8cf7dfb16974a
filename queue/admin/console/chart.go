package console

import (
	"strconv"
	"strings"
	"time"
)

// The chart's drawing area, in SVG user units.
const (
	chartW    = 720.0
	chartH    = 160.0
	chartLeft = 40.0
	chartTop  = 10.0
)

// chartView is a Chart ready for the template: a polyline per series,
// one point per period.
type chartView struct {
	Width, Height float64
	Lines         []chartLine
	Max           int
	// Ticks are the labels under the x axis.
	Ticks []chartTick
	// Grid holds the y of the horizontal lines and their values.
	Grid []chartTick
}

type chartLine struct {
	Name   string
	Class  string
	Points string // "x,y x,y ...", one per period
	N      int
	Total  int
}

type chartTick struct {
	X, Y   float64
	Label  string
	Anchor string // text-anchor
}

func drawChart(c Chart) chartView {
	v := chartView{Width: chartLeft + chartW + 10, Height: chartTop + chartH + 24}
	for _, s := range c.Series {
		for _, n := range s.Counts {
			v.Max = max(v.Max, n)
		}
	}
	top := max(v.Max, 1)
	step := chartW / float64(periods-1)
	for i, s := range c.Series {
		var b strings.Builder
		for j, n := range s.Counts {
			if j > 0 {
				b.WriteByte(' ')
			}
			x := chartLeft + float64(j)*step
			y := chartTop + chartH - float64(n)/float64(top)*chartH
			b.WriteString(strconv.FormatFloat(x, 'f', 1, 64))
			b.WriteByte(',')
			b.WriteString(strconv.FormatFloat(y, 'f', 1, 64))
		}
		v.Lines = append(v.Lines, chartLine{Name: s.Name, Class: "s" + strconv.Itoa(i), Points: b.String(), N: len(s.Counts), Total: s.Total})
	}
	for _, h := range []int{0, 6, 12, 18, 24} {
		j := h * 6
		if j >= periods {
			j = periods - 1
		}
		label := c.Start.Add(time.Duration(j) * period).Local().Format("15:04")
		anchor := "middle"
		if h == 24 {
			anchor = "end"
		}
		v.Ticks = append(v.Ticks, chartTick{X: chartLeft + float64(j)*step, Y: chartTop + chartH + 16, Label: label, Anchor: anchor})
	}
	for _, f := range []float64{0, 0.5, 1} {
		val := int(f * float64(top))
		v.Grid = append(v.Grid, chartTick{X: chartLeft - 6, Y: chartTop + chartH - f*chartH, Label: strconv.Itoa(val)})
	}
	return v
}
