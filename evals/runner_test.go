package evals

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// runPlan plans and executes a run of the fixture with a dense LM (kept 1) and an "sq70" LM (kept 0.3).
func runPlan(t *testing.T, f *fixture, out string, ctx context.Context, dense, sq *fakeLM) (*Plan, error) {
	t.Helper()
	configs, err := ParseConfigs("dense,sq70")
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPlan(out, configs, f.tasks(t, 0), 0)
	if err != nil {
		t.Fatal(err)
	}
	return p, p.Execute(ctx, map[string]LM{"dense": dense, "sq70": sq}, nil)
}

func TestRunnerTables(t *testing.T) {
	f := newFixture(t)
	out := t.TempDir()
	p, err := runPlan(t, f, out, context.Background(), newFakeLM(f.answers, 1), newFakeLM(f.answers, 0.3))
	if err != nil {
		t.Fatal(err)
	}
	results, err := p.Results()
	if err != nil {
		t.Fatal(err)
	}
	// the fixture's arithmetic (fake_test.go): 54.25, 83.333…, average 68.7916…
	want := []Result{
		{"dense", "tinycode_lcc", 54.25, 4, 1},
		{"dense", "qasper", 250.0 / 3, 2, 1},
		{"sq70", "tinycode_lcc", 54.25, 4, 0.3},
		{"sq70", "qasper", 250.0 / 3, 2, 0.3},
		{"dense", "average", (54.25 + 250.0/3) / 2, 6, 1},
		{"sq70", "average", (54.25 + 250.0/3) / 2, 6, 0.3},
	}
	if len(results) != len(want) {
		t.Fatalf("results %+v", results)
	}
	for i, r := range results {
		w := want[i]
		if r.Config != w.Config || r.Task != w.Task || r.N != w.N || math.Abs(r.Score-w.Score) > 1e-9 ||
			math.Abs(r.KVBudget-w.KVBudget) > 1e-12 {
			t.Errorf("result %d = %+v, want %+v", i, r, w)
		}
	}
	if err := WriteResults(out, results); err != nil {
		t.Fatal(err)
	}
	csv, _ := os.ReadFile(filepath.Join(out, ResultsCSV))
	wantCSV := `config,task,score,n,kv_budget
dense,tinycode_lcc,54.25,4,1.000
dense,qasper,83.33,2,1.000
sq70,tinycode_lcc,54.25,4,0.300
sq70,qasper,83.33,2,0.300
dense,average,68.79,6,1.000
sq70,average,68.79,6,0.300
`
	if string(csv) != wantCSV {
		t.Errorf("results.csv:\n%s\nwant:\n%s", csv, wantCSV)
	}
	md, _ := os.ReadFile(filepath.Join(out, ResultsMD))
	wantMD := `| config | task | score | n | kv_budget |
|---|---|---:|---:|---:|
| dense | tinycode_lcc | 54.25 | 4 | 1.000 |
| dense | qasper | 83.33 | 2 | 1.000 |
| sq70 | tinycode_lcc | 54.25 | 4 | 0.300 |
| sq70 | qasper | 83.33 | 2 | 0.300 |
| dense | average | 68.79 | 6 | 1.000 |
| sq70 | average | 68.79 | 6 | 0.300 |
`
	if string(md) != wantMD {
		t.Errorf("results.md:\n%s\nwant:\n%s", md, wantMD)
	}
	pf, err := os.Open(filepath.Join(out, BudgetPlot))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if img, err := png.Decode(pf); err != nil || img.Bounds().Dx() < 100 {
		t.Errorf("budget.png is not a usable PNG: %v", err)
	}
	// prediction rows are in pred.py's form plus _id and kv_budget
	b, _ := os.ReadFile(PredsPath(out, "sq70", "qasper"))
	wantRows := `{"_id":"q0","pred":"Paris, France","answers":["Paris"],"all_classes":null,"length":5,"kv_budget":0.3}
{"_id":"q1","pred":"London","answers":["London"],"all_classes":null,"length":5,"kv_budget":0.3}
`
	if string(b) != wantRows {
		t.Errorf("preds file:\n%s\nwant:\n%s", b, wantRows)
	}
}

