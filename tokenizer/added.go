package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's "added_tokens".
type addedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// tokenTrie finds added tokens in text with leftmost-longest semantics (the
// Aho-Corasick MatchKind::LeftmostLongest the Rust library uses).
type tokenTrie struct {
	nodes []trieNode
	first [256]bool // bytes that can start a pattern
	empty bool
}

type trieNode struct {
	next map[byte]int32
	tok  int32 // index into matcher.tokens, or -1
}

func newTokenTrie() *tokenTrie {
	return &tokenTrie{nodes: []trieNode{{tok: -1}}, empty: true}
}

func (t *tokenTrie) add(pattern string, tok int) {
	if pattern == "" {
		return
	}
	n := int32(0)
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		nx, ok := t.nodes[n].next[c]
		if !ok {
			if t.nodes[n].next == nil {
				t.nodes[n].next = map[byte]int32{}
			}
			nx = int32(len(t.nodes))
			t.nodes[n].next[c] = nx
			t.nodes = append(t.nodes, trieNode{tok: -1})
		}
		n = nx
	}
	if t.nodes[n].tok < 0 { // first registration wins for duplicates
		t.nodes[n].tok = int32(tok)
	}
	t.first[pattern[0]] = true
	t.empty = false
}

// longestAt returns the token index and end of the longest pattern starting at
// s[i:], or -1.
func (t *tokenTrie) longestAt(s string, i int) (tok, end int) {
	tok, end = -1, -1
	n := int32(0)
	for j := i; j < len(s); j++ {
		nx, ok := t.nodes[n].next[s[j]]
		if !ok {
			break
		}
		n = nx
		if k := t.nodes[n].tok; k >= 0 {
			tok, end = int(k), j+1
		}
	}
	return tok, end
}

// addedMatcher splits text around added tokens, honouring single_word,
// lstrip and rstrip exactly like AddedVocabulary::find_matches.
type addedMatcher struct {
	trie   *tokenTrie
	tokens []*addedToken
}

// segment is a piece of text between added tokens (id < 0), or an added token.
type segment struct {
	start, end int
	id         int
}

// split appends to dst the segments covering s. Empty text segments are
// omitted.
func (m *addedMatcher) split(dst []segment, s string) []segment {
	if m == nil || m.trie.empty {
		if s != "" {
			dst = append(dst, segment{0, len(s), -1})
		}
		return dst
	}
	startOffset := 0
	for i := 0; i < len(s); {
		if !m.trie.first[s[i]] {
			i++
			continue
		}
		k, stop := m.trie.longestAt(s, i)
		if k < 0 {
			i++
			continue
		}
		tok := m.tokens[k]
		start := i
		i = stop
		if tok.SingleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := stop == len(s) || !startsWithWord(s[stop:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if tok.LStrip {
			ns := start
			for ns > 0 {
				r, w := utf8.DecodeLastRuneInString(s[:ns])
				if !unicode.IsSpace(r) {
					break
				}
				ns -= w
			}
			start = max(ns, startOffset)
		}
		if tok.RStrip {
			for stop < len(s) {
				r, w := utf8.DecodeRuneInString(s[stop:])
				if !unicode.IsSpace(r) {
					break
				}
				stop += w
			}
			i = stop
		}
		if startOffset < start {
			dst = append(dst, segment{startOffset, start, -1})
		}
		dst = append(dst, segment{start, stop, tok.ID})
		startOffset = stop
	}
	if startOffset < len(s) {
		dst = append(dst, segment{startOffset, len(s), -1})
	}
	return dst
}

// isWordRune approximates the Rust regex \w class (Alphabetic, marks,
// decimal numbers, connector punctuation, joiners).
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) || unicode.IsDigit(r) ||
		unicode.Is(unicode.Nl, r) || unicode.Is(unicode.Pc, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && isWordRune(r)
}
