package tokenizer

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestAPI(t *testing.T) {
	tk, err := Load("../models/tinycode-llama-16m") // a directory
	if err != nil {
		t.Fatal(err)
	}
	if got := tk.VocabSize(); got != 8192 {
		t.Errorf("VocabSize = %d, want 8192", got)
	}
	if id, ok := tk.BOS(); !ok || id != 8184 {
		t.Errorf("BOS = %d, %v; want 8184", id, ok)
	}
	if id, ok := tk.EOS(); !ok || id != 8185 {
		t.Errorf("EOS = %d, %v; want 8185 (from tokenizer_config.json)", id, ok)
	}
	if id, ok := tk.TokenToID("<|end_of_text|>"); !ok || id != 8185 {
		t.Errorf("TokenToID(<|end_of_text|>) = %d, %v", id, ok)
	}
	if tok, ok := tk.IDToToken(8184); !ok || tok != "<|begin_of_text|>" {
		t.Errorf("IDToToken(8184) = %q, %v", tok, ok)
	}
	if _, ok := tk.IDToToken(8192); ok {
		t.Error("IDToToken(8192) succeeded")
	}
	if _, ok := tk.IDToToken(-1); ok {
		t.Error("IDToToken(-1) succeeded")
	}
	if !tk.IsSpecial(8185) || tk.IsSpecial(100) || tk.IsSpecial(-5) || tk.IsSpecial(1<<30) {
		t.Error("IsSpecial wrong")
	}
	ids := tk.Encode("def f(): pass", false)
	if ids[0] == 8184 {
		t.Error("Encode(addSpecialTokens=false) added BOS")
	}
	if got := tk.Decode(append([]int{8184}, ids...), true); got != "def f(): pass" {
		t.Errorf("Decode(skipSpecialTokens) = %q", got)
	}
	if got := tk.Decode([]int{-1, 99999, ids[0]}, false); got != tk.Decode(ids[:1], false) {
		t.Errorf("Decode ignores unknown ids: got %q", got)
	}
	if got := tk.Encode("", true); !slices.Equal(got, []int{8184}) {
		t.Errorf("Encode(\"\", true) = %v", got)
	}

	ll3 := loadTokenizer(t, "llama3")
	if _, ok := ll3.BOS(); ok {
		t.Error("llama3 (ByteLevel post-processor only) reports a BOS")
	}
	if got := ll3.VocabSize(); got != 128256 {
		t.Errorf("llama3 VocabSize = %d", got)
	}
	ll2 := loadTokenizer(t, "llama2")
	if id, ok := ll2.BOS(); !ok || id != 1 {
		t.Errorf("llama2 BOS = %d, %v", id, ok)
	}
	q := loadTokenizer(t, "qwen3")
	if id, ok := q.EOS(); !ok || id != 151645 {
		t.Errorf("qwen3 EOS = %d, %v; want <|im_end|> = 151645 from qwen3.tokenizer_config.json", id, ok)
	}
	if _, ok := ll3.EOS(); ok {
		t.Error("llama3 has no tokenizer_config.json but reports an EOS")
	}
	if id, _ := q.TokenToID("<think>"); q.IsSpecial(id) {
		t.Error("<think> should not be special")
	}
	if got := q.Decode(q.Encode("<think>x</think><|im_end|>", false), true); got != "<think>x</think>" {
		t.Errorf("qwen3 skip special: %q", got)
	}
}

func TestInvalidUTF8(t *testing.T) {
	tk := loadTokenizer(t, "llama3")
	got := tk.Encode("a\xffb", false)
	want := tk.Encode("a\uFFFDb", false)
	if !slices.Equal(got, want) {
		t.Errorf("invalid UTF-8: %v, want %v", got, want)
	}
}

