package tokenizer

import (
	"strings"
	"unicode"
)

// piece is a part of the normalized input on its way to the model.
type piece struct {
	text string
	// atStart reports that the piece begins at byte 0 of the original input
	// (what Metaspace's prepend_scheme "first" checks).
	atStart bool
}

// preTokenizer splits a piece into smaller ones (and may rewrite them).
type preTokenizer interface {
	// each calls fn, in order, for every non-empty piece p splits into.
	each(p piece, fn func(piece))
}

// preTokenizeAll collects the pieces pt splits p into.
func preTokenizeAll(pt preTokenizer, dst []piece, p piece) []piece {
	pt.each(p, func(q piece) { dst = append(dst, q) })
	return dst
}

// preTokSeq applies pre-tokenizers in turn; as each works on pieces
// independently, pieces are streamed through the chain.
type preTokSeq []preTokenizer

func (s preTokSeq) each(p piece, fn func(piece)) {
	switch len(s) {
	case 0:
		if p.text != "" {
			fn(p)
		}
	case 1:
		s[0].each(p, fn)
	default:
		rest := s[1:]
		s[0].each(p, func(q piece) { rest.each(q, fn) })
	}
}

// splitPre is the Split pre-tokenizer, also used to build Digits,
// WhitespaceSplit, Whitespace and Punctuation.
type splitPre struct {
	pat      *pattern
	behavior splitBehavior
	invert   bool
}

func (sp *splitPre) each(p piece, fn func(piece)) {
	s := p.text
	if scan := sp.pat.scan; scan != nil && sp.behavior == behaviorIsolated && !sp.invert {
		// Fast path: the scanner's matches tile the whole text.
		for i := 0; i < len(s); {
			e := scan(s, i)
			fn(piece{s[i:e], p.atStart && i == 0})
			i = e
		}
		return
	}
	matches := sp.pat.findMatches(nil, s)
	marked := markSpans(nil, s, matches, sp.invert)
	for _, m := range applyBehavior(nil, marked, sp.behavior) {
		if m.start < m.end {
			fn(piece{s[m.start:m.end], p.atStart && m.start == 0})
		}
	}
}

// byteLevelPre is the ByteLevel pre-tokenizer. When it is the last
// pre-tokenizer, the byte-to-rune mapping is deferred to the BPE model, which
// then works on raw bytes (deferMap).
type byteLevelPre struct {
	addPrefixSpace bool
	splitter       *splitPre // Isolated split on the GPT-2 regex when use_regex is set
	deferMap       bool
}

func (b *byteLevelPre) each(p piece, fn func(piece)) {
	if b.addPrefixSpace && !strings.HasPrefix(p.text, " ") {
		p.text = " " + p.text
	}
	emit := fn
	if !b.deferMap {
		emit = func(q piece) { fn(piece{byteLevelEncode(q.text), q.atStart}) }
	}
	if b.splitter != nil {
		b.splitter.each(p, emit)
	} else if p.text != "" {
		emit(p)
	}
}

// Metaspace prepend schemes.
const (
	prependAlways = iota
	prependFirst
	prependNever
)

// metaspacePre replaces spaces by the replacement rune (usually '▁'),
// optionally prepends one, and splits before each replacement rune.
type metaspacePre struct {
	rep      string
	scheme   int
	split    bool
	splitter *splitPre
}

func newMetaspacePre(rep rune, scheme int, split bool) *metaspacePre {
	r := string(rep)
	return &metaspacePre{rep: r, scheme: scheme, split: split,
		splitter: &splitPre{pat: newLiteralPattern(r), behavior: behaviorMergedWithNext}}
}

func (m *metaspacePre) each(p piece, fn func(piece)) {
	s := strings.ReplaceAll(p.text, " ", m.rep)
	if !strings.HasPrefix(s, m.rep) &&
		(m.scheme == prependAlways || (m.scheme == prependFirst && p.atStart)) {
		s = m.rep + s
	}
	p.text = s
	if !m.split {
		if s != "" {
			fn(p)
		}
		return
	}
	m.splitter.each(p, fn)
}

// isPunctuation mirrors the Rust library's is_punc: ASCII punctuation or a
// Unicode punctuation category.
func isPunctuation(r rune) bool {
	if r < 0x80 {
		return (r >= '!' && r <= '/') || (r >= ':' && r <= '@') || (r >= '[' && r <= '`') || (r >= '{' && r <= '~')
	}
	return unicode.IsPunct(r)
}
