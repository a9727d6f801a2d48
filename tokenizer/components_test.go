package tokenizer

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// preTok runs the pre-tokenizer described by js on s.
func preTok(t *testing.T, js, s string) []string {
	t.Helper()
	p, err := parsePreTokenizer(json.RawMessage(js), defaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, pc := range preTokenizeAll(p, nil, piece{s, true}) {
		out = append(out, pc.text)
	}
	return out
}

func TestSplitBehaviors(t *testing.T) {
	// Expected splits from the Rust library's NormalizedString::split tests.
	tests := map[string][]string{
		"Removed":            {"The", "final", "countdown"},
		"Isolated":           {"The", "-", "final", "-", "-", "countdown"},
		"MergedWithPrevious": {"The-", "final-", "-", "countdown"},
		"MergedWithNext":     {"The", "-final", "-", "-countdown"},
		"Contiguous":         {"The", "-", "final", "--", "countdown"},
	}
	for behavior, want := range tests {
		for _, pat := range []string{`{"String": "-"}`, `{"Regex": "-"}`} {
			js := fmt.Sprintf(`{"type": "Split", "pattern": %s, "behavior": %q, "invert": false}`, pat, behavior)
			if got := preTok(t, js, "The-final--countdown"); !slices.Equal(got, want) {
				t.Errorf("%s %s: got %q, want %q", behavior, pat, got, want)
			}
		}
	}
	// invert: the pattern describes the words to keep.
	js := `{"type": "Split", "pattern": {"Regex": "\\w+|[^\\w\\s]+"}, "behavior": "Removed", "invert": true}`
	if got, want := preTok(t, js, "How are you doing?"), []string{"How", "are", "you", "doing", "?"}; !slices.Equal(got, want) {
		t.Errorf("invert: got %q, want %q", got, want)
	}
}

func TestPreTokenizers(t *testing.T) {
	tests := []struct {
		js, in string
		want   []string
	}{
		{`{"type": "Whitespace"}`, "Hey man!", []string{"Hey", "man", "!"}},
		{`{"type": "WhitespaceSplit"}`, "Hey  man!\tyes", []string{"Hey", "man!", "yes"}},
		{`{"type": "Digits", "individual_digits": true}`, "Hey 123 friend!", []string{"Hey ", "1", "2", "3", " friend!"}},
		{`{"type": "Digits", "individual_digits": false}`, "Hey 123 friend!", []string{"Hey ", "123", " friend!"}},
		{`{"type": "Punctuation", "behavior": "Isolated"}`, "Hey, you!", []string{"Hey", ",", " you", "!"}},
		{`{"type": "BertPreTokenizer"}`, "Hey, you!", []string{"Hey", ",", "you", "!"}},
		{`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}`,
			"Hey   friend!", []string{"▁Hey", "▁", "▁", "▁friend!"}},
		{`{"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}`,
			"Hey friend!", []string{"▁Hey", "▁friend!"}},
		{`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": true}`,
			"Hey friend!", []string{"Hey", "▁friend!"}},
		{`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false}`,
			"Hey friend!", []string{"▁Hey▁friend!"}},
		{`{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}`,
			"Hello my friend, how are you?", []string{"ĠHello", "Ġmy", "Ġfriend", ",", "Ġhow", "Ġare", "Ġyou", "?"}},
		{`{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}`,
			"a b\n", []string{"aĠbĊ"}},
		{`{"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": true}]}`,
			"ab12 c3", []string{"ab", "1", "2", "c", "3"}},
	}
	for _, tc := range tests {
		if got := preTok(t, tc.js, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("%s on %q: got %q, want %q", tc.js, tc.in, got, tc.want)
		}
	}
}

func TestMetaspacePrependFirst(t *testing.T) {
	p, err := parsePreTokenizer(json.RawMessage(
		`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}`), defaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, pc := range preTokenizeAll(p, nil, piece{"Hey friend", true}) {
		got = append(got, pc.text)
	}
	for _, pc := range preTokenizeAll(p, nil, piece{"there", false}) {
		got = append(got, pc.text)
	}
	if want := []string{"▁Hey", "▁friend", "there"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestNormalizers(t *testing.T) {
	tests := []struct {
		js, in, want string
	}{
		{`{"type": "Lowercase"}`, "HeLLo İ Σ", "hello i\u0307 σ"},
		{`{"type": "NFC"}`, "e\u0301", "é"},
		{`{"type": "NFD"}`, "é", "e\u0301"},
		{`{"type": "NFKC"}`, "ﬁ Ｆ", "fi F"},
		{`{"type": "NFKD"}`, "ﬁé", "fie\u0301"},
		{`{"type": "Strip", "strip_left": true, "strip_right": false}`, "  a b  ", "a b  "},
		{`{"type": "Strip", "strip_left": true, "strip_right": true}`, "\t a b \n", "a b"},
		{`{"type": "Prepend", "prepend": "▁"}`, "a", "▁a"},
		{`{"type": "Prepend", "prepend": "▁"}`, "", ""},
		{`{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}`, "a b  c", "a▁b▁▁c"},
		{`{"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}`, "a \t b\n\nc", "a b c"},
		{`{"type": "Replace", "pattern": {"Regex": "x"}, "content": "$1"}`, "axb", "a$1b"},
		{`{"type": "StripAccents"}`, "e\u0301a", "ea"},
		{`{"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"}]}`, "Élan", "elan"},
		{`{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true}`,
			"Héllo\x00\t你好", "hello  你  好 "},
		{`{"type": "ByteLevel"}`, "a b", "aĠb"},
	}
	for _, tc := range tests {
		n, err := parseNormalizer(json.RawMessage(tc.js), defaultOptions)
		if err != nil {
			t.Fatal(err)
		}
		if got := n.normalize(tc.in); got != tc.want {
			t.Errorf("%s on %q: got %q, want %q", tc.js, tc.in, got, tc.want)
		}
	}
}

func TestDecoders(t *testing.T) {
	tests := []struct {
		js   string
		in   []string
		want string
	}{
		{`{"type": "ByteFallback"}`, []string{"<0xE5>", "<0x8F>", "<0xAB>", "a"}, "叫a"},
		{`{"type": "ByteFallback"}`, []string{"<0xE5>", "<0x8F>", "a"}, "��a"},
		{`{"type": "ByteFallback"}`, []string{"<0x61>", "<0xZZ>"}, "a<0xZZ>"},
		{`{"type": "Strip", "content": "H", "start": 1, "stop": 0}`, []string{"Hey", " friend!", "HHH"}, "ey friend!HH"},
		{`{"type": "Strip", "content": "y", "start": 0, "stop": 1}`, []string{"Hey", " friend!"}, "He friend!"},
		{`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}`, []string{"▁Hey", "▁friend!"}, "Hey friend!"},
		{`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}`, []string{"▁a▁b", "▁c"}, "ab c"},
		{`{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"}`, []string{"▁Hey", "▁friend!"}, " Hey friend!"},
		{`{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}`, []string{"▁a", "b▁"}, " ab "},
		{`{"type": "Fuse"}`, []string{"a", "b"}, "ab"},
		{`{"type": "BPEDecoder", "suffix": "</w>"}`, []string{"My</w>", "na", "me</w>"}, "My name"},
		{`{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}`,
			[]string{"ĠHello", "Ġ", "<x>", "ç", "Ĳ"}, " Hello <x>\ufffd"},
		{`{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
		  {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}`,
			[]string{"▁Hello", "<0x21>", "▁▁x"}, "Hello!  x"},
	}
	for _, tc := range tests {
		d, err := parseDecoder(json.RawMessage(tc.js), defaultOptions)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(d.decodeChain(slices.Clone(tc.in)), ""); got != tc.want {
			t.Errorf("%s on %q: got %q, want %q", tc.js, tc.in, got, tc.want)
		}
	}
}

func TestLossyUTF8(t *testing.T) {
	tests := map[string]string{
		"abc":               "abc",
		"\xe5\x8f":          "\ufffd",
		"\xe5\x8fa":         "\ufffda",
		"\xff\xfe":          "\ufffd\ufffd",
		"\xf0\x9f\x98":      "\ufffd",
		"\xed\xa0\x80":      "\ufffd\ufffd\ufffd", // surrogate: E D then A0 is not a valid second byte
		"\xc0\xaf":          "\ufffd\ufffd",
		"a\xf4\x90\x80\x80": "a\ufffd\ufffd\ufffd\ufffd",
	}
	for in, want := range tests {
		if got := lossyUTF8([]byte(in)); got != want {
			t.Errorf("lossyUTF8(%q) = %q, want %q", in, got, want)
		}
	}
}

// bpeJSON builds a tokenizer.json around a BPE model.
func bpeJSON(model, added, normalizer, pre, post, dec string) []byte {
	return []byte(fmt.Sprintf(`{"version": "1.0", "added_tokens": %s, "normalizer": %s, "pre_tokenizer": %s,
		"model": %s, "post_processor": %s, "decoder": %s}`, added, normalizer, pre, model, post, dec))
}

func mustParse(t *testing.T, data []byte) *Tokenizer {
	t.Helper()
	tk, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestBPEOptions(t *testing.T) {
	// byte_fallback, unk_token and fuse_unk.
	model := `{"type": "BPE", "unk_token": "<unk>", "fuse_unk": %v, "byte_fallback": %v,
		"vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "<0xC3>": 4, "<0xA9>": 5},
		"merges": ["a b"]}`
	tests := []struct {
		fuse, fallback bool
		in             string
		want           []int
	}{
		{false, false, "abxyab", []int{3, 0, 0, 3}},
		{true, false, "abxyab", []int{3, 0, 3}},
		{true, true, "aébxy", []int{1, 4, 5, 2, 0}},
		// A pending unknown token is emitted after byte-fallback tokens, like
		// the Rust implementation does.
		{false, true, "axé", []int{1, 4, 5, 0}},
		{false, true, "xéa", []int{4, 5, 0, 1}},
	}
	for _, tc := range tests {
		tk := mustParse(t, bpeJSON(fmt.Sprintf(model, tc.fuse, tc.fallback), "[]", "null", "null", "null", "null"))
		if got := tk.Encode(tc.in, false); !slices.Equal(got, tc.want) {
			t.Errorf("fuse=%v fallback=%v %q: got %v, want %v", tc.fuse, tc.fallback, tc.in, got, tc.want)
		}
	}

	// Merge priority: lowest rank first, leftmost among equal ranks.
	model = `{"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "aa": 5, "abc": 6},
		"merges": [["b", "c"], ["a", "b"], ["a", "a"], ["a", "bc"]], "ignore_merges": %v}`
	tk := mustParse(t, bpeJSON(fmt.Sprintf(model, false), "[]", "null", "null", "null", "null"))
	for in, want := range map[string][]int{
		"abc":   {6},       // b c first, then a bc
		"aaa":   {5, 0},    // leftmost a a
		"aabab": {0, 3, 3}, // a b before a a
		"abcab": {6, 3},    //
		"cba":   {2, 1, 0}, // no merges apply
		"":      nil,       //
		"ababc": {3, 6},    //
		"aaaa":  {5, 5},    //
		"bcabc": {4, 6},    //
	} {
		if got := tk.Encode(in, false); !slices.Equal(got, want) {
			t.Errorf("merges %q: got %v, want %v", in, got, want)
		}
	}

	// ignore_merges: a word that is in the vocabulary is one token even if the
	// merges would not produce it.
	model = `{"type": "BPE", "ignore_merges": %v, "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}, "merges": ["a b"]}`
	for ignore, want := range map[bool][]int{false: {3, 2}, true: {4}} {
		tk := mustParse(t, bpeJSON(fmt.Sprintf(model, ignore), "[]", "null", "null", "null", "null"))
		if got := tk.Encode("abc", false); !slices.Equal(got, want) {
			t.Errorf("ignore_merges=%v: got %v, want %v", ignore, got, want)
		}
	}

	// continuing_subword_prefix and end_of_word_suffix.
	model = `{"type": "BPE", "continuing_subword_prefix": "##", "end_of_word_suffix": "</w>",
		"vocab": {"a": 0, "##b": 1, "##c</w>": 2, "ab": 3, "abc</w>": 4, "c</w>": 5, "##b</w>": 6},
		"merges": ["a ##b", "ab ##c</w>"]}`
	tk = mustParse(t, bpeJSON(model, "[]", "null", `{"type": "WhitespaceSplit"}`, "null", "null"))
	if got, want := tk.Encode("abc c ab", false), []int{4, 5, 0, 6}; !slices.Equal(got, want) {
		t.Errorf("prefix/suffix: got %v, want %v", got, want)
	}
}

func TestAddedTokenOptions(t *testing.T) {
	// Mirrors the Rust AddedVocabulary tests (options_use_cases,
	// test_single_word_is_correct) with a character-level model.
	var vocab []string
	for _, c := range "[]CLSEPMmyYnaeisthoAy <>k,-" {
		vocab = append(vocab, fmt.Sprintf("%q: %d", string(c), len(vocab)))
	}
	model := fmt.Sprintf(`{"type": "BPE", "vocab": {%s}, "merges": []}`, strings.Join(vocab, ", "))
	added := `[
		{"id": 100, "content": "my", "single_word": false, "lstrip": true, "rstrip": true, "normalized": true, "special": false},
		{"id": 101, "content": "name", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false},
		{"id": 102, "content": "ony", "single_word": true, "lstrip": false, "rstrip": false, "normalized": true, "special": false},
		{"id": 103, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
		{"id": 104, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
		{"id": 105, "content": "<mask>", "single_word": true, "lstrip": false, "rstrip": false, "normalized": true, "special": false}
	]`
	tk := mustParse(t, bpeJSON(model, added, `{"type": "Lowercase"}`, "null", "null", "null"))
	// Decoding without a decoder joins tokens with spaces, so compare ids.
	enc := func(s string) []int { return tk.Encode(s, false) }
	chars := func(s string) []int {
		var ids []int
		for _, c := range s {
			id, ok := tk.TokenToID(string(c))
			if !ok {
				t.Fatalf("no token for %q", c)
			}
			ids = append(ids, id)
		}
		return ids
	}
	var want []int
	want = append(want, 103, 100, 101)
	want = append(want, chars(" is anthony ")...)
	want = append(want, 104)
	if got := enc("[CLS] My name is Anthony [SEP]"); !slices.Equal(got, want) {
		t.Errorf("options_use_cases:\n got %v\nwant %v", got, want)
	}
	got := enc("<mask> My name <mask> A<mask> <mask>ony <mask>")
	// "my" has lstrip/rstrip and swallows the spaces around it; the <mask>
	// inside words are not single words, but "ony" after "<mask>" is.
	want = slices.Concat([]int{105, 100, 101}, chars(" "), []int{105}, chars(" a<mask> <mask>"), []int{102},
		chars(" "), []int{105})
	if !slices.Equal(got, want) {
		t.Errorf("single_word:\n got %v\nwant %v", got, want)
	}
	if !tk.IsSpecial(103) || tk.IsSpecial(100) {
		t.Error("IsSpecial wrong for added tokens")
	}
	if id, ok := tk.TokenToID("[SEP]"); !ok || id != 104 {
		t.Errorf("TokenToID([SEP]) = %d, %v", id, ok)
	}
	if got := tk.VocabSize(); got != 106 {
		t.Errorf("VocabSize = %d, want 106", got)
	}
}

func TestPostProcessors(t *testing.T) {
	model := `{"type": "BPE", "vocab": {"a": 0, "<s>": 1, "</s>": 2, "[CLS]": 3}, "merges": []}`
	tests := []struct {
		post string
		want []int
		bos  int
	}{
		{`null`, []int{0, 0}, -1},
		{`{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}`, []int{0, 0}, -1},
		{`{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
		   "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}`,
			[]int{1, 0, 0, 2}, 1},
		{`{"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
		   "pair": [], "special_tokens": {"</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}`,
			[]int{0, 0, 2}, -1},
		{`{"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1], "trim_offsets": true, "add_prefix_space": true}`,
			[]int{1, 0, 0, 2}, 1},
		{`{"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["[CLS]", 3]}`, []int{3, 0, 0, 2}, 3},
		{`{"type": "Sequence", "processors": [{"type": "ByteLevel"}, {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
		   "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}]}`, []int{1, 0, 0}, 1},
	}
	for _, tc := range tests {
		tk := mustParse(t, bpeJSON(model, "[]", "null", "null", tc.post, "null"))
		if got := tk.Encode("aa", true); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.post, got, tc.want)
		}
		if got := tk.Encode("aa", false); !slices.Equal(got, []int{0, 0}) {
			t.Errorf("%s without special tokens: got %v", tc.post, got)
		}
		bos, ok := tk.BOS()
		if (tc.bos >= 0) != ok || (ok && bos != tc.bos) {
			t.Errorf("%s: BOS = %d, %v; want %d", tc.post, bos, ok, tc.bos)
		}
	}
}

// TestGPT2Style covers a ByteLevel pre-tokenizer with its built-in regex and
// add_prefix_space, with a byte-level vocabulary.
func TestGPT2Style(t *testing.T) {
	var vocab []string
	for b := 0; b < 256; b++ {
		vocab = append(vocab, fmt.Sprintf("%q: %d", byteToString[b], b))
	}
	vocab = append(vocab, `"Ġh": 256`, `"Ġhi": 257`)
	model := fmt.Sprintf(`{"type": "BPE", "vocab": {%s}, "merges": ["Ġ h", "Ġh i"]}`, strings.Join(vocab, ", "))
	for _, fast := range []bool{true, false} {
		data := bpeJSON(model, "[]", "null", `{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}`,
			"null", `{"type": "ByteLevel"}`)
		tk, err := parse(data, buildOptions{noFastScan: !fast, cacheCapacity: 100})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := tk.Encode("hi hi", false), []int{257, 257}; !slices.Equal(got, want) {
			t.Errorf("fast=%v: got %v, want %v", fast, got, want)
		}
		if got := tk.Decode(tk.Encode("hi hi", false), false); got != " hi hi" {
			t.Errorf("fast=%v: decode %q", fast, got)
		}
	}
}
