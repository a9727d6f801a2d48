package evals

import (
	"math"
	"testing"
)

// Every expected value below is worked out by hand from LongBench's metrics.py (and the packages it calls);
// the arithmetic is in the comments.

func near(a, b float64) bool { return math.Abs(a-b) < 1e-12 }

func TestNormalizeAnswer(t *testing.T) {
	tests := []struct{ in, want string }{
		// lower → "the cat sat on the mat." → no punctuation → articles → " cat sat on   mat" → fields joined
		{"The cat sat on the mat.", "cat sat on mat"},
		// "theater" holds "the" but not between word boundaries
		{"the Theater", "theater"},
		// lower "éa, the a.n b" → no punctuation "éa the an b" → "é" is a word character (Python 3's \b is
		// Unicode-aware), so the "a" of "éa" stays; "the" and "an" (made by removing ".") go.
		{"Éa, THE a.n b", "éa b"},
		// "-" and "_" are in string.punctuation and go before the articles are looked for
		{"an-x the_y", "anx they"},
		// Python's str.split() also splits on U+001F; tabs and newlines collapse.
		{"a\x1fb\t\n c", "b c"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := NormalizeAnswer(tc.in); got != tc.want {
			t.Errorf("NormalizeAnswer(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestRemoveArticles(t *testing.T) {
	tests := []struct{ in, want string }{
		// each match becomes one space; "an" is found although "a" is tried first (the \b after "a" fails on "n")
		{"a an the", "     "},
		// "_" is a word character for \b: no boundary after "the" in "the_y"; "é" is one too (Unicode \b)
		{"the_y éa ña", "the_y éa ña"},
		// boundaries are tested on the original text: in "a a", the second "a" follows a space
		{"a a", "   "},
	}
	for _, tc := range tests {
		if got := removeArticles(tc.in); got != tc.want {
			t.Errorf("removeArticles(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestQAF1Score(t *testing.T) {
	tests := []struct {
		name, pred, ref string
		want            float64
	}{
		// both normalise to "cat sat on mat": same = 4, P = R = 1, F1 = 1
		{"articles and punctuation", "The cat sat on the mat.", "A cat sat on a mat", 1},
		// pred [paris france], ref [paris]: same = 1, P = 1/2, R = 1/1, F1 = 2·(1/2)·1/(3/2) = 2/3
		{"partial", "Paris, France", "Paris", 2.0 / 3},
		// pred [apple and banana and apple] (5), ref [apple apple pear] (3); Counter & Counter: apple ×2 → same = 2
		// P = 2/5, R = 2/3, F1 = 2·(4/15)/(16/15) = 1/2
		{"counter intersection", "an apple and the banana and apple", "apple apple pear", 0.5},
		{"nothing shared", "yes", "no", 0},
		// the prediction normalises to "" (only an article): no tokens, same = 0
		{"empty after normalising", "The", "the answer", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := QAF1Score(tc.pred, tc.ref); !near(got, tc.want) {
				t.Errorf("QAF1Score(%q, %q) = %v, want %v", tc.pred, tc.ref, got, tc.want)
			}
		})
	}
}

func TestRougeScore(t *testing.T) {
	// F = 2·(P·R)/(P + R + 1e-8)
	f := func(p, r float64) float64 { return 2 * ((p * r) / (p + r + 1e-8)) }
	tests := []struct {
		name, pred, ref string
		want            float64
	}{
		// one sentence each, m = n = 3 distinct words, LCS {the cat sat} = 3: P = R = 1, F = 2/(2+1e-8)
		{"identical", "the cat sat", "the cat sat", f(1, 1)},
		// ref words {the cat is on mat} m = 5, pred {the cat sat on mat} n = 5; the LCS "the cat on the mat" has
		// 4 distinct words: P = R = 4/5, F = 2·0.64/(1.6+1e-8)
		{"one word differs", "the cat sat on the mat", "the cat is on the mat", f(0.8, 0.8)},
		// summary level: ref sentences "a c", "b d"; pred "a b", "c d". Pair LCSs: (a c|a b) {a}, (a c|c d) {c},
		// (b d|a b) {b}, (b d|c d) {d}; union {a b c d} = 4, m = n = 4: P = R = 1
		{"union over sentence pairs", "a b. c d", "a c. b d", f(1, 1)},
		// exclusive=True counts distinct words: n = |{the}| = 1, m = 1, union {the}: P = R = 1 (not P = 1/3)
		{"distinct words", "the the the", "the", f(1, 1)},
		// "the cat. ".split(".") = ["the cat", " "]: the blank piece becomes the sentence "" whose one word is "".
		// n = |{the cat ""}| = 3, m = 2, union {the cat} = 2: P = 2/3, R = 1
		{"blank sentence counts as a word", "the cat. ", "the cat", f(2.0/3, 1)},
		// backtracking tie-break: ref sentences "a b", "b"; pred "b a". For (a b | b a) both table[1][2] and
		// table[2][1] are 1, not greater, so the walk steps left and takes "b"; (b | b a) gives {b}. Union {b}:
		// m = |{a b}| = 2, n = 2, P = R = 1/2 (had it taken "a", the union would be {a b} and F ≈ 1)
		{"backtracking picks the package's LCS", "b a", "a b. b", f(0.5, 0.5)},
		// no sentence in the prediction: ValueError in the package, 0 in rouge_score
		{"empty prediction", "", "the cat", 0},
		{"only dots", "...", "the cat", 0},
		{"nothing shared", "dogs bark", "cats purr", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := RougeScore(tc.pred, tc.ref); !near(got, tc.want) {
				t.Errorf("RougeScore(%q, %q) = %.12f, want %.12f", tc.pred, tc.ref, got, tc.want)
			}
		})
	}
}

func TestClassificationScore(t *testing.T) {
	trec := []string{"Entity", "Human being", "Location", "Number"}
	tests := []struct {
		name, pred, ref string
		classes         []string
		want            float64
	}{
		// matches [Location], the reference itself is kept: 1/1
		{"exact", "Location", "Location", trec, 1},
		// matches [Human being, Location]; "Human being" is not in the reference, so both stay: 1/2
		{"two classes named", "Human being or Location", "Location", trec, 0.5},
		// matches [] — the reference's `if em_match_list != 0` is always true, and "Number" is not in []: 0
		{"no class named", "I don't know", "Number", trec, 0},
		// matches [Entity]; the reference is not among them: 0
		{"wrong class", "Entity", "Location", trec, 0},
		// the removal-while-iterating quirk: matches [a b abc]; i=0 "a" ⊂ "abc" and ≠ → removed → [b abc];
		// i=1 is now "abc" (so "b" is never tested) and is kept. The reference is in [b abc]: 1/2
		{"list mutated while iterating", "abc", "abc", []string{"a", "b", "abc"}, 0.5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ClassificationScore(tc.pred, tc.ref, tc.classes); !near(got, tc.want) {
				t.Errorf("ClassificationScore(%q, %q) = %v, want %v", tc.pred, tc.ref, got, tc.want)
			}
		})
	}
}

func TestRetrievalAndCountScores(t *testing.T) {
	tests := []struct {
		name   string
		metric func(p, r string) float64
		pred   string
		ref    string
		want   float64
	}{
		// numbers in the prediction [12 3]; the reference's id is 12: 1/2
		{"retrieval half", RetrievalScore, "Paragraph 12 and Paragraph 3", "Paragraph 12", 0.5},
		{"retrieval exact", RetrievalScore, "The answer is Paragraph 12.", "Paragraph 12", 1},
		{"retrieval no number", RetrievalScore, "I cannot tell", "Paragraph 12", 0},
		// "Paragraph x" is skipped; the first "Paragraph N" of the reference gives 7
		{"retrieval first id", RetrievalScore, "7", "see Paragraph x, Paragraph 7", 1},
		{"retrieval bad reference", RetrievalScore, "12", "twelve", 0},
		{"retrieval zh", RetrievalZHScore, "段落3", "段落3", 1},
		// numbers [5 12]; one equals "5": 1/2
		{"count half", CountScore, "There are 5 unique paragraphs out of 12", "5", 0.5},
		// "05" ≠ "5": string comparison, as str(number) == str(ground_truth)
		{"count leading zero", CountScore, "05", "5", 0},
		{"count none", CountScore, "many", "5", 0},
		// first number of the first line only; later numbers do not matter
		{"exact first number", RetrievalExactScore, "48213, 'bad key' 7", "48213", 1},
		{"exact near miss", RetrievalExactScore, "48203", "48213", 0},
		{"exact second line ignored", RetrievalExactScore, "\nx\n48213", "48213", 0},
		{"exact leading newlines skipped", RetrievalExactScore, "\n\n48213\n", "48213", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.metric(tc.pred, tc.ref); !near(got, tc.want) {
				t.Errorf("score(%q, %q) = %v, want %v", tc.pred, tc.ref, got, tc.want)
			}
		})
	}
}

func TestFuzzRatio(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		// lensum 6, LCS "ab" = 2, ldist = 6 - 2·2 = 2 (delete c, insert d), ratio 4/6 → 66.67 → 67
		{"abc", "abd", 67},
		// lensum 16, LCS "a" = 1, ldist 14, ratio 2/16 = 0.125 → 12.5 → half to even → 12
		{"abcdefgh", "aijklmno", 12},
		// lensum 16, LCS "abc" = 3, ldist 10, ratio 6/16 → 37.5 → half to even → 38
		{"abcdefgh", "abcijklm", 38},
		// code points, not bytes: lensum 5+5 = 10, LCS "hllo" = 4, ratio 8/10 → 80
		{"héllo", "hello", 80},
		// a substitution costs 2: LCS "ittn" = 4, lensum 13, ldist 13 - 8 = 5, ratio 8/13 = 0.6154 → 62
		// (with substitution cost 1, Levenshtein's 3 would give 10/13 → 77)
		{"kitten", "sitting", 62},
		{"", "", 100}, // check_for_equivalence runs before check_empty_string
		{"", "x", 0},
		{"same", "same", 100},
	}
	for _, tc := range tests {
		if got := FuzzRatio(tc.a, tc.b); got != tc.want {
			t.Errorf("FuzzRatio(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestCodeSimScore(t *testing.T) {
	tests := []struct {
		name, pred, ref string
		want            float64
	}{
		// lstrip('\n'), then skip lines holding "#", "`" or "//": the fourth line "    y = 1" is compared
		{"skips comment lines", "\n\n# comment\n    x = f(`y`)\n    return x // 2\n    y = 1\n", "    y = 1", 1},
		// every line is skipped: "" against a non-empty reference is 0
		{"no usable line", "# a\n// b", "x = 1", 0},
		// only the first usable line counts: fuzz.ratio("abc", "abd") = 67 → 0.67
		{"first line only", "abc\nabd", "abd", 0.67},
		// leading spaces are kept (lstrip('\n') only): "  x" vs "x": lensum 4, LCS 1, ratio 2/4 → 50
		{"indentation counts", "  x", "x", 0.5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CodeSimScore(tc.pred, tc.ref); !near(got, tc.want) {
				t.Errorf("CodeSimScore(%q, %q) = %v, want %v", tc.pred, tc.ref, got, tc.want)
			}
		})
	}
}

func TestSampleScore(t *testing.T) {
	qa, _ := MetricByName(MetricQAF1)
	// max over references: "paris" scores 1 against the second
	if got := SampleScore(qa, false, "Paris", []string{"London", "Paris"}, nil); got != 1 {
		t.Errorf("max over references: %v", got)
	}
	// first-line rule: "\nParis\nLondon" → "Paris"; without it the tokens [paris london] give 2/3 against "Paris"
	if got := SampleScore(qa, true, "\nParis\nLondon", []string{"Paris"}, nil); got != 1 {
		t.Errorf("first line: %v", got)
	}
	if got := SampleScore(qa, false, "\nParis\nLondon", []string{"Paris"}, nil); !near(got, 2.0/3) {
		t.Errorf("whole prediction: %v", got)
	}
	if got := SampleScore(qa, false, "Paris", nil, nil); got != 0 {
		t.Errorf("no references: %v", got)
	}
	for _, name := range []string{MetricQAF1ZH, MetricRougeZH, "bleu"} {
		if _, err := MetricByName(name); err == nil {
			t.Errorf("MetricByName(%q): no error", name)
		}
	}
}