func TestConcurrentEncode(t *testing.T) {
	fast := loadTokenizer(t, "qwen3")
	slow := withoutFastScan(fast) // regexp2 shared by all goroutines
	cases := loadGolden(t, "testdata/golden-qwen3.jsonl.gz")
	workers := 16
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			tk := fast
			if w%4 == 3 {
				tk = slow
			}
			for k := range cases {
				c := cases[(k+w*7)%len(cases)]
				if got := tk.Encode(c.Text, true); !slices.Equal(got, c.IDs) {
					errs <- fmt.Sprintf("worker %d: %s mismatch", w, short(c.Text))
					return
				}
				if got := tk.Decode(c.IDs, false); got != c.Decoded {
					errs <- fmt.Sprintf("worker %d: decode mismatch", w)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestCacheEviction encodes more distinct words than the cache holds.
func TestCacheEviction(t *testing.T) {
	ref := loadTokenizer(t, "llama3")
	small := *ref
	m := *ref.model
	m.cache = newWordCache(cacheShards * 2)
	small.model = &m
	r := rand.New(rand.NewPCG(5, 6))
	var sb strings.Builder
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&sb, " w%x%c", r.Uint32(), 'a'+rune(r.IntN(26)))
	}
	text := sb.String()
	for i := 0; i < 2; i++ {
		if got, want := small.Encode(text, false), ref.Encode(text, false); !slices.Equal(got, want) {
			t.Fatal("small-cache tokenizer disagrees")
		}
	}
}

// TestMergeHeapMatchesSmall checks that the two BPE merge loops agree.
func TestMergeHeapMatchesSmall(t *testing.T) {
	m := loadTokenizer(t, "llama3").model
	r := rand.New(rand.NewPCG(7, 8))
	letters := "aaabbcdeeeilnorst  ĠĊ"
	for i := 0; i < 2000; i++ {
		n := 2 + r.IntN(60)
		var b []byte
		for len(b) < n {
			b = append(b, letters[r.IntN(len(letters))])
		}
		syms := make([]int32, len(b))
		for k, c := range b {
			syms[k] = m.byteIDs[c]
		}
		small := m.mergeSmall(slices.Clone(syms))
		heap := m.mergeHeap(slices.Clone(syms))
		if !slices.Equal(small, heap) {
			t.Fatalf("%q: small %v heap %v", b, small, heap)
		}
	}
}

func TestLongWord(t *testing.T) {
	// LLaMA-2 has no pre-tokenizer: the whole text is one BPE word, which
	// takes the heap-based merge path.
	tk := loadTokenizer(t, "llama2")
	text := strings.Repeat("hello world, ", 200)
	ids := tk.Encode(text, false)
	if got := tk.Decode(ids, false); got != text {
		t.Errorf("round trip failed: %q", short(got))
	}
	again := tk.Encode(strings.Repeat("hello world, ", 2), false)
	if !slices.Equal(ids[:len(again)-1], again[:len(again)-1]) {
		t.Errorf("long and short encodings disagree: %v vs %v", ids[:len(again)], again)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "nope.json")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "tokenizer.json") {
		t.Errorf("Load of an empty directory: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"model": `), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "JSON") {
		t.Errorf("Load of malformed JSON: %v", err)
	}
}

// minimal is a tiny valid BPE tokenizer.json with %s slots for the
// normalizer, pre-tokenizer, post-processor and decoder.
const minimal = `{"added_tokens": [], "normalizer": %s, "pre_tokenizer": %s,
 "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
 "post_processor": %s, "decoder": %s}`

func minimalJSON(norm, pre, post, dec string) string {
	return fmt.Sprintf(minimal, norm, pre, post, dec)
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, json, want string
	}{
		{"malformed", `{"model": {`, "invalid JSON"},
		{"not an object", `[1, 2]`, "invalid JSON"},
		{"no model", `{"added_tokens": []}`, `missing "model"`},
		{"null model", `{"model": null}`, `missing "model"`},
		{"unknown model", `{"model": {"type": "WordPiece", "vocab": {}}}`, `"WordPiece"`},
		{"unigram model", `{"model": {"type": "Unigram", "vocab": []}}`, `"Unigram"`},
		{"no vocab", `{"model": {"type": "BPE", "merges": []}}`, "no vocab"},
		{"merge unknown token", `{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}}`, `"c"`},
		{"merge unknown result", `{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}}`, `"ab"`},
		{"bad merge string", `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}`, "merge 0"},
		{"bad merges", `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1]}}`, "merges"},
		{"bad unk", `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}}`, `"<unk>"`},
		{"unknown pre-tokenizer", minimalJSON("null", `{"type": "UnicodeScripts"}`, "null", "null"), `pre_tokenizer type "UnicodeScripts"`},
		{"unknown nested pre-tokenizer", minimalJSON("null", `{"type": "Sequence", "pretokenizers": [{"type": "Fancy"}]}`, "null", "null"), `"Fancy"`},
		{"unknown normalizer", minimalJSON(`{"type": "Precompiled", "precompiled_charsmap": ""}`, "null", "null", "null"), `normalizer type "Precompiled"`},
		{"unknown decoder", minimalJSON("null", "null", "null", `{"type": "CTC"}`), `decoder type "CTC"`},
		{"unknown post-processor", minimalJSON("null", "null", `{"type": "Magic"}`, "null"), `post_processor type "Magic"`},
		{"missing type", minimalJSON("null", `{"pattern": {"String": " "}}`, "null", "null"), `missing "type"`},
		{"bad regex", minimalJSON("null", `{"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}`, "null", "null"), "invalid regex"},
		{"bad behavior", minimalJSON("null", `{"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}`, "null", "null"), `"Sideways"`},
		{"bad template", minimalJSON("null", "null", `{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {}}`, "null"), `"<s>"`},
		{"template id out of vocab", minimalJSON("null", "null", `{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [99], "tokens": ["<s>"]}}}`, "null"), "99"},
		{"bad prepend scheme", minimalJSON("null", `{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "sometimes"}`, "null", "null"), `"sometimes"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.json))
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
	if _, err := Parse([]byte(minimalJSON("null", "null", "null", "null"))); err != nil {
		t.Errorf("minimal tokenizer: %v", err)
	}
}

// TestSplitBeforeExact checks that cutting long SentencePiece-style words
// before "▁" (an optimisation) gives the same ids as merging whole words.
func TestSplitBeforeExact(t *testing.T) {
	tk := loadTokenizer(t, "llama2")
	if tk.model.splitBefore == "" {
		t.Fatal("splitBefore is not enabled for llama2")
	}
	whole := *tk
	m := *tk.model
	m.splitBefore = ""
	m.cache = newWordCache(cacheCapacity)
	whole.model = &m
	r := rand.New(rand.NewPCG(9, 10))
	alphabet := []string{"a", "b", "the", "ing", " ", " ", "  ", "▁", "\n", "\t", "é", "中", "😀", "'", ".", "1", "<s>", "\u00a0"}
	texts := []string{strings.Repeat("hello world, ", 50)}
	for _, c := range loadGolden(t, "testdata/golden-llama2.jsonl.gz") {
		texts = append(texts, c.Text)
	}
	for i := 0; i < 300; i++ {
		var sb strings.Builder
		for n := r.IntN(80); n > 0; n-- {
			sb.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		texts = append(texts, sb.String())
	}
	for _, s := range texts {
		if got, want := tk.Encode(s, true), whole.Encode(s, true); !slices.Equal(got, want) {
			t.Fatalf("%s: split %v, whole %v", short(s), got, want)
		}
	}
}

// TestFastJSONMatchesSlow checks that the hand-written JSON path builds the
// same model as encoding/json.
func TestFastJSONMatchesSlow(t *testing.T) {
	for _, gs := range goldenSets {
		if quick() && (gs.name == "llama3" || gs.name == "qwen3") {
			continue // large files; parsing them twice is slow under -race
		}
		var data []byte
		if strings.HasSuffix(gs.tokenizer, ".gz") {
			data = readGzip(t, gs.tokenizer)
		} else {
			data = readFile(t, gs.tokenizer)
		}
		if _, err := fastParse(data); err != nil {
			t.Errorf("%s: fast path not taken: %v", gs.name, err)
		}
		fast, err1 := parse(data, defaultOptions)
		slow, err2 := parse(data, buildOptions{noFastJSON: true, cacheCapacity: 16})
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: %v / %v", gs.name, err1, err2)
		}
		if !maps.Equal(fast.model.vocab, slow.model.vocab) || !maps.Equal(fast.model.merges, slow.model.merges) ||
			!slices.Equal(fast.idToToken, slow.idToToken) || !slices.Equal(fast.special, slow.special) ||
			fast.model.unkID != slow.model.unkID || fast.model.byteFallback != slow.model.byteFallback ||
			fast.model.ignoreMerges != slow.model.ignoreMerges || fast.model.prefix != slow.model.prefix {
			t.Errorf("%s: fast and slow JSON paths disagree", gs.name)
		}
	}
}

// TestFastJSONEdgeCases feeds the fast path unusual but valid JSON.
func TestFastJSONEdgeCases(t *testing.T) {
	docs := []string{
		`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u00e9": 3, "\"q\\": 4}, "merges": ["a b"], "fuse_unk": false, "dropout": null}}`,
		` { "truncation" : null , "model" : { "merges" : [ [ "a" , "b" ] ] , "vocab" : { "ab" : 2 , "a" : 0 , "b" : 1 } , "type" : "BPE" } , "extra": [1, {"x": [true, false]}, -2.5e3] } `,
		`{"model": {"type": "BPE", "vocab": {}, "merges": []}, "added_tokens": [{"id": 0, "content": "x", "special": true}]}`,
	}
	for _, d := range docs {
		fast, err1 := parse([]byte(d), defaultOptions)
		slow, err2 := parse([]byte(d), buildOptions{noFastJSON: true, cacheCapacity: 16})
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: %v / %v", d, err1, err2)
		}
		if !maps.Equal(fast.model.vocab, slow.model.vocab) || !maps.Equal(fast.model.merges, slow.model.merges) {
			t.Errorf("%s: paths disagree", d)
		}
	}
	bad := []string{`{"model": {"vocab": {"a": 1.5}, "merges": []}}`, `{"model": {"vocab": {"a": -1}}}`,
		`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a  b"]}}`, `{"model": {"type": "BPE"} "x": 1}`,
		`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a"]]}}`, `{"model": {"type": "BPE", "vocab": {"a": 0}}} x`}
	for _, d := range bad {
		if _, err := Parse([]byte(d)); err == nil {
			t.Errorf("%s: no error", d)
		}
	}
}

// TestCorruptFiles truncates and corrupts a real tokenizer.json: Parse must
// return an error (or a working tokenizer), never panic.
func TestCorruptFiles(t *testing.T) {
	data := readFile(t, "../models/tinycode-llama-16m/tokenizer.json")
	r := rand.New(rand.NewPCG(11, 12))
	n := 60
	if quick() {
		n = 15
	}
	for i := 0; i < n; i++ {
		cut := r.IntN(len(data))
		if _, err := Parse(data[:cut]); err == nil {
			t.Errorf("truncation at %d parsed", cut)
		}
		bad := slices.Clone(data)
		for k := 0; k < 3; k++ {
			bad[r.IntN(len(bad))] = "{}[]\",: \\x0"[r.IntN(11)]
		}
		if tk, err := Parse(bad); err == nil {
			tk.Decode(tk.Encode("def f(x): return x", true), false)
		}
	}
}
