package tokenizer

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// pattern is a literal string or a regular expression, as found in the
// {"String": ...} / {"Regex": ...} objects of tokenizer.json.
type pattern struct {
	literal string
	re      *regexp2.Regexp // nil for literals
	scan    scanFunc        // fast equivalent of re, if known
	pred    func(rune) bool // if set, every rune satisfying it is one match
	source  string
}

func newLiteralPattern(s string) *pattern { return &pattern{literal: s, source: s} }

func newRegexPattern(expr string, opts buildOptions) (*pattern, error) {
	re, err := regexp2.Compile(expr, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("invalid regex %q: %v", expr, err)
	}
	p := &pattern{re: re, source: expr}
	if !opts.noFastScan {
		p.scan = fastScanner(expr)
		if p.scan != nil {
			initClassTable()
		}
	}
	return p, nil
}

// span is a half-open byte range.
type span struct{ start, end int }

// findMatches appends the non-overlapping matches of p in s, in order. Like
// the Oniguruma iterator the Rust library uses, an empty match immediately
// following the previous match is skipped.
func (p *pattern) findMatches(dst []span, s string) []span {
	if p.scan != nil {
		for i := 0; i < len(s); {
			e := p.scan(s, i)
			dst = append(dst, span{i, e})
			i = e
		}
		return dst
	}
	if p.pred != nil {
		for i, r := range s {
			if p.pred(r) {
				dst = append(dst, span{i, i + utf8.RuneLen(r)})
			}
		}
		return dst
	}
	if p.re == nil {
		if p.literal == "" {
			return dst
		}
		for i := 0; ; {
			k := strings.Index(s[i:], p.literal)
			if k < 0 {
				return dst
			}
			dst = append(dst, span{i + k, i + k + len(p.literal)})
			i += k + len(p.literal)
		}
	}
	return p.findRegexMatches(dst, s)
}

// findRegexMatches runs the regexp2 engine (rune-indexed) and converts its
// positions to byte offsets.
func (p *pattern) findRegexMatches(dst []span, s string) []span {
	if s == "" {
		return dst
	}
	runes := make([]rune, 0, len(s))
	offs := make([]int, 0, len(s)+1)
	for i, r := range s {
		runes = append(runes, r)
		offs = append(offs, i)
	}
	offs = append(offs, len(s))
	m, _ := p.re.FindRunesMatch(runes)
	lastEnd := -1
	for m != nil {
		st, en := offs[m.Index], offs[m.Index+m.Length]
		if !(st == en && st == lastEnd) {
			dst = append(dst, span{st, en})
			lastEnd = en
		}
		m, _ = p.re.FindNextMatch(m)
	}
	return dst
}

// replaceAll replaces every match of p in s by content (taken literally).
func (p *pattern) replaceAll(s, content string) string {
	if p.re == nil && p.pred == nil {
		if p.literal == "" {
			return s
		}
		return strings.ReplaceAll(s, p.literal, content)
	}
	ms := p.findMatches(nil, s)
	if len(ms) == 0 {
		return s
	}
	var sb strings.Builder
	last := 0
	for _, m := range ms {
		sb.WriteString(s[last:m.start])
		sb.WriteString(content)
		last = m.end
	}
	sb.WriteString(s[last:])
	return sb.String()
}

// splitBehavior says what Split does with the matched delimiters.
type splitBehavior int

const (
	behaviorRemoved splitBehavior = iota
	behaviorIsolated
	behaviorMergedWithPrevious
	behaviorMergedWithNext
	behaviorContiguous
)

var behaviorNames = map[string]splitBehavior{
	"Removed":            behaviorRemoved,
	"Isolated":           behaviorIsolated,
	"MergedWithPrevious": behaviorMergedWithPrevious,
	"MergedWithNext":     behaviorMergedWithNext,
	"Contiguous":         behaviorContiguous,
}

// markedSpan is a span of the input that matched the pattern (match) or not.
type markedSpan struct {
	span
	match bool
}

// markSpans turns the matches of a pattern into spans covering all of s,
// flipping the match flags if invert is set (Pattern::find_matches and Invert).
func markSpans(dst []markedSpan, s string, matches []span, invert bool) []markedSpan {
	if s == "" {
		return append(dst, markedSpan{span{0, 0}, invert})
	}
	prev := 0
	for _, m := range matches {
		if prev != m.start {
			dst = append(dst, markedSpan{span{prev, m.start}, invert})
		}
		dst = append(dst, markedSpan{m, !invert})
		prev = m.end
	}
	if prev != len(s) {
		dst = append(dst, markedSpan{span{prev, len(s)}, invert})
	}
	return dst
}

// applyBehavior implements NormalizedString::split: it turns marked spans
// into the spans to keep. Empty results are dropped by the caller.
func applyBehavior(dst []span, marked []markedSpan, b splitBehavior) []span {
	switch b {
	case behaviorIsolated:
		for _, m := range marked {
			dst = append(dst, m.span)
		}
	case behaviorRemoved:
		for _, m := range marked {
			if !m.match {
				dst = append(dst, m.span)
			}
		}
	case behaviorContiguous:
		prevMatch, base := false, len(dst)
		for _, m := range marked {
			if m.match == prevMatch && len(dst) > base {
				dst[len(dst)-1].end = m.end
			} else {
				dst = append(dst, m.span)
			}
			prevMatch = m.match
		}
	case behaviorMergedWithPrevious:
		prevMatch, base := false, len(dst)
		for _, m := range marked {
			if m.match && !prevMatch && len(dst) > base {
				dst[len(dst)-1].end = m.end
			} else {
				dst = append(dst, m.span)
			}
			prevMatch = m.match
		}
	case behaviorMergedWithNext:
		prevMatch, base := false, len(dst)
		for i := len(marked) - 1; i >= 0; i-- {
			m := marked[i]
			if m.match && !prevMatch && len(dst) > base {
				dst[len(dst)-1].start = m.start
			} else {
				dst = append(dst, m.span)
			}
			prevMatch = m.match
		}
		for i, j := base, len(dst)-1; i < j; i, j = i+1, j-1 {
			dst[i], dst[j] = dst[j], dst[i]
		}
	}
	return dst
}
