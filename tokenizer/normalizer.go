package tokenizer

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites a piece of input text before pre-tokenization.
type normalizer interface {
	normalize(s string) string
}

type normalizerSeq []normalizer

func (n normalizerSeq) normalize(s string) string {
	for _, x := range n {
		s = x.normalize(s)
	}
	return s
}

// unicodeNormalizer is NFC, NFD, NFKC or NFKD.
type unicodeNormalizer struct{ form norm.Form }

func (n unicodeNormalizer) normalize(s string) string { return n.form.String(s) }

// lowercaseNormalizer lowercases rune by rune like Rust's char::to_lowercase.
type lowercaseNormalizer struct{}

func (lowercaseNormalizer) normalize(s string) string {
	return strings.Map(unicode.ToLower, strings.ReplaceAll(s, "\u0130", "i\u0307"))
}

// prependNormalizer prepends a string to non-empty text.
type prependNormalizer struct{ prepend string }

func (n prependNormalizer) normalize(s string) string {
	if s == "" {
		return s
	}
	return n.prepend + s
}

// appendNormalizer appends a string to non-empty text.
type appendNormalizer struct{ suffix string }

func (n appendNormalizer) normalize(s string) string {
	if s == "" {
		return s
	}
	return s + n.suffix
}

// replaceNormalizer replaces every match of a literal or regex pattern.
type replaceNormalizer struct {
	pat     *pattern
	content string
}

func (n replaceNormalizer) normalize(s string) string { return n.pat.replaceAll(s, n.content) }

// stripNormalizer removes leading and/or trailing whitespace.
type stripNormalizer struct{ left, right bool }

func (n stripNormalizer) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// stripAccentsNormalizer removes nonspacing marks (meant to follow NFD/NFKD).
type stripAccentsNormalizer struct{}

func (stripAccentsNormalizer) normalize(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Mn, r) {
			return -1
		}
		return r
	}, s)
}

// byteLevelNormalizer maps every byte to its GPT-2 byte-level rune.
type byteLevelNormalizer struct{}

func (byteLevelNormalizer) normalize(s string) string { return byteLevelEncode(s) }

// bertNormalizer is BERT's normalizer: control-character cleanup, spaces
// around CJK ideographs, accent stripping and lowercasing.
type bertNormalizer struct {
	cleanText, chinese, stripAccents, lowercase bool
}

func (n bertNormalizer) normalize(s string) string {
	if n.cleanText {
		s = strings.Map(func(r rune) rune {
			switch {
			case r == '\t' || r == '\n' || r == '\r':
				return ' '
			case r == 0 || r == 0xFFFD || unicode.In(r, unicode.C):
				return -1
			case unicode.IsSpace(r):
				return ' '
			}
			return r
		}, s)
	}
	if n.chinese {
		var sb strings.Builder
		for _, r := range s {
			if isCJK(r) {
				sb.WriteByte(' ')
				sb.WriteRune(r)
				sb.WriteByte(' ')
			} else {
				sb.WriteRune(r)
			}
		}
		s = sb.String()
	}
	if n.stripAccents {
		s = stripAccentsNormalizer{}.normalize(norm.NFD.String(s))
	}
	if n.lowercase {
		s = lowercaseNormalizer{}.normalize(s)
	}
	return s
}

func isCJK(r rune) bool {
	return (r >= 0x4E00 && r <= 0x9FFF) || (r >= 0x3400 && r <= 0x4DBF) || (r >= 0x20000 && r <= 0x2A6DF) ||
		(r >= 0x2A700 && r <= 0x2B73F) || (r >= 0x2B740 && r <= 0x2B81F) || (r >= 0x2B920 && r <= 0x2CEAF) ||
		(r >= 0xF900 && r <= 0xFAFF) || (r >= 0x2F800 && r <= 0x2FA1F)
}

// isNumeric is Rust's char::is_numeric (general category N).
func isNumeric(r rune) bool { return unicode.IsNumber(r) }

// isWhitespace is Rust's char::is_whitespace (the White_Space property).
func isWhitespace(r rune) bool { return unicode.IsSpace(r) }
