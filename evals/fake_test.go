package evals

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// bos is the fake tokenizer's BOS id (outside the Unicode range).
const bos = 0x110000

// fakeLM tokenizes one token per rune (BOS first with addSpecial) and answers from a table keyed by the
// prompt's text (fixed + input), recording every call.
type fakeLM struct {
	answers map[string]string // prompt text → generated text; missing: "?"
	kept    float64           // keptFraction reported
	mu      sync.Mutex
	calls   map[string]int // prompt text → calls
	n       int
	after   func(n int) // called after the n-th Generate (1-based)
	// last call's arguments
	fixed, input []int
	maxNew       int
	stop         []string
}

func newFakeLM(answers map[string]string, kept float64) *fakeLM {
	return &fakeLM{answers: answers, kept: kept, calls: map[string]int{}}
}

func (f *fakeLM) Tokenize(text string, addSpecial bool) []int {
	var ids []int
	if addSpecial {
		ids = append(ids, bos)
	}
	for _, r := range text {
		ids = append(ids, int(r))
	}
	return ids
}

func (f *fakeLM) Detokenize(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		if id != bos {
			b.WriteRune(rune(id))
		}
	}
	return b.String()
}

func (f *fakeLM) Generate(ctx context.Context, fixed, input []int, maxNew int, stop []string) (string, float64, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	prompt := f.Detokenize(fixed) + f.Detokenize(input)
	f.mu.Lock()
	f.calls[prompt]++
	f.n++
	n := f.n
	f.fixed, f.input, f.maxNew, f.stop = fixed, input, maxNew, stop
	f.mu.Unlock()
	out, ok := f.answers[prompt]
	if !ok {
		out = "?"
	}
	for _, s := range stop {
		if i := strings.Index(out, s); i >= 0 {
			out = out[:i]
		}
	}
	if r := []rune(out); len(r) > maxNew {
		out = string(r[:maxNew])
	}
	if f.after != nil {
		f.after(n)
	}
	return out, f.kept, nil
}

// writeJSONL writes rows as a JSON-lines file.
func writeJSONL(t *testing.T, path string, rows ...any) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, r := range rows {
		j, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

type row = map[string]any

// fixture is a data directory with two tasks whose fake predictions have known scores:
//
//	tinycode_lcc (template "{context}", code_sim_score), 4 items:
//	  c0 "x = 1\ny = 2" vs "x = 1"       → first usable line "x = 1": fuzz 100       → 1
//	  c1 "abc"          vs "abd"         → fuzz.ratio 67 (lensum 6, LCS 2: 4/6)        → 0.67
//	  c2 "# only\n// c" vs "z = 3"       → no usable line: "" vs "z = 3"               → 0
//	  c3 "  x"          vs "x"           → lensum 4, LCS 1: 2/4 = 50                   → 0.5
//	  score = 100 × (1 + 0.67 + 0 + 0.5)/4 = 54.25
//	qa (template "{context}\nQ: {input}\nA:", qa_f1_score via the -prompts file under the name qasper), 2 items:
//	  q0 "Paris, France" vs "Paris"  → tokens [paris france] vs [paris]: P 1/2, R 1 → F1 2/3
//	  q1 "London"        vs "London" → 1
//	  score = 100 × (2/3 + 1)/2 = 83.333…
//	average = (54.25 + 83.3333…)/2 = 68.7916… → 68.79, n = 6
type fixture struct {
	dir     string
	specs   *Specs
	answers map[string]string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, answers: map[string]string{}}
	code := []struct{ ctx, ans, pred string }{
		{"def f0():\n", "x = 1", "x = 1\ny = 2"},
		{"def f1():\n", "abd", "abc"},
		{"def f2():\n", "z = 3", "# only\n// c"},
		{"def f3():\n", "x", "  x"},
	}
	var rows []any
	for i, c := range code {
		id := "c" + string(rune('0'+i))
		rows = append(rows, row{"_id": id, "context": c.ctx, "input": "", "answers": []string{c.ans},
			"all_classes": nil, "length": len(c.ctx)})
		f.answers[c.ctx] = c.pred
	}
	// layout DIR/TASK/dev.jsonl
	writeJSONL(t, filepath.Join(dir, "tinycode_lcc", "dev.jsonl"), rows...)
	qa := []struct{ ctx, q, ans, pred string }{
		{"France's capital is Paris.", "Capital?", "Paris", "Paris, France"},
		{"England's capital is London.", "Capital?", "London", "London"},
	}
	rows = nil
	for i, q := range qa {
		rows = append(rows, row{"_id": "q" + string(rune('0'+i)), "context": q.ctx, "input": q.q,
			"answers": []string{q.ans}, "all_classes": nil, "length": 5})
		f.answers[q.ctx+"\nQ: "+q.q+"\nA:"] = q.pred
	}
	// layout DIR/TASK.jsonl
	writeJSONL(t, filepath.Join(dir, "qasper.jsonl"), rows...)
	prompts := filepath.Join(dir, "dataset2prompt.json")
	maxlen := filepath.Join(dir, "dataset2maxlen.json")
	os.WriteFile(prompts, []byte(`{"qasper": "{context}\nQ: {input}\nA:"}`), 0o644)
	os.WriteFile(maxlen, []byte(`{"qasper": 128}`), 0o644)
	var err error
	if f.specs, err = NewSpecs(prompts, maxlen); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) tasks(t *testing.T, limit int) []*Task {
	t.Helper()
	var out []*Task
	for _, name := range []string{"tinycode_lcc", "qasper"} {
		task, err := LoadTask(f.dir, name, f.specs, limit)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, task)
	}
	return out
}
