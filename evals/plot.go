package evals

import (
	"cmp"
	"fmt"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// WritePlot draws score (0–100) against KV budget (fraction of keys kept), one line per task through its
// configs in order of budget, and the configs' average as its own line; the format follows the file's
// extension (.png, .svg, .pdf).
func WritePlot(path string, results []Result) error {
	p := plot.New()
	p.Title.Text = "LongBench score against KV budget"
	p.X.Label.Text = "KV budget (fraction of keys kept)"
	p.Y.Label.Text = "score"
	p.X.Min, p.X.Max = 0, 1.05
	p.Y.Min, p.Y.Max = 0, 100
	p.Legend.Top = false
	p.Legend.Left = true
	p.Add(plotter.NewGrid())

	var tasks []string
	points := map[string]plotter.XYs{}
	for _, r := range results {
		if _, ok := points[r.Task]; !ok {
			tasks = append(tasks, r.Task)
		}
		points[r.Task] = append(points[r.Task], plotter.XY{X: r.KVBudget, Y: r.Score})
	}
	// the average line last, so it is drawn on top and listed last
	if i := slices.Index(tasks, AverageTask); i >= 0 {
		tasks = append(slices.Delete(tasks, i, i+1), AverageTask)
	}
	var lines []any
	for _, t := range tasks {
		xys := points[t]
		slices.SortFunc(xys, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
		lines = append(lines, t, xys)
	}
	if len(lines) > 0 {
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
