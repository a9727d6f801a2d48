package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// regexSpans returns the matches of expr found by regexp2.
func regexSpans(t *testing.T, expr, s string) []span {
	t.Helper()
	p, err := newRegexPattern(expr, buildOptions{noFastScan: true})
	if err != nil {
		t.Fatal(err)
	}
	return p.findMatches(nil, s)
}

// scanSpans returns the matches of expr found by its hand-written scanner.
func scanSpans(t *testing.T, expr, s string) []span {
	t.Helper()
	p, err := newRegexPattern(expr, buildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.scan == nil {
		t.Fatalf("no fast scanner for %q", expr)
	}
	return p.findMatches(nil, s)
}

var scannedPatterns = map[string]string{
	"cl100k": patternCL100K,
	"qwen2":  patternQwen2,
	"gpt2":   patternGPT2,
}

// TestScannerLongS documents the one known difference between the scanners
// and regexp2: Oniguruma (used by the Rust library) matches (?i)'s against
// "'ſ" (U+017F folds to 's'), regexp2 does not. The scanners follow
// Oniguruma.
func TestScannerLongS(t *testing.T) {
	for _, expr := range []string{patternCL100K, patternQwen2} {
		if got := scanSpans(t, expr, "'ſx"); !slices.Equal(got, []span{{0, 3}, {3, 4}}) {
			t.Errorf("scanner split of \"'ſx\" = %v", got)
		}
	}
}

// randomText builds strings from an alphabet rich in the characters the
// patterns treat specially.
func randomText(r *rand.Rand, n int) string {
	alphabet := []string{
		"a", "b", "Z", "s", "t", "e", "l", "S", "T", "R", "E", "L", "D", "m", "v", "d",
		"'", "'", "'", "0", "7", "٣", "Ⅻ", "½", " ", " ", " ", "  ", "\t", "\n", "\r", "\r\n",
		"\u00a0", "\u3000", "\u2028", "\u0085", "\v", "\f", ".", ",", "(", ")", "-", "_", "$", "#",
		"é", "e\u0301", "ß", "中", "文", "ا", "😀", "👍🏽", "\u200d", "\u0301", "ー", "ǅ", "ʰ",
		"\x00", "\x1f", "\u00ad", "\ufeff", "\U0001F600", "\U00010400", "\u212a", "K",
	}
	var sb strings.Builder
	for i := 0; i < n; i++ {
		sb.WriteString(alphabet[r.IntN(len(alphabet))])
	}
	return sb.String()
}

func TestScannerMatchesRegexRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for name, expr := range scannedPatterns {
		t.Run(name, func(t *testing.T) {
			n := 3000
			if quick() {
				n = 300
			}
			for i := 0; i < n; i++ {
				s := randomText(r, 1+r.IntN(40))
				want := regexSpans(t, expr, s)
				got := scanSpans(t, expr, s)
				if !slices.Equal(got, want) {
					t.Fatalf("%q:\nscanner %v\n  regex %v", s, got, want)
				}
			}
		})
	}
}

func TestScannerMatchesRegexGolden(t *testing.T) {
	for name, expr := range scannedPatterns {
		for _, gs := range goldenSets {
			for i, c := range loadGolden(t, gs.golden) {
				want := regexSpans(t, expr, c.Text)
				got := scanSpans(t, expr, c.Text)
				if !slices.Equal(got, want) {
					t.Errorf("%s on %s case %d: scanner and regex disagree", name, gs.name, i)
				}
			}
		}
	}
}

// TestScannerCoversInput checks that the scanner's matches tile the input.
func TestScannerCoversInput(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for name, expr := range scannedPatterns {
		for i := 0; i < 500; i++ {
			s := randomText(r, r.IntN(60))
			end := 0
			for _, m := range scanSpans(t, expr, s) {
				if m.start != end || m.end <= m.start || !utf8.ValidString(s[m.start:m.end]) {
					t.Fatalf("%s: bad match %v in %q", name, m, s)
				}
				end = m.end
			}
			if end != len(s) {
				t.Fatalf("%s: matches end at %d of %d in %q", name, end, len(s), s)
			}
		}
	}
}

// withoutFastScan returns a copy of tk whose split patterns all run on
// regexp2, with a fresh cache.
func withoutFastScan(tk *Tokenizer) *Tokenizer {
	var strip func(p preTokenizer) preTokenizer
	strip = func(p preTokenizer) preTokenizer {
		switch p := p.(type) {
		case preTokSeq:
			out := make(preTokSeq, len(p))
			for i, x := range p {
				out[i] = strip(x)
			}
			return out
		case *splitPre:
			c := *p
			pat := *p.pat
			pat.scan = nil
			c.pat = &pat
			return &c
		case *byteLevelPre:
			c := *p
			if p.splitter != nil {
				c.splitter = strip(p.splitter).(*splitPre)
			}
			return &c
		}
		return p
	}
	c := *tk
	if c.preTok != nil {
		c.preTok = strip(c.preTok)
	}
	m := *tk.model
	m.cache = newWordCache(cacheCapacity)
	c.model = &m
	return &c
}

// TestSlowPathGolden encodes every golden text with the regexp2 path instead
// of the scanners.
func TestSlowPathGolden(t *testing.T) {
	for _, gs := range goldenSets {
		if gs.name == "llama2" {
			continue // no regex pre-tokenizer
		}
		t.Run(gs.name, func(t *testing.T) {
			tk := withoutFastScan(loadTokenizer(t, gs.name))
			sp, ok := tk.preTok.(*splitPre)
			if !ok || sp.pat.scan != nil || sp.pat.re == nil {
				t.Fatalf("unexpected pre-tokenizer %#v", tk.preTok)
			}
			if orig := loadTokenizer(t, gs.name).preTok.(*splitPre); orig.pat.scan == nil {
				t.Fatal("the loaded tokenizer does not use a fast scanner")
			}
			for i, c := range loadGolden(t, gs.golden) {
				if got := tk.Encode(c.Text, true); !slices.Equal(got, c.IDs) {
					t.Errorf("case %d %s: regexp2 path\n got %v\nwant %v", i, short(c.Text), got, c.IDs)
				}
			}
		})
	}
}
