package engine

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/squeezeai/sqllm/backend/xla"
)

const fixedContext = `import math


class Vector:
    """A 2-D vector."""

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __add__(self, other):
        return Vector(self.x + other.x, self.y + other.y)

    def __sub__(self, other):
        return Vector(self.x - other.x, self.y - other.y)

    def norm(self):
        return math.sqrt(self.x ** 2 + self.y ** 2)
`

var questions = []string{"\n    def dot(self, other):\n", "\n    def __mul__(self, k):\n", "", "\n    def __repr__(self):\n"}

// uncached generates from the same token ids without any prefix cache.
func uncached(t *testing.T, m *Model, question string) []int {
	t.Helper()
	ids := append(m.Tokenizer.Encode(fixedContext, true), m.Tokenizer.Encode(question, false)...)
	res, err := m.Generate(context.Background(), Request{PromptTokens: ids, MaxTokens: 24})
	if err != nil {
		t.Fatal(err)
	}
	return res.Tokens
}

// TestContextMatchesUncached: questions answered from a cached prefix (computed, then memory and disk hits)
// give exactly the tokens of the uncached prompt, several questions in a row.
func TestContextMatchesUncached(t *testing.T) {
	dir := t.TempDir()
	m1, err := Open(bundled, Options{Backend: xla.Go, CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m1.Close()
	want := make([][]int, len(questions))
	for i, q := range questions {
		want[i] = uncached(t, m1, q)
	}
	ask := func(t *testing.T, m *Model, wantSource CacheSource) {
		t.Helper()
		c, err := m.NewContext(context.Background(), fixedContext)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if c.Source != wantSource {
			t.Fatalf("source %q, want %q (note %q)", c.Source, wantSource, c.Note)
		}
		for i, q := range questions {
			res, err := c.Generate(context.Background(), Request{Prompt: q, MaxTokens: 24})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(res.Tokens, want[i]) {
				t.Errorf("%s, question %d: tokens %v, uncached %v", wantSource, i, res.Tokens, want[i])
			}
		}
	}
	ask(t, m1, FromComputed)
	ask(t, m1, FromMemory)
	// A second model instance (as a new process would) finds the entry on disk.
	m2, err := Open(bundled, Options{Backend: xla.Go, CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	ask(t, m2, FromDisk)

	// A damaged entry is refused, recomputed and rewritten; the answers stay right.
	entries, _ := filepath.Glob(filepath.Join(dir, "*.kv"))
	if len(entries) != 1 {
		t.Fatalf("want one cache entry, got %v", entries)
	}
	for _, damage := range []string{"flip", "truncate"} {
		b, err := os.ReadFile(entries[0])
		if err != nil {
			t.Fatal(err)
		}
		if damage == "flip" {
			b[len(b)-100] ^= 0x40
		} else {
			b = b[:len(b)*2/3]
		}
		if err := os.WriteFile(entries[0], b, 0o644); err != nil {
			t.Fatal(err)
		}
		m3, err := Open(bundled, Options{Backend: xla.Go, CacheDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		c, err := m3.NewContext(context.Background(), fixedContext)
		if err != nil {
			t.Fatal(err)
		}
		if c.Source != FromComputed || !strings.Contains(c.Note, "refused") {
			t.Errorf("%s entry: source %q, note %q; want a refusal and a recompute", damage, c.Source, c.Note)
		}
		c.Close()
		ask(t, m3, FromMemory)
		m3.Close()
	}
	m4, err := Open(bundled, Options{Backend: xla.Go, CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m4.Close()
	ask(t, m4, FromDisk) // the rewritten entry is good
}

// TestContextFromAnotherModel: an entry written for a different checkpoint is never used.
func TestContextFromAnotherModel(t *testing.T) {
	dir := t.TempDir()
	m, err := Open(bundled, Options{Backend: xla.Go, CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// Same key, other model fingerprint: as if the checkpoint had changed under the same cache.
	m.cache.mem.Purge()
	m.cache.modelFP, m.cache.tokFP = "another-model", "another-tokenizer"
	c, err = m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Source == FromDisk {
		t.Fatal("an entry of another model was used")
	}
}

func TestContextTooLong(t *testing.T) {
	m := bundledModel(t)
	if _, err := m.NewContextTokens(context.Background(), make([]int, m.Runner.MaxLen())); err == nil ||
		!strings.Contains(err.Error(), "context") {
		t.Fatalf("got %v", err)
	}
}
