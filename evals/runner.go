package evals

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Prediction is one row of a predictions file, in LongBench pred.py's form (pred, answers, all_classes,
// length) plus _id, which resumption needs, and kv_budget, the fraction of keys kept (1 for dense), which the
// results table averages. LongBench's eval.py reads such a file unchanged.
type Prediction struct {
	ID         string   `json:"_id"`
	Pred       string   `json:"pred"`
	Answers    []string `json:"answers"`
	AllClasses []string `json:"all_classes"`
	Length     int      `json:"length"`
	KVBudget   float64  `json:"kv_budget"`
}

// Job is one (config, task) pair: its predictions file and the predictions already in it.
type Job struct {
	Config Config
	Task   *Task
	Path   string // OUT/preds/CONFIG/TASK.jsonl
	// Repaired is set when a truncated last line (an interrupted write) was cut off the file.
	Repaired bool
	done     map[string]Prediction
}

// Remaining is the number of the task's items not predicted yet.
func (j *Job) Remaining() int {
	n := 0
	for _, it := range j.Task.Items {
		if _, ok := j.done[it.ID]; !ok {
			n++
		}
	}
	return n
}

// Plan is a run: every config × every task, with what is already done.
type Plan struct {
	OutDir    string
	MaxLength int // middle-truncation limit in tokens (0: none)
	Jobs      []*Job
}

// PredsPath is where a config's predictions for a task go.
func PredsPath(outDir, config, task string) string {
	return filepath.Join(outDir, "preds", config, task+".jsonl")
}

// NewPlan lays out the run and reads the predictions made by earlier runs into outDir, so that Execute
// predicts only the rest. A predictions file whose last line was cut by an interruption is repaired by
// truncating that line away; any other malformed line is an error naming the file and line.
func NewPlan(outDir string, configs []Config, tasks []*Task, maxLength int) (*Plan, error) {
	p := &Plan{OutDir: outDir, MaxLength: maxLength}
	seen := map[string]bool{}
	for _, c := range configs {
		for _, t := range tasks {
			j := &Job{Config: c, Task: t, Path: PredsPath(outDir, c.Name, t.Spec.Name)}
			if seen[j.Path] {
				return nil, fmt.Errorf("config %s, task %s: listed twice", c.Name, t.Spec.Name)
			}
			seen[j.Path] = true
			var err error
			if j.done, j.Repaired, err = ReadPredictions(j.Path); err != nil {
				return nil, err
			}
			p.Jobs = append(p.Jobs, j)
		}
	}
	return p, nil
}

// Remaining is the number of predictions still to make.
func (p *Plan) Remaining() int {
	n := 0
	for _, j := range p.Jobs {
		n += j.Remaining()
	}
	return n
}

// ReadPredictions reads a predictions file into a map by _id (the first row wins for a repeated _id). A
// missing file is empty. An unterminated last line — a row whose write was interrupted — is truncated away
// (repaired = true) and its item will be predicted again.
func ReadPredictions(path string) (done map[string]Prediction, repaired bool, err error) {
	done = make(map[string]Prediction)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return done, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if end := bytes.LastIndexByte(b, '\n') + 1; end < len(b) {
		if err := os.Truncate(path, int64(end)); err != nil {
			return nil, false, fmt.Errorf("repairing %s: %w", path, err)
		}
		b, repaired = b[:end], true
	}
	for line := 1; len(b) > 0; line++ {
		i := bytes.IndexByte(b, '\n')
		row := b[:i]
		b = b[i+1:]
		if len(bytes.TrimSpace(row)) == 0 {
			continue
		}
		var pr Prediction
		if err := json.Unmarshal(row, &pr); err != nil || pr.ID == "" {
			if err == nil {
				err = errors.New("no _id")
			}
			return nil, false, fmt.Errorf("%s:%d: malformed prediction row: %v", path, line, err)
		}
		if _, ok := done[pr.ID]; !ok {
			done[pr.ID] = pr
		}
	}
	return done, repaired, nil
}

// Progress receives one Add(1) per prediction made; Describe names the job in progress.
// schollz/progressbar's *ProgressBar satisfies it.
type Progress interface {
	Describe(description string)
	Add(n int) error
}

// Execute makes the missing predictions: for each job in order, for each item not yet predicted, build the
// prompt, generate with the config's LM, and append the row to the job's file, written whole and unbuffered
// so that an interrupted run loses at most the row being written. lms maps config names to LMs. On
// cancellation it returns an error wrapping ctx.Err(); rerunning the same plan resumes.
func (p *Plan) Execute(ctx context.Context, lms map[string]LM, progress Progress) error {
	for _, j := range p.Jobs {
		if j.Remaining() == 0 {
			continue
		}
		lm := lms[j.Config.Name]
		if lm == nil {
			return fmt.Errorf("config %s: no model", j.Config.Name)
		}
		if progress != nil {
			progress.Describe(j.Config.Name + "/" + j.Task.Spec.Name)
		}
		if err := p.execute(ctx, j, lm, progress); err != nil {
			return err
		}
	}
	return nil
}

func (p *Plan) execute(ctx context.Context, j *Job, lm LM, progress Progress) error {
	if err := os.MkdirAll(filepath.Dir(j.Path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(j.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, it := range j.Task.Items {
		if _, ok := j.done[it.ID]; ok {
			continue
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("interrupted: %w", err)
		}
		pr, err := Predict(ctx, lm, j.Task.Spec, it, p.MaxLength)
		if err != nil {
			return fmt.Errorf("config %s, %s:%d (_id %s): %w", j.Config.Name, it.File, it.Line, it.ID, err)
		}
		row, err := marshalRow(pr)
		if err != nil {
			return err
		}
		if _, err := f.Write(row); err != nil {
			return fmt.Errorf("writing %s: %w", j.Path, err)
		}
		j.done[it.ID] = pr
		if progress != nil {
			_ = progress.Add(1)
		}
	}
	return f.Close()
}

// Predict makes one item's prediction.
func Predict(ctx context.Context, lm LM, spec *Spec, it Item, maxLength int) (Prediction, error) {
	prompt, err := BuildPrompt(lm, spec, it, maxLength)
	if err != nil {
		return Prediction{}, err
	}
	text, kept, err := lm.Generate(ctx, prompt.Fixed, prompt.Input, spec.MaxNew, spec.Stop)
	if err != nil {
		return Prediction{}, err
	}
	return Prediction{ID: it.ID, Pred: text, Answers: it.Answers, AllClasses: it.AllClasses,
		Length: it.Length, KVBudget: kept}, nil
}

// marshalRow is one JSON line, with non-ASCII and <>& written as they are (Python's ensure_ascii=False).
func marshalRow(pr Prediction) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(pr); err != nil { // Encode ends the line with "\n"
		return nil, err
	}
	return b.Bytes(), nil
}