// TestRunnerResume: a run cancelled after k predictions, with a half-written row left at the end of its
// file, then rerun, predicts every item exactly once and ends with the same files and results as an
// uninterrupted run.
func TestRunnerResume(t *testing.T) {
	f := newFixture(t)
	refDir := t.TempDir()
	refPlan, err := runPlan(t, f, refDir, context.Background(), newFakeLM(f.answers, 1), newFakeLM(f.answers, 0.3))
	if err != nil {
		t.Fatal(err)
	}
	refResults, _ := refPlan.Results()

	for _, k := range []int{1, 4, 5, 9} { // inside the first job, at its end, inside later jobs
		t.Run("k="+string(rune('0'+k)), func(t *testing.T) {
			out := t.TempDir()
			dense, sq := newFakeLM(f.answers, 1), newFakeLM(f.answers, 0.3)
			ctx, cancel := context.WithCancel(context.Background())
			total := 0
			stopAfter := func(int) {
				if total++; total == k {
					cancel() // "kill" the run once k items were generated
				}
			}
			dense.after, sq.after = stopAfter, stopAfter
			p, err := runPlan(t, f, out, ctx, dense, sq)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted run: err %v, want context.Canceled", err)
			}
			if got := 12 - p.Remaining(); got != k {
				t.Fatalf("%d predictions recorded, want %d", got, k)
			}
			// a row whose write was cut short, at the end of the file being written
			var cur string
			for _, j := range p.Jobs {
				if j.Remaining() > 0 {
					cur = j.Path
					break
				}
			}
			fh, err := os.OpenFile(cur, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			fh.WriteString(`{"_id":"zz","pred":"half a ro`)
			fh.Close()

			p2, err := runPlan(t, f, out, context.Background(), dense, sq)
			if err != nil {
				t.Fatal(err)
			}
			repaired := 0
			for _, j := range p2.Jobs {
				if j.Repaired {
					repaired++
				}
			}
			if repaired != 1 {
				t.Errorf("%d files repaired, want 1", repaired)
			}
			for name, lm := range map[string]*fakeLM{"dense": dense, "sq70": sq} {
				if len(lm.calls) != 6 {
					t.Errorf("%s: %d distinct prompts generated, want 6", name, len(lm.calls))
				}
				for prompt, n := range lm.calls {
					if n != 1 {
						t.Errorf("%s: prompt %q generated %d times", name, prompt, n)
					}
				}
			}
			results, _ := p2.Results()
			if !reflect.DeepEqual(results, refResults) {
				t.Errorf("results after resume %+v, want %+v", results, refResults)
			}
			for _, j := range refPlan.Jobs {
				want, _ := os.ReadFile(j.Path)
				got, _ := os.ReadFile(PredsPath(out, j.Config.Name, j.Task.Spec.Name))
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs after resume:\n%s\nwant:\n%s", j.Path, got, want)
				}
			}
		})
	}
}

func TestRunnerLimitAndErrors(t *testing.T) {
	f := newFixture(t)
	out := t.TempDir()
	configs, _ := ParseConfigs("dense")
	lm := newFakeLM(f.answers, 1)
	p, err := NewPlan(out, configs, f.tasks(t, 1), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Execute(context.Background(), map[string]LM{"dense": lm}, nil); err != nil {
		t.Fatal(err)
	}
	if lm.n != 2 {
		t.Errorf("-limit 1 over 2 tasks made %d predictions", lm.n)
	}
	// the qasper call: fixed = BOS + context + "\nQ: ", input = the question and what follows, 128 new tokens
	if got := lm.Detokenize(lm.fixed); lm.fixed[0] != bos || got != "France's capital is Paris.\nQ: " {
		t.Errorf("fixed %q", got)
	}
	if got := lm.Detokenize(lm.input); lm.input[0] == bos || got != "Capital?\nA:" {
		t.Errorf("input %q", got)
	}
	if lm.maxNew != 128 || lm.stop != nil {
		t.Errorf("maxNew %d, stop %q", lm.maxNew, lm.stop)
	}
	// a later run over all items uses the rows already there, and scores only the selected items
	p, _ = NewPlan(out, configs, f.tasks(t, 0), 0)
	if p.Remaining() != 4 {
		t.Errorf("remaining %d, want 4", p.Remaining())
	}
	// a malformed complete line in a predictions file is an error naming the file and line
	path := PredsPath(out, "dense", "qasper")
	b, _ := os.ReadFile(path)
	os.WriteFile(path, append([]byte("not json\n"), b...), 0o644)
	if _, err := NewPlan(out, configs, f.tasks(t, 0), 0); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Errorf("malformed prediction: err %v", err)
	}
	// the same task twice would predict every item twice into one file
	if _, err := NewPlan(t.TempDir(), configs, append(f.tasks(t, 0), f.tasks(t, 0)...), 0); err == nil ||
		!strings.Contains(err.Error(), "listed twice") {
		t.Errorf("task listed twice: %v", err)
	}
	// a config without an LM
	p, _ = NewPlan(t.TempDir(), configs, f.tasks(t, 0), 0)
	if err := p.Execute(context.Background(), map[string]LM{}, nil); err == nil || !strings.Contains(err.Error(), "config dense") {
		t.Errorf("missing LM: %v", err)
	}
}

