package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// decoder is one step of the decoding chain (Decoder::decode_chain): it maps
// token strings to new strings; the final strings are concatenated.
type decoder interface {
	decodeChain(tokens []string) []string
}

type decoderSeq []decoder

func (d decoderSeq) decodeChain(tokens []string) []string {
	for _, x := range d {
		tokens = x.decodeChain(tokens)
	}
	return tokens
}

// byteLevelDecoder turns byte-level runes back into bytes, decoding the
// concatenation lossily as UTF-8.
type byteLevelDecoder struct{}

func (byteLevelDecoder) decodeChain(tokens []string) []string {
	n := 0
	for _, t := range tokens {
		n += len(t)
	}
	buf := make([]byte, 0, n)
	for _, t := range tokens {
		buf = byteLevelDecodeToken(buf, t)
	}
	return []string{lossyUTF8(buf)}
}

// replaceDecoder replaces a pattern in every token.
type replaceDecoder struct {
	pat     *pattern
	content string
}

func (d replaceDecoder) decodeChain(tokens []string) []string {
	for i, t := range tokens {
		tokens[i] = d.pat.replaceAll(t, d.content)
	}
	return tokens
}

// byteFallbackDecoder turns runs of <0xXX> tokens into the bytes they stand
// for; an invalid UTF-8 run yields one U+FFFD per byte token.
type byteFallbackDecoder struct{}

// parseByteToken parses a "<0xXX>" token.
func parseByteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexVal(t[3])
	lo, ok2 := hexVal(t[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func (byteFallbackDecoder) decodeChain(tokens []string) []string {
	out := make([]string, 0, len(tokens))
	var pending []byte
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if utf8.Valid(pending) {
			out = append(out, string(pending))
		} else {
			for range pending {
				out = append(out, "\uFFFD")
			}
		}
		pending = pending[:0]
	}
	for _, t := range tokens {
		if b, ok := parseByteToken(t); ok {
			pending = append(pending, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

// fuseDecoder concatenates all tokens into one.
type fuseDecoder struct{}

func (fuseDecoder) decodeChain(tokens []string) []string {
	return []string{strings.Join(tokens, "")}
}

// stripDecoder removes up to start leading and stop trailing occurrences of a
// rune from every token.
type stripDecoder struct {
	content     rune
	start, stop int
}

func (d stripDecoder) decodeChain(tokens []string) []string {
	for i, t := range tokens {
		rs := []rune(t)
		startCut := 0
		for k := 0; k < d.start && k < len(rs); k++ {
			if rs[k] != d.content {
				break
			}
			startCut = k + 1
		}
		stopCut := len(rs)
		for k := 0; k < d.stop && k < len(rs)-startCut; k++ {
			idx := len(rs) - k - 1
			if rs[idx] != d.content {
				break
			}
			stopCut = idx
		}
		tokens[i] = string(rs[startCut:stopCut])
	}
	return tokens
}

// metaspaceDecoder turns the replacement rune back into spaces; in the first
// token it is dropped altogether unless the prepend scheme is "never".
type metaspaceDecoder struct {
	rep    rune
	scheme int
}

func (d metaspaceDecoder) decodeChain(tokens []string) []string {
	for i, t := range tokens {
		var sb strings.Builder
		sb.Grow(len(t))
		for _, r := range t {
			if r == d.rep {
				if i == 0 && d.scheme != prependNever {
					continue
				}
				r = ' '
			}
			sb.WriteRune(r)
		}
		tokens[i] = sb.String()
	}
	return tokens
}

// bpeDecoder replaces the end-of-word suffix with a space (none after the
// last token).
type bpeDecoder struct{ suffix string }

func (d bpeDecoder) decodeChain(tokens []string) []string {
	for i, t := range tokens {
		rep := " "
		if i == len(tokens)-1 {
			rep = ""
		}
		tokens[i] = strings.ReplaceAll(t, d.suffix, rep)
	}
	return tokens
}
