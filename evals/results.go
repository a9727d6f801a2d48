package evals

import (
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Result is one row of the results table.
type Result struct {
	Config, Task string
	Score        float64 // 0–100: 100 × the mean sample score (eval.py rounds it to 2 decimals; the tables do)
	N            int     // samples scored
	KVBudget     float64 // mean fraction of keys kept (1 for dense)
}

// AverageTask is the Task of each config's average row.
const AverageTask = "average"

// Results scores every job over its task's items that have a prediction, then appends one average row per
// config: the unweighted mean of its task scores and KV budgets (LongBench reports the plain mean over
// tasks), with N the total number of samples.
func (p *Plan) Results() ([]Result, error) {
	var out []Result
	byConfig := map[string][]Result{}
	var order []string
	for _, j := range p.Jobs {
		r, err := j.Result()
		if err != nil {
			return nil, err
		}
		if r.N == 0 {
			continue
		}
		out = append(out, r)
		if _, ok := byConfig[r.Config]; !ok {
			order = append(order, r.Config)
		}
		byConfig[r.Config] = append(byConfig[r.Config], r)
	}
	for _, c := range order {
		rs := byConfig[c]
		avg := Result{Config: c, Task: AverageTask}
		for _, r := range rs {
			avg.Score += r.Score / float64(len(rs))
			avg.KVBudget += r.KVBudget / float64(len(rs))
			avg.N += r.N
		}
		out = append(out, avg)
	}
	return out, nil
}

// Result scores the job's predictions of its task's items.
func (j *Job) Result() (Result, error) {
	m, err := MetricByName(j.Task.Spec.Metric)
	if err != nil {
		return Result{}, err
	}
	r := Result{Config: j.Config.Name, Task: j.Task.Spec.Name}
	var total, kept float64
	for _, it := range j.Task.Items {
		pr, ok := j.done[it.ID]
		if !ok {
			continue
		}
		total += SampleScore(m, j.Task.Spec.FirstLine, pr.Pred, it.Answers, it.AllClasses)
		kept += pr.KVBudget
		r.N++
	}
	if r.N > 0 {
		r.Score = 100 * total / float64(r.N)
		r.KVBudget = kept / float64(r.N)
	}
	return r, nil
}

// Output files, relative to the output directory.
const (
	ResultsCSV = "results.csv"
	ResultsMD  = "results.md"
	BudgetPlot = "budget.png"
)

// WriteResults writes results.csv, results.md and budget.png into outDir.
func WriteResults(outDir string, results []Result) error {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		name  string
		write func(io.Writer, []Result) error
	}{{ResultsCSV, WriteCSV}, {ResultsMD, WriteMarkdown}} {
		if err := writeFile(filepath.Join(outDir, f.name), func(w io.Writer) error { return f.write(w, results) }); err != nil {
			return err
		}
	}
	return WritePlot(filepath.Join(outDir, BudgetPlot), results)
}

// writeFile writes path through a temporary file, so a reader never sees half a table.
func writeFile(path string, write func(io.Writer) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// cells formats a result as the tables print it: score with 2 decimals (as eval.py's round(…, 2)),
// kv_budget with 3.
func (r Result) cells() []string {
	return []string{r.Config, r.Task, strconv.FormatFloat(r.Score, 'f', 2, 64), strconv.Itoa(r.N),
		strconv.FormatFloat(r.KVBudget, 'f', 3, 64)}
}

var header = []string{"config", "task", "score", "n", "kv_budget"}

// WriteCSV writes the results as CSV with the header config,task,score,n,kv_budget.
func WriteCSV(w io.Writer, results []Result) error {
	cw := csv.NewWriter(w)
	cw.Write(header)
	for _, r := range results {
		cw.Write(r.cells())
	}
	cw.Flush()
	return cw.Error()
}

// WriteMarkdown writes the results as a Markdown table with the CSV's columns.
func WriteMarkdown(w io.Writer, results []Result) error {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n")
	b.WriteString("|---|---|---:|---:|---:|\n")
	for _, r := range results {
		b.WriteString("| " + strings.Join(r.cells(), " | ") + " |\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