// TestBuildPromptTruncation checks middle truncation on exact token counts with the one-token-per-rune fake.
func TestBuildPromptTruncation(t *testing.T) {
	tok := newFakeLM(nil, 1)
	ctx := "abcdefghijklmnopqrstuvwxyz0123" // 30 tokens
	plain := &Spec{Name: "t", Template: "{context}"}
	qa := &Spec{Name: "qa", Template: "{context}\nQ: {input}\nA:"}
	if plain.compile() != nil || qa.compile() != nil {
		t.Fatal("templates")
	}
	it := Item{Fields: map[string]string{"context": ctx, "input": "why"}}

	tests := []struct {
		name        string
		spec        *Spec
		maxLength   int
		fixed, user string // texts of the fixed tokens (after BOS) and the input tokens
		truncated   bool
	}{
		// BOS + 30 = 31 tokens ≤ 31: untouched
		{"fits", plain, 31, ctx, "", false},
		{"no limit", plain, 0, ctx, "", false},
		// 31 > 10: half = 5; head = BOS + "abcd" (BOS is one of the 5 and is skipped when decoding),
		// tail = "z0123"; re-tokenized with BOS: 10 tokens
		{"middle", plain, 10, "abcd" + "z0123", "", true},
		// odd limit: half = int(11/2) = 5, the same 10 tokens
		{"odd", plain, 11, "abcdz0123", "", true},
		// BOS + 30 + "\nQ: " (4) + "why\nA:" (6) = 41 > 20: half = 10; head = BOS + "abcdefghi";
		// tail = "\nQ: why\nA:" (10). The tail still ends with the user text "why\nA:", so the split is kept:
		// fixed = "abcdefghi\nQ: " (BOS + 13 tokens), input = "why\nA:" (6)
		{"user input kept", qa, 20, "abcdefghi\nQ: ", "why\nA:", true},
		// 41 > 8: half = 4; head = BOS + "abc", tail = "y\nA:" — the user text was cut, so the split falls at
		// the cut: fixed = "abc", input = "y\nA:"
		{"user input cut", qa, 8, "abc", "y\nA:", true},
		{"qa fits", qa, 41, ctx + "\nQ: ", "why\nA:", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := BuildPrompt(tok, tc.spec, it, tc.maxLength)
			if err != nil {
				t.Fatal(err)
			}
			if p.Fixed[0] != bos || tok.Detokenize(p.Fixed) != tc.fixed || len(p.Fixed) != 1+len([]rune(tc.fixed)) {
				t.Errorf("fixed %q (%d tokens), want BOS + %q", tok.Detokenize(p.Fixed), len(p.Fixed), tc.fixed)
			}
			if tok.Detokenize(p.Input) != tc.user || len(p.Input) != len([]rune(tc.user)) {
				t.Errorf("input %q, want %q without BOS", tok.Detokenize(p.Input), tc.user)
			}
			if p.Truncated != tc.truncated {
				t.Errorf("truncated %v", p.Truncated)
			}
			if tc.truncated && tc.maxLength > 0 && len(p.Fixed)+len(p.Input) != tc.maxLength/2*2 {
				t.Errorf("%d tokens kept, want %d", len(p.Fixed)+len(p.Input), tc.maxLength/2*2)
			}
		})
	}
}
