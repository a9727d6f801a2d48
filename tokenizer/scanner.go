package tokenizer

import (
	"sync"
	"unicode"
	"unicode/utf8"
)

// Hand-written matchers for the pre-tokenization regexes that nearly every
// byte-level BPE tokenizer uses. Running them through a backtracking regex
// engine is slow on long inputs, so when a Split pattern (or the ByteLevel
// pre-tokenizer's built-in regex) equals one of these strings byte for byte,
// the equivalent scanner below is used instead. Tests check that both paths
// agree on the golden texts and on random strings.

// patternCL100K is the GPT-4 / LLaMA-3 split pattern.
const patternCL100K = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// patternQwen2 is the Qwen2/Qwen3 split pattern: like patternCL100K but with
// single digits.
const patternQwen2 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// patternGPT2 is the GPT-2 split pattern, also built into the ByteLevel
// pre-tokenizer (use_regex).
const patternGPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// scanFunc returns the end of the regex match that starts at s[i:] (i < len(s));
// the patterns above match at every position, so the result is always > i.
type scanFunc func(s string, i int) int

// fastScanner returns the hand-written scanner for pattern, or nil.
func fastScanner(pattern string) scanFunc {
	switch pattern {
	case patternCL100K:
		return scanCL100K
	case patternQwen2:
		return scanQwen2
	case patternGPT2:
		return scanGPT2
	}
	return nil
}

// Character classes used by the patterns: \p{L}, \p{N}, \s and the rest.
const (
	clsOther uint8 = iota
	clsLetter
	clsNumber
	clsSpace
)

var (
	bmpClassOnce sync.Once
	bmpClass     []uint8 // class of every rune below 0x10000
)

func initClassTable() {
	bmpClassOnce.Do(func() {
		t := make([]uint8, 0x10000)
		for r := rune(0); r < 0x10000; r++ {
			t[r] = classifySlow(r)
		}
		bmpClass = t
	})
}

func classifySlow(r rune) uint8 {
	switch {
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	case unicode.IsSpace(r):
		return clsSpace
	}
	return clsOther
}

func classify(r rune) uint8 {
	if r < 0x10000 && bmpClass != nil {
		return bmpClass[r]
	}
	return classifySlow(r)
}

func decodeAt(s string, i int) (rune, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

// scanClass advances j over runes of class cls.
func scanClass(s string, j int, cls uint8) int {
	for j < len(s) {
		r, w := decodeAt(s, j)
		if classify(r) != cls {
			break
		}
		j += w
	}
	return j
}

// contraction matches 's 't 're 've 'm 'll 'd after the apostrophe at i-1,
// returning the end or -1. With fold, matching is case-insensitive using
// Unicode simple case folding (as Oniguruma does: U+017F folds to 's').
func contraction(s string, i int, fold bool) int {
	if i >= len(s) {
		return -1
	}
	lower := func(j int) (rune, int) {
		r, w := decodeAt(s, j)
		if fold {
			if r >= 'A' && r <= 'Z' {
				r += 'a' - 'A'
			} else if r == 0x17F {
				r = 's'
			}
		}
		return r, w
	}
	r, w := lower(i)
	switch r {
	case 's', 't', 'm', 'd':
		return i + w
	case 'r', 'v', 'l':
		if i+w >= len(s) {
			return -1
		}
		want := 'e'
		if r == 'l' {
			want = 'l'
		}
		if r2, w2 := lower(i + w); r2 == want {
			return i + w + w2
		}
	}
	return -1
}

func scanCL100K(s string, i int) int { return scanCL100KDigits(s, i, 3) }
func scanQwen2(s string, i int) int  { return scanCL100KDigits(s, i, 1) }

// scanCL100KDigits implements patternCL100K (maxDigits 3) and patternQwen2
// (maxDigits 1), alternative by alternative.
func scanCL100KDigits(s string, i int, maxDigits int) int {
	r, w := decodeAt(s, i)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if e := contraction(s, i+1, true); e > 0 {
			return e
		}
	}
	cls := classify(r)
	switch cls {
	case clsLetter: // [^\r\n\p{L}\p{N}]?\p{L}+ without the optional rune
		return scanClass(s, i+w, clsLetter)
	case clsNumber: // \p{N}{1,maxDigits}
		j := i + w
		for k := 1; k < maxDigits && j < len(s); k++ {
			r2, w2 := decodeAt(s, j)
			if classify(r2) != clsNumber {
				break
			}
			j += w2
		}
		return j
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+ with the optional rune
	if r != '\r' && r != '\n' && i+w < len(s) {
		if r2, _ := decodeAt(s, i+w); classify(r2) == clsLetter {
			return scanClass(s, i+w, clsLetter)
		}
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	j := i
	if r == ' ' {
		j = i + 1
	}
	if j < len(s) {
		if r2, w2 := decodeAt(s, j); classify(r2) == clsOther {
			j = scanClass(s, j+w2, clsOther)
			for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
				j++
			}
			return j
		}
	}
	// Here r is whitespace.
	e, lastNL, lastW := i, -1, 0
	for e < len(s) {
		r2, w2 := decodeAt(s, e)
		if classify(r2) != clsSpace {
			break
		}
		if r2 == '\r' || r2 == '\n' {
			lastNL = e
		}
		lastW = w2
		e += w2
	}
	if lastNL >= 0 { // \s*[\r\n]+
		return lastNL + 1
	}
	return spaceRun(s, i, e, lastW)
}

// spaceRun implements `\s+(?!\S)|\s+` for the whitespace run s[i:e] whose last
// rune is lastW bytes long.
func spaceRun(s string, i, e, lastW int) int {
	if e == len(s) || e-lastW == i {
		return e
	}
	return e - lastW
}

// scanGPT2 implements patternGPT2.
func scanGPT2(s string, i int) int {
	r, w := decodeAt(s, i)
	if r == '\'' {
		if e := contraction(s, i+1, false); e > 0 {
			return e
		}
	}
	j, rj, wj := i, r, w
	if r == ' ' && i+1 < len(s) {
		j = i + 1
		rj, wj = decodeAt(s, j)
	}
	if cls := classify(rj); cls != clsSpace {
		// ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+'
		return scanClass(s, j+wj, cls)
	}
	e, lastW := i, 0
	for e < len(s) {
		r2, w2 := decodeAt(s, e)
		if classify(r2) != clsSpace {
			break
		}
		lastW = w2
		e += w2
	}
	return spaceRun(s, i, e, lastW)
}
