package tokenizer

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzTexts are encoded by every tokenizer FuzzLoadTokenizer manages to build.
var fuzzTexts = []string{
	"", "hello world", "Hello  World!\n\tx", "def f(x):\n    return x**2  # 12345\n",
	"日本語 é e\u0301 👍🏽", "<s>hi</s><|endoftext|>[CLS]", "\xff\xfe not utf-8 \xc3", "▁▁ a▁b ##ab",
}

// FuzzLoadTokenizer: whatever bytes tokenizer.json holds, Parse returns an error or a tokenizer that
// works: Encode yields ids inside the vocabulary, Decode and the stream decoder return valid UTF-8
// for any ids (out-of-range and negative ones included), and nothing panics. The seeds
// (testdata/fuzz/FuzzLoadTokenizer) are cut-down copies of the four real tokenizers of the
// repository, hand-written files covering the other components, and broken files.
func FuzzLoadTokenizer(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		tk, err := Parse(data)
		if err != nil {
			if tk != nil {
				t.Fatal("a tokenizer and an error")
			}
			if !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Fatalf("error %q does not say where it comes from", err)
			}
			return
		}
		checkUsable(t, tk)
	})
}

// checkUsable exercises every public method of tk on fixed inputs.
func checkUsable(t *testing.T, tk *Tokenizer) {
	t.Helper()
	n := tk.VocabSize()
	for _, s := range fuzzTexts {
		for _, special := range []bool{false, true} {
			ids := tk.Encode(s, special)
			for _, id := range ids {
				if id < 0 || id >= n {
					t.Fatalf("Encode(%q) gave id %d outside the vocabulary of %d", s, id, n)
				}
				if _, ok := tk.IDToToken(id); !ok {
					t.Fatalf("Encode(%q) gave id %d, which has no token", s, id)
				}
			}
			for _, skip := range []bool{false, true} {
				if out := tk.Decode(ids, skip); !utf8.ValidString(out) {
					t.Fatalf("Decode gave invalid UTF-8 %q", out)
				}
				d := tk.NewStreamDecoder(skip)
				for _, id := range ids {
					if out := d.Push(id); !utf8.ValidString(out) {
						t.Fatalf("stream decoder gave invalid UTF-8 %q", out)
					}
				}
				d.Flush()
			}
		}
	}
	hostile := []int{-1, n, n + 1, 1 << 40, -1 << 40, 0}
	if out := tk.Decode(hostile, false); !utf8.ValidString(out) {
		t.Fatalf("Decode of hostile ids gave invalid UTF-8 %q", out)
	}
	d := tk.NewStreamDecoder(true)
	for _, id := range hostile {
		d.Push(id)
	}
	d.Flush()
	for id := -2; id < min(n, 300)+2; id++ {
		tk.IDToToken(id)
		tk.IsSpecial(id)
	}
	tk.TokenToID("a")
	tk.BOS()
	tk.EOS()
}

// TestLoadHostileFiles: Load gives an error, never a panic, for a missing path, a directory without
// tokenizer.json, a corrupt .gz, a broken tokenizer_config.json beside a good tokenizer.json, and a
// tokenizer.json that is a directory.
func TestLoadHostileFiles(t *testing.T) {
	good, err := os.ReadFile("../models/tinycode-llama-16m/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	write := func(t *testing.T, dir, name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(good)
	zw.Close()
	tests := map[string]func(t *testing.T) string{
		"missing path":                     func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope.json") },
		"directory without tokenizer.json": func(t *testing.T) string { return t.TempDir() },
		"tokenizer.json is a directory": func(t *testing.T) string {
			d := t.TempDir()
			if err := os.Mkdir(filepath.Join(d, "tokenizer.json"), 0o755); err != nil {
				t.Fatal(err)
			}
			return d
		},
		"truncated gzip": func(t *testing.T) string {
			d := t.TempDir()
			write(t, d, "x.tokenizer.json.gz", gz.Bytes()[:gz.Len()/2])
			return filepath.Join(d, "x.tokenizer.json.gz")
		},
		"not gzip": func(t *testing.T) string {
			d := t.TempDir()
			write(t, d, "x.tokenizer.json.gz", good[:100])
			return filepath.Join(d, "x.tokenizer.json.gz")
		},
		"broken tokenizer_config.json": func(t *testing.T) string {
			d := t.TempDir()
			write(t, d, "tokenizer.json", good)
			write(t, d, "tokenizer_config.json", []byte(`{"eos_token": `))
			return d
		},
		"empty tokenizer.json": func(t *testing.T) string {
			d := t.TempDir()
			write(t, d, "tokenizer.json", nil)
			return d
		},
	}
	for name, setup := range tests {
		t.Run(name, func(t *testing.T) {
			tk, err := Load(setup(t))
			if err == nil || tk != nil {
				t.Fatalf("Load: %v, %v; want an error", tk, err)
			}
			if !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Errorf("error %q", err)
			}
		})
	}
	// A tokenizer_config.json whose eos_token is unknown or oddly typed is ignored, not fatal.
	for _, cfg := range []string{`{"eos_token": "<nope>"}`, `{"eos_token": 7}`, `{"eos_token": {"content": 7}}`, `{}`} {
		d := t.TempDir()
		write(t, d, "tokenizer.json", good)
		write(t, d, "tokenizer_config.json", []byte(cfg))
		tk, err := Load(d)
		if err != nil {
			t.Fatalf("%s: %v", cfg, err)
		}
		if _, ok := tk.EOS(); ok {
			t.Errorf("%s: an EOS token was set", cfg)
		}
		checkUsable(t, tk)
	}
}
