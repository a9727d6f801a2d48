package engine

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/llama"
)

// squeezeFixture is a fixed context of 450 tokens (the start of a tinycode_lcc item) and a user input.
func squeezeFixture(t *testing.T, m *Model) (fixed, input []int) {
	t.Helper()
	type item struct {
		Context string `json:"context"`
	}
	items := readJSONL[item](t, "testdata/lcc_dev_first10.jsonl.gz")
	ids := m.Tokenizer.Encode(items[0].Context, true)
	if len(ids) < 470 {
		t.Fatalf("item 0 has only %d tokens", len(ids))
	}
	return ids[:450], ids[450:470]
}

// TestSqueezeIndexDiskCache: a squeezed context (calibrated mode) computed once is found on disk by
// another model instance with its squeeze index, which is loaded instead of clustering and gives the
// same greedy tokens; a damaged index file (flipped byte, truncated, or intact but with impossible
// contents) is refused, recomputed and rewritten.
func TestSqueezeIndexDiskCache(t *testing.T) {
	dir := t.TempDir()
	open := func() *Model {
		m, err := Open(bundled, Options{Backend: xla.Go, CacheDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	opts := &llama.SqueezeOptions{Sparsity: 0.7}
	m1 := open()
	defer m1.Close()
	fixed, input := squeezeFixture(t, m1)
	ask := func(m *Model) (*Context, []int) {
		t.Helper()
		c, err := m.NewContextSqueezed(context.Background(), fixed, opts)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Generate(context.Background(), Request{PromptTokens: input, MaxTokens: 10})
		if err != nil {
			t.Fatal(err)
		}
		return c, res.Tokens
	}
	c, want := ask(m1)
	info, ok := c.Squeeze()
	if c.Source != FromComputed || !ok || info.Loaded || info.ClusterTime <= 0 || info.CalibrateTime <= 0 || c.Note != "" {
		t.Fatalf("first context: source %q, info %+v, note %q", c.Source, info, c.Note)
	}
	c.Close()
	t.Logf("computed: kept fraction %.3f, clustering %v, calibration %v; tokens %v", info.KeptFraction,
		info.ClusterTime, info.CalibrateTime, want)
	key, _, err := m1.squeezeIndexEntry(fixed, *opts)
	if err != nil {
		t.Fatal(err)
	}
	path := m1.cache.disk.Path(key)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no squeeze index entry: %v", err)
	}

	// Another instance (as another process): KV and index from disk, same tokens.
	loadedOK := func(why string) {
		t.Helper()
		m := open()
		defer m.Close()
		c, got := ask(m)
		defer c.Close()
		info, _ := c.Squeeze()
		if c.Source != FromDisk || !info.Loaded || info.ClusterTime != 0 || c.Note != "" {
			t.Errorf("%s: source %q, info %+v, note %q; want the index loaded from disk", why, c.Source, info, c.Note)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: tokens %v, freshly clustered %v", why, got, want)
		}
	}
	loadedOK("disk round trip")

	// Damaged index files: refused (the note says so), recomputed, same tokens, and rewritten.
	damages := map[string]func(b []byte) []byte{
		"flipped byte": func(b []byte) []byte { b[len(b)-20] ^= 0x10; return b },
		"truncated":    func(b []byte) []byte { return b[:len(b)*3/4] },
	}
	for name, damage := range damages {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, damage(b), 0o644); err != nil {
			t.Fatal(err)
		}
		m := open()
		c, got := ask(m)
		info, _ := c.Squeeze()
		if c.Source != FromDisk || info.Loaded || !strings.Contains(c.Note, "squeeze index refused") {
			t.Errorf("%s: source %q, loaded %v, note %q; want a refused index", name, c.Source, info.Loaded, c.Note)
		}
		t.Logf("%s: note %q", name, c.Note)
		if !slices.Equal(got, want) {
			t.Errorf("%s: tokens %v, want %v", name, got, want)
		}
		c.Close()
		m.Close()
		loadedOK(name + ", rewritten")
	}

	// An entry with valid checksums but impossible contents (a label beyond the centroids).
	_, meta, _ := m1.squeezeIndexEntry(fixed, *opts)
	blobs, err := m1.cache.disk.Read(key, meta)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint16(blobs[2][4:], math.MaxInt16)
	if err := m1.cache.disk.Write(key, meta, blobs); err != nil {
		t.Fatal(err)
	}
	m := open()
	defer m.Close()
	c, got := ask(m)
	defer c.Close()
	if info, _ := c.Squeeze(); info.Loaded || !strings.Contains(c.Note, "label 32767") || !slices.Equal(got, want) {
		t.Errorf("bad label: loaded %v, note %q, tokens %v", info.Loaded, c.Note, got)
	}
	loadedOK("bad label, rewritten")
}

// TestSqueezeSparsityZeroIsDense: options with neither a budget nor a sparsity mean dense attention;
// both set is an error.
func TestSqueezeSparsityZeroIsDense(t *testing.T) {
	m := bundledModel(t)
	fixed, input := squeezeFixture(t, m)
	gen := func(sq *llama.SqueezeOptions) ([]int, bool) {
		c, err := m.NewContextSqueezed(context.Background(), fixed, sq)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, squeezed := c.Squeeze()
		res, err := c.Generate(context.Background(), Request{PromptTokens: input, MaxTokens: 8})
		if err != nil {
			t.Fatal(err)
		}
		return res.Tokens, squeezed
	}
	dense, _ := gen(nil)
	zero, squeezed := gen(&llama.SqueezeOptions{Sparsity: 0, Centroids: 0.1})
	if squeezed || !slices.Equal(zero, dense) {
		t.Errorf("sparsity 0: squeezed %v, tokens %v, dense %v", squeezed, zero, dense)
	}
	if _, err := m.NewContextSqueezed(context.Background(), fixed, &llama.SqueezeOptions{Budget: 0.3, Sparsity: 0.7}); err == nil ||
		!strings.Contains(err.Error(), "both") {
		t.Errorf("budget and sparsity: %v", err)
	}
}
