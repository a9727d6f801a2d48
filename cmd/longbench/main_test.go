package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/squeezeai/sqllm/evals"
)

const modelDir = "../../models/tinycode-llama-16m"

// echoLM answers every prompt with the last line of its fixed context plus "\n#".
type echoLM struct{ calls int }

func (e *echoLM) Tokenize(text string, addSpecial bool) []int {
	var ids []int
	if addSpecial {
		ids = append(ids, -1)
	}
	for _, r := range text {
		ids = append(ids, int(r))
	}
	return ids
}

func (e *echoLM) Detokenize(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		if id >= 0 {
			b.WriteRune(rune(id))
		}
	}
	return b.String()
}

func (e *echoLM) Generate(_ context.Context, fixed, input []int, maxNew int, stop []string) (string, float64, error) {
	e.calls++
	lines := strings.Split(strings.TrimRight(e.Detokenize(fixed), "\n"), "\n")
	return lines[len(lines)-1] + "\n#", 1, nil
}

func fakeOpener(lm *echoLM, opened *int) opener {
	return func(o *options) (*loaded, error) {
		*opened++
		return &loaded{lm: lm, maxContext: 4096, describe: "fake", close: func() {}}, nil
	}
}

// writeTask writes DIR/NAME/dev.jsonl with rows whose answer is the context's last line (which echoLM
// repeats, so each scores 100) — or, for the second row, not.
func writeTask(t *testing.T, dir, name string, rows int) {
	t.Helper()
	var b strings.Builder
	for i := range rows {
		ctx := "import os\n\n\ndef f(x):\n    return x + " + string(rune('0'+i)) + "\n"
		ans := "    return x + " + string(rune('0'+i))
		if i == 1 {
			ans = "print(x)"
		}
		j, _ := json.Marshal(map[string]any{"_id": name + "-" + string(rune('0'+i)), "context": ctx, "input": "",
			"answers": []string{ans}, "all_classes": nil, "length": 10})
		b.Write(j)
		b.WriteByte('\n')
	}
	os.MkdirAll(filepath.Join(dir, name), 0o755)
	if err := os.WriteFile(filepath.Join(dir, name, "dev.jsonl"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func runCLI(t *testing.T, open opener, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb, open)
	return code, out.String(), errb.String()
}

func TestRunWithFakeLM(t *testing.T) {
	data, out := t.TempDir(), t.TempDir()
	writeTask(t, data, "tinycode_lcc", 3)
	lm, opened := &echoLM{}, 0
	code, stdout, stderr := runCLI(t, fakeOpener(lm, &opened), "-data", data, "-tasks", "tinycode_lcc", "-out", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// rows 0 and 2 repeat their answer: 100. Row 1 says "    return x + 1" for "print(x)": lensum 16+8 = 24,
	// LCS "rnx" = 3, ratio 6/24 → 25. Score (100+25+100)/3 = 75
	want := "| config | task | score | n | kv_budget |\n|---|---|---:|---:|---:|\n" +
		"| dense | tinycode_lcc | 75.00 | 3 | 1.000 |\n| dense | average | 75.00 | 3 | 1.000 |\n"
	if stdout != want {
		t.Errorf("stdout:\n%s", stdout)
	}
	for _, f := range []string{"results.csv", "results.md", "budget.png", "preds/dense/tinycode_lcc.jsonl"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	if lm.calls != 3 || !strings.Contains(stderr, "3 predictions to make (0 already") {
		t.Errorf("%d calls; stderr %s", lm.calls, stderr)
	}
	// a second run finds everything done and rewrites the same tables without generating
	csv1, _ := os.ReadFile(filepath.Join(out, "results.csv"))
	code, _, stderr = runCLI(t, fakeOpener(lm, &opened), "-data", data, "-tasks", "tinycode_lcc", "-out", out, "-quiet")
	csv2, _ := os.ReadFile(filepath.Join(out, "results.csv"))
	if code != 0 || lm.calls != 3 || !bytes.Equal(csv1, csv2) || stderr != "" {
		t.Errorf("rerun: exit %d, %d calls, stderr %q\n%s\n%s", code, lm.calls, stderr, csv1, csv2)
	}
}

// TestShards: two -shard runs predict disjoint halves; their predictions concatenated score like one
// unsharded run, without generating again.
func TestShards(t *testing.T) {
	data, whole := t.TempDir(), t.TempDir()
	writeTask(t, data, "tinycode_lcc", 5)
	lm, opened := &echoLM{}, 0
	if code, _, stderr := runCLI(t, fakeOpener(lm, &opened), "-data", data, "-tasks", "tinycode_lcc", "-out", whole, "-quiet"); code != 0 {
		t.Fatal(stderr)
	}
	merged := t.TempDir()
	var preds []byte
	for i, want := range []int{3, 2} {
		out := t.TempDir()
		lm.calls = 0
		code, stdout, stderr := runCLI(t, fakeOpener(lm, &opened), "-data", data, "-tasks", "tinycode_lcc", "-out", out,
			"-shard", fmt.Sprintf("%d/2", i), "-quiet")
		if code != 0 || lm.calls != want || !strings.Contains(stdout, fmt.Sprintf("| %d |", want)) {
			t.Fatalf("shard %d: exit %d, %d calls, want %d\n%s%s", i, code, lm.calls, want, stdout, stderr)
		}
		b, err := os.ReadFile(evals.PredsPath(out, "dense", "tinycode_lcc"))
		if err != nil {
			t.Fatal(err)
		}
		preds = append(preds, b...)
	}
	path := evals.PredsPath(merged, "dense", "tinycode_lcc")
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, preds, 0o644); err != nil {
		t.Fatal(err)
	}
	lm.calls = 0
	if code, _, stderr := runCLI(t, fakeOpener(lm, &opened), "-data", data, "-tasks", "tinycode_lcc", "-out", merged, "-quiet"); code != 0 || lm.calls != 0 {
		t.Fatalf("merged: exit %d, %d calls: %s", code, lm.calls, stderr)
	}
	a, _ := os.ReadFile(filepath.Join(whole, "results.csv"))
	b, _ := os.ReadFile(filepath.Join(merged, "results.csv"))
	if !bytes.Equal(a, b) {
		t.Errorf("merged shards:\n%s\nunsharded:\n%s", b, a)
	}
}

// TestStartupErrors: bad flags and configs fail before any data is read or the model is opened.
func TestStartupErrors(t *testing.T) {
	data := t.TempDir()
	writeTask(t, data, "tinycode_lcc", 1)
	tests := []struct {
		name string
		args []string
		want string
		code int
	}{
		{"hierarchical config without room for coarse centroids", []string{"-data", "/nonexistent", "-tasks", "lcc", "-out", "o",
			"-configs", "dense,sq70h", "-squeeze-centroids", "0.01"},
			"longbench: config sq70h: llama: squeeze coarse centroids fraction 0.01 outside (0, 0.01) (below the centroids fraction)\n", 2},
		{"unknown config", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-configs", "sparse"}, `unknown config "sparse"`, 2},
		{"no data flag", []string{"-tasks", "lcc", "-out", "o"}, "-data DIR is required", 2},
		{"no tasks", []string{"-data", data, "-out", "o"}, "-tasks is required", 2},
		{"no out", []string{"-data", data, "-tasks", "lcc"}, "-out DIR is required", 2},
		{"bad backend", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-backend", "tpu"}, `unknown backend "tpu"`, 2},
		{"unknown task", []string{"-data", data, "-tasks", "tinycode_lcc,nosuch", "-out", "o"}, "task nosuch: no prompt template", 1},
		{"missing data", []string{"-data", data, "-tasks", "lcc", "-out", "o"}, "task lcc: no data", 1},
		{"bad squeeze centroids", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-squeeze-centroids", "0.9"}, "-squeeze-centroids/-squeeze-window/-squeeze-iters: llama: squeeze centroids fraction 0.9 outside (0, 0.5]", 2},
		{"bad squeeze window", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-squeeze-window", "-3"}, "observation window -3", 2},
		{"bad shard", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-shard", "2/2"}, `-shard: "2/2" is not I/N with 0 <= I < N`, 2},
		{"shard not a fraction", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-shard", "1"}, `-shard: "1" is not I/N`, 2},
		{"missing prompts file", []string{"-data", data, "-tasks", "lcc", "-out", "o", "-prompts", "/nonexistent/p.json"}, "/nonexistent/p.json", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opened := 0
			code, _, stderr := runCLI(t, fakeOpener(&echoLM{}, &opened), tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr, tc.code, tc.want)
			}
			if opened != 0 {
				t.Error("the model was opened")
			}
		})
	}
}

func TestGenSynthetic(t *testing.T) {
	dir := t.TempDir()
	code, stdout, stderr := runCLI(t, nil, "-gen-synthetic", dir, "-model", modelDir, "-seed", "5", "-lengths", "300,600", "-synthetic-n", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if got := strings.Fields(stdout); len(got) != 4 || got[3] != filepath.Join(dir, "kv_retrieval_600.jsonl") {
		t.Errorf("stdout %q", stdout)
	}
	items, err := evals.ReadItems(filepath.Join(dir, "passkey_600.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// lengths are counted with the model's tokenizer: at least the target, less than a block over
	for _, it := range items {
		if it.Length < 600 || it.Length > 700 {
			t.Errorf("%s: %d tokens for a 600 target", it.ID, it.Length)
		}
	}
	if code, _, stderr := runCLI(t, nil, "-gen-synthetic", dir, "-lengths", "300,x"); code != 2 || !strings.Contains(stderr, `"x"`) {
		t.Errorf("bad -lengths: %d %s", code, stderr)
	}
}

// TestRealModel runs the bundled model end to end on one tiny tinycode_lcc item, truncated to 64 tokens.
func TestRealModel(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the bundled model")
	}
	data, out := t.TempDir(), t.TempDir()
	// about 120 tokens: imports, then a function to complete; -max-length 64 keeps BOS + 31 tokens of the
	// imports and the last 32 tokens, the function's head
	ctx := strings.Repeat("import os\nimport sys\nimport math\n", 8) +
		"\n\ndef fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
	row, _ := json.Marshal(map[string]any{"_id": "fib", "context": ctx, "input": "", "answers": []string{"    if n < 2:"}})
	os.WriteFile(filepath.Join(data, "tinycode_lcc.jsonl"), append(row, '\n'), 0o644)
	code, stdout, stderr := runCLI(t, openEngine, "-data", data, "-tasks", "tinycode_lcc", "-out", out,
		"-model", modelDir, "-backend", "go", "-limit", "1", "-max-length", "64")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "| dense | tinycode_lcc |") || !strings.Contains(stderr, "max length 64 tokens") {
		t.Errorf("stdout %s\nstderr %s", stdout, stderr)
	}
	done, _, err := evals.ReadPredictions(filepath.Join(out, "preds", "dense", "tinycode_lcc.jsonl"))
	if err != nil || len(done) != 1 {
		t.Fatalf("predictions %v, %v", done, err)
	}
	t.Logf("prediction %q", done["fib"].Pred)
	if p := done["fib"]; p.KVBudget != 1 || strings.TrimSpace(p.Pred) == "" {
		t.Errorf("prediction %+v", p)
	}
}

func TestSqueezeConfigs(t *testing.T) {
	cs, err := evals.ParseConfigs("dense,sq70,sq90b,sq80h,sq70m,sq90mr,sq90br")
	if err != nil {
		t.Fatal(err)
	}
	flags := &options{}
	if o := squeezeOptions(cs[0], flags); o != nil {
		t.Errorf("dense: %+v", o)
	}
	if o := squeezeOptions(cs[1], flags); o == nil || o.Sparsity != 0.7 || o.Budget != 0 || o.Centroids != 0 {
		t.Errorf("sq70: %+v, want the calibrated mode with sparsity 0.7 and default index knobs", o)
	}
	if o := squeezeOptions(cs[2], flags); o == nil || o.Sparsity != 0 || math.Abs(o.Budget-0.1) > 1e-12 {
		t.Errorf("sq90b: %+v, want the fixed budget 0.1", o)
	}
	if o := squeezeOptions(cs[3], flags); o == nil || o.Sparsity != 0.8 || o.Budget != 0 || !o.Hierarchical {
		t.Errorf("sq80h: %+v, want the calibrated mode with sparsity 0.8 over a hierarchical index", o)
	}
	if o := squeezeOptions(cs[4], flags); o == nil || o.Sparsity != 0.7 || o.Budget != 0 || o.Hierarchical || !o.Mass {
		t.Errorf("sq70m: %+v, want the calibrated mode with sparsity 0.7 and the attention-mass selection", o)
	}
	for i, c := range cs {
		if o := squeezeOptions(c, flags); o != nil && o.Remainder != (i >= 5) {
			t.Errorf("%s: remainder %v", c.Name, o.Remainder)
		}
	}
	if o := squeezeOptions(cs[5], flags); o.Sparsity != 0.9 || !o.Mass {
		t.Errorf("sq90mr: %+v, want the attention-mass selection at sparsity 0.9 with the remainder", o)
	}
	if o := squeezeOptions(cs[6], flags); o.Sparsity != 0 || math.Abs(o.Budget-0.1) > 1e-12 {
		t.Errorf("sq90br: %+v, want the fixed budget 0.1 with the remainder", o)
	}
	// The -squeeze-* flags reach both modes.
	flags = &options{sqCentroids: 0.1, sqWindow: 200, sqIters: 20}
	for _, c := range cs[1:] {
		if o := squeezeOptions(c, flags); o.Centroids != 0.1 || o.Window != 200 || o.Iterations != 20 {
			t.Errorf("%s with -squeeze-centroids 0.1 -squeeze-window 200 -squeeze-iters 20: %+v", c.Name, o)
		}
	}
	for _, c := range cs {
		if err := runnable(c, flags); err != nil {
			t.Errorf("%s: %v", c.Name, err)
		}
	}
}

// TestRealModelSqueezed runs sq70 (calibrated), sq70b (fixed budget) and sq70h (calibrated, hierarchical
// index) on one item of about 400 tokens with the bundled model: all keep a fraction of the keys and say
// how much.
func TestRealModelSqueezed(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the bundled model")
	}
	data, out := t.TempDir(), t.TempDir()
	var b strings.Builder
	for i := range 14 {
		fmt.Fprintf(&b, "def scale_%d(x, y):\n    \"\"\"Scale x by %d and add y.\"\"\"\n    return x * %d + y\n\n\n", i, i+2, i+2)
	}
	b.WriteString("def scale_14(x, y):\n")
	row, _ := json.Marshal(map[string]any{"_id": "scale", "context": b.String(), "input": "", "answers": []string{"    \"\"\"Scale x by 16 and add y.\"\"\""}})
	os.WriteFile(filepath.Join(data, "tinycode_lcc.jsonl"), append(row, '\n'), 0o644)
	code, stdout, stderr := runCLI(t, openEngine, "-data", data, "-tasks", "tinycode_lcc", "-out", out,
		"-model", modelDir, "-backend", "go", "-configs", "sq70,sq70b,sq70h", "-quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Logf("\n%s", stdout)
	budgets := map[string]float64{}
	for _, cfg := range []string{"sq70", "sq70b", "sq70h"} {
		done, _, err := evals.ReadPredictions(filepath.Join(out, "preds", cfg, "tinycode_lcc.jsonl"))
		if err != nil || len(done) != 1 {
			t.Fatalf("%s: predictions %v, %v", cfg, done, err)
		}
		budgets[cfg] = done["scale"].KVBudget
		if kb := done["scale"].KVBudget; kb <= 0.3 || kb >= 0.7 {
			t.Errorf("%s: kv_budget %.3f, want about 0.3 of the clustered keys plus the window and centroids", cfg, kb)
		}
	}
	if budgets["sq70"] == budgets["sq70b"] || budgets["sq70"] == budgets["sq70h"] {
		t.Errorf("sq70, sq70b and sq70h report kv_budgets %v: sq70's should differ from the others'", budgets)
	}
}
