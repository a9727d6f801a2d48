package engine

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/model"
)

const bundled = "../" + DefaultModel

var openBundled = sync.OnceValues(func() (*Model, error) {
	return Open(bundled, Options{Backend: xla.Go, CacheDir: "-"})
})

func bundledModel(t *testing.T) *Model {
	t.Helper()
	m, err := openBundled()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readJSONL[T any](t *testing.T, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var rows []T
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var r T
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, r)
	}
	return rows
}

// firstCodeLine is LongBench's code_sim first-line rule: the first line of the prediction (leading
// newlines stripped) that contains none of "`", "#", "//".
func firstCodeLine(pred string) string {
	for _, line := range strings.Split(strings.TrimLeft(pred, "\n"), "\n") {
		if !strings.Contains(line, "`") && !strings.Contains(line, "#") && !strings.Contains(line, "//") {
			return line
		}
	}
	return ""
}

// TestLCCFirstLines: greedy generation on the first 10 tinycode_lcc items gives transformers' first line.
func TestLCCFirstLines(t *testing.T) {
	if testing.Short() {
		t.Skip("long-context generation: skipped with -short")
	}
	m := bundledModel(t)
	type item struct {
		ID      string `json:"_id"`
		Context string `json:"context"`
	}
	type pred struct {
		ID   string `json:"_id"`
		Pred string `json:"pred"`
	}
	items := readJSONL[item](t, "testdata/lcc_dev_first10.jsonl.gz")
	preds := readJSONL[pred](t, "testdata/lcc_hf_preds_first10.jsonl.gz")
	if len(items) != 10 || len(preds) != 10 {
		t.Fatalf("want 10 items and predictions, got %d and %d", len(items), len(preds))
	}
	for i, it := range items {
		if preds[i].ID != it.ID {
			t.Fatalf("item %d: id %s, prediction id %s", i, it.ID, preds[i].ID)
		}
		res, err := m.Generate(context.Background(), Request{Prompt: it.Context, MaxTokens: 64})
		if err != nil {
			t.Fatal(err)
		}
		got, want := firstCodeLine(res.Text), firstCodeLine(preds[i].Pred)
		if got != want {
			t.Errorf("%s: first line %q, transformers %q", it.ID, got, want)
		}
	}
}

// TestGenerateStreamsAndStops checks streaming, stop strings and the report fields on the bundled model.
func TestGenerateStreamsAndStops(t *testing.T) {
	m := bundledModel(t)
	prompt := "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
	var streamed strings.Builder
	res, err := m.Generate(context.Background(), Request{Prompt: prompt, MaxTokens: 48,
		OnText: func(s string) error { streamed.WriteString(s); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if streamed.String() != res.Text {
		t.Fatalf("streamed %q != result %q", streamed.String(), res.Text)
	}
	// The golden continuation begins "    return n-1\n\n\ndef _get_fibonacci(n):".
	if !strings.HasPrefix(res.Text, "    return n-1\n\n\ndef _get_fibonacci(n):") {
		t.Errorf("greedy text %q does not start like transformers'", res.Text)
	}
	if res.PromptTokens != 23 {
		t.Errorf("prompt tokens = %d, want 23 (BOS included)", res.PromptTokens)
	}
	stopped, err := m.Generate(context.Background(), Request{Prompt: prompt, MaxTokens: 48, Stop: []string{"def "}})
	if err != nil {
		t.Fatal(err)
	}
	if stopped.StopReason != model.StopString || stopped.Text != "    return n-1\n\n\n" {
		t.Errorf("stop at %q: got %q (%s)", "def ", stopped.Text, stopped.StopReason)
	}
}

func TestConcurrentGenerate(t *testing.T) {
	m := bundledModel(t)
	prompts := []string{"import os\n", "class Stack:\n", "def add(a, b):\n", "for i in range(10):\n"}
	want := make([]string, len(prompts))
	for i, p := range prompts {
		r, err := m.Generate(context.Background(), Request{Prompt: p, MaxTokens: 12})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = r.Text
	}
	var wg sync.WaitGroup
	got := make([]string, len(prompts))
	errs := make([]error, len(prompts))
	for i, p := range prompts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := m.Generate(context.Background(), Request{Prompt: p, MaxTokens: 12})
			got[i], errs[i] = r.Text, err
		}()
	}
	wg.Wait()
	for i := range prompts {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i] != want[i] {
			t.Errorf("prompt %d concurrently: %q, alone: %q", i, got[i], want[i])
		}
	}
}

func TestPromptTooLong(t *testing.T) {
	m := bundledModel(t)
	_, err := m.Generate(context.Background(), Request{PromptTokens: make([]int, m.Runner.MaxLen()+1), MaxTokens: 1})
	if !errors.Is(err, model.ErrContextTooLong) {
		t.Fatalf("got %v, want ErrContextTooLong", err)
	}
}

// TestOpenErrors: each broken model directory gives a clear error naming the problem.
func TestOpenErrors(t *testing.T) {
	copyModel := func(t *testing.T) string {
		dir := t.TempDir()
		entries, err := os.ReadDir(bundled)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(bundled, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	edit := func(t *testing.T, dir, name string, f func([]byte) []byte) {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T) string
		want  string
	}{
		{"missing directory", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") }, "nope"},
		{"truncated shard", func(t *testing.T) string {
			d := copyModel(t)
			edit(t, d, "model-00002-of-00003.safetensors", func(b []byte) []byte { return b[:len(b)/2] })
			return d
		}, "model-00002-of-00003.safetensors"},
		{"unknown model_type", func(t *testing.T) string {
			d := copyModel(t)
			edit(t, d, "config.json", func(b []byte) []byte {
				return []byte(strings.Replace(string(b), `"model_type": "llama"`, `"model_type": "gpt2"`, 1))
			})
			return d
		}, `"gpt2"`},
		{"wrong tensor shape", func(t *testing.T) string {
			d := copyModel(t)
			edit(t, d, "config.json", func(b []byte) []byte {
				return []byte(strings.Replace(string(b), `"intermediate_size": 1024`, `"intermediate_size": 1000`, 1))
			})
			return d
		}, "mlp"},
		{"malformed tokenizer.json", func(t *testing.T) string {
			d := copyModel(t)
			edit(t, d, "tokenizer.json", func(b []byte) []byte { return b[:len(b)/3] })
			return d
		}, "tokenizer.json"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Open(tc.setup(t), Options{Backend: xla.Go})
			if err == nil {
				m.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "goroutine") {
				t.Errorf("error carries a panic trace: %q", err)
			}
		})
	}
}
