package tokenizer

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// goldenCase is one line of a golden-*.jsonl.gz file, produced by the Rust
// tokenizers library.
type goldenCase struct {
	Text    string `json:"text"`
	IDs     []int  `json:"ids"`
	Decoded string `json:"decoded"`
}

// goldenSet names a tokenizer file and its reference encodings.
type goldenSet struct {
	name, tokenizer, golden string
}

var goldenSets = []goldenSet{
	{"llama2", "testdata/llama2.tokenizer.json.gz", "testdata/golden-llama2.jsonl.gz"},
	{"llama3", "testdata/llama3.tokenizer.json.gz", "testdata/golden-llama3.jsonl.gz"},
	{"qwen3", "testdata/qwen3.tokenizer.json.gz", "testdata/golden-qwen3.jsonl.gz"},
	{"tinycode", "../models/tinycode-llama-16m/tokenizer.json", "testdata/golden-tinycode.jsonl.gz"},
}

// raceEnabled is set when testing with -race; the slowest tests then do less.
var raceEnabled bool

// quick reports whether the slowest tests should cut their work down.
func quick() bool { return raceEnabled || testing.Short() }

var (
	loadMu    sync.Mutex
	loadCache = map[string]*Tokenizer{}
)

// loadTokenizer loads (once per test binary) the named golden tokenizer.
func loadTokenizer(t testing.TB, name string) *Tokenizer {
	t.Helper()
	loadMu.Lock()
	defer loadMu.Unlock()
	if tk, ok := loadCache[name]; ok {
		return tk
	}
	for _, gs := range goldenSets {
		if gs.name == name {
			tk, err := Load(gs.tokenizer)
			if err != nil {
				t.Fatal(err)
			}
			loadCache[name] = tk
			return tk
		}
	}
	t.Fatalf("no golden set %q", name)
	return nil
}

// readGzip returns the decompressed contents of a .gz file.
func readGzip(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []byte
	buf := make([]byte, 1<<16)
	for {
		n, err := zr.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			break
		}
	}
	return out
}

func loadGolden(t testing.TB, path string) []goldenCase {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var cases []goldenCase
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var c goldenCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(cases) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return cases
}

func short(s string) string {
	if len(s) > 60 {
		return fmt.Sprintf("%q...", s[:60])
	}
	return fmt.Sprintf("%q", s)
}

func TestGolden(t *testing.T) {
	for _, gs := range goldenSets {
		t.Run(gs.name, func(t *testing.T) {
			tk := loadTokenizer(t, gs.name)
			for i, c := range loadGolden(t, gs.golden) {
				got := tk.Encode(c.Text, true)
				if !slices.Equal(got, c.IDs) {
					t.Errorf("case %d %s: Encode\n got %v\nwant %v", i, short(c.Text), got, c.IDs)
				}
				if dec := tk.Decode(c.IDs, false); dec != c.Decoded {
					t.Errorf("case %d %s: Decode\n got %q\nwant %q", i, short(c.Text), dec, c.Decoded)
				}
			}
		})
	}
}

func TestGoldenFilesPresent(t *testing.T) {
	for _, gs := range goldenSets {
		for _, p := range []string{gs.tokenizer, gs.golden} {
			if _, err := os.Stat(filepath.FromSlash(p)); err != nil {
				t.Error(err)
			}
		}
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
