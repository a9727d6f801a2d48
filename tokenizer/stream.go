package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// streamContext is how many already-emitted ids a StreamDecoder keeps to
// decode new ids in context (enough for leading-space stripping and
// first-token rules of SentencePiece-style decoders to see the same first
// token in both decodings they compare).
const streamContext = 8

// StreamDecoder decodes generated ids incrementally. It is not safe for
// concurrent use; create one per generation stream.
type StreamDecoder struct {
	t       *Tokenizer
	skip    bool
	ctx     []int  // emitted ids kept as context
	ctxText string // decoding of ctx
	pending []int  // ids not yet emitted
	started bool   // whether anything has been pushed through the decoder
}

// NewStreamDecoder returns a decoder for a stream of generated ids. The
// concatenation of everything Push and Flush return equals Decode of all the
// ids, and every Push result is valid UTF-8 that will not change.
func (t *Tokenizer) NewStreamDecoder(skipSpecialTokens bool) *StreamDecoder {
	return &StreamDecoder{t: t, skip: skipSpecialTokens}
}

// Push adds one id and returns the text that became final, possibly "".
func (d *StreamDecoder) Push(id int) string {
	t := d.t
	if !t.keep(id, d.skip) {
		return "" // Decode ignores such ids entirely
	}
	d.pending = append(d.pending, id)
	if t.byteFallbackDecode {
		if _, ok := parseByteToken(t.idToToken[id]); ok {
			return "" // a run of byte tokens is decoded as a whole
		}
	}
	all := append(d.ctx[:len(d.ctx):len(d.ctx)], d.pending...)
	text := t.Decode(all, d.skip)
	if !strings.HasPrefix(text, d.ctxText) || strings.HasSuffix(text, "\uFFFD") {
		return ""
	}
	out := text[len(d.ctxText):]
	d.advance(all, text)
	return out
}

// advance makes all (decoded as text) the new context.
func (d *StreamDecoder) advance(all []int, text string) {
	d.pending = d.pending[:0]
	if len(all) > streamContext {
		all = all[len(all)-streamContext:]
		text = d.t.Decode(all, d.skip)
	}
	d.ctx = append(d.ctx[:0], all...)
	d.ctxText = text
}

// Flush returns whatever text is still held back (for example an incomplete
// UTF-8 sequence at the end of the stream, as U+FFFD) and resets the pending
// state; the decoder may be used further.
func (d *StreamDecoder) Flush() string {
	if len(d.pending) == 0 {
		return ""
	}
	all := append(d.ctx[:len(d.ctx):len(d.ctx)], d.pending...)
	text := d.t.Decode(all, d.skip)
	var out string
	if strings.HasPrefix(text, d.ctxText) {
		out = text[len(d.ctxText):]
	} else {
		// The context decoded differently with the new ids (only possible with
		// unusual decoders); emit what follows the common prefix.
		n := 0
		for n < len(text) && n < len(d.ctxText) && text[n] == d.ctxText[n] {
			n++
		}
		for n > 0 && !utf8.RuneStart(text[n]) {
			n--
		}
		out = text[n:]
	}
	d.advance(all, text)
	return out
}
