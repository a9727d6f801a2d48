package model

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"
)

// fakeSeq is a Sequence whose logits are a deterministic function of the
// tokens so far (usually of the last one, through a table).
type fakeSeq struct {
	vocab   int
	maxLen  int
	tokens  []int
	appends int // number of Append calls
	closed  bool
	// logits returns the logits after tokens (never empty).
	logits func(tokens []int) []float32
	// before, if set, is called at the start of every Append with the number
	// of previous Append calls.
	before func(n int)
	// ignoreCtx makes Append ignore cancellation.
	ignoreCtx bool
}

func (f *fakeSeq) Append(ctx context.Context, tokens []int) ([]float32, error) {
	if f.before != nil {
		f.before(f.appends)
	}
	if err := ctx.Err(); err != nil && !f.ignoreCtx {
		return nil, fmt.Errorf("fakeSeq: %w", err)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("fakeSeq: no tokens")
	}
	if len(f.tokens)+len(tokens) > f.maxLen {
		return nil, fmt.Errorf("fakeSeq: %d+%d tokens exceed max %d", len(f.tokens), len(tokens), f.maxLen)
	}
	for _, t := range tokens {
		if t < 0 || t >= f.vocab {
			return nil, fmt.Errorf("fakeSeq: token %d out of vocab %d", t, f.vocab)
		}
	}
	f.appends++
	f.tokens = append(f.tokens, tokens...)
	return f.logits(f.tokens), nil
}

func (f *fakeSeq) Len() int     { return len(f.tokens) }
func (f *fakeSeq) MaxLen() int  { return f.maxLen }
func (f *fakeSeq) Close() error { f.closed = true; return nil }

// oneHot returns logits of size vocab that are 0 except 5 at id.
func oneHot(vocab, id int) []float32 {
	l := make([]float32, vocab)
	l[id] = 5
	return l
}

// tableSeq: greedy decoding follows next[last token].
func tableSeq(vocab, maxLen int, next map[int]int) *fakeSeq {
	return &fakeSeq{vocab: vocab, maxLen: maxLen, logits: func(toks []int) []float32 {
		return oneHot(vocab, next[toks[len(toks)-1]])
	}}
}

// scriptSeq: greedy decoding produces script, one token per Append
// (script[i] after the i-th Append, the prefill being the 0th), then script's
// last token forever.
func scriptSeq(vocab, maxLen int, script []int) *fakeSeq {
	f := &fakeSeq{vocab: vocab, maxLen: maxLen}
	f.logits = func([]int) []float32 {
		return oneHot(vocab, script[min(f.appends-1, len(script)-1)])
	}
	return f
}

// fakeDecoder maps ids to byte strings (pieces may split UTF-8 characters)
// and, like tokenizer.StreamDecoder, never returns half a character.
type fakeDecoder struct {
	pieces map[int]string
	buf    []byte
}

func (d *fakeDecoder) Push(id int) string {
	d.buf = append(d.buf, d.pieces[id]...)
	// Keep back a trailing incomplete character.
	cut := len(d.buf)
	for i := len(d.buf) - 1; i >= 0 && i >= len(d.buf)-utf8.UTFMax; i-- {
		if utf8.RuneStart(d.buf[i]) {
			if !utf8.FullRune(d.buf[i:]) {
				cut = i
			}
			break
		}
	}
	out := strings.ToValidUTF8(string(d.buf[:cut]), "\uFFFD")
	d.buf = append(d.buf[:0], d.buf[cut:]...)
	return out
}

func (d *fakeDecoder) Flush() string {
	out := strings.ToValidUTF8(string(d.buf), "\uFFFD")
	d.buf = d.buf[:0]
	return out
}

// Test vocabulary: 0 is EOS; 4 and 5 are the two halves of "€".
var testPieces = map[int]string{
	0:  "",
	1:  "Hello",
	2:  " world",
	3:  "!",
	4:  "\xe2\x82",
	5:  "\xac",
	6:  "<",
	7:  "end",
	8:  ">",
	9:  " ok",
	10: "é",
	11: "e",
}

const testVocab = 12

func newTestDecoder() *fakeDecoder { return &fakeDecoder{pieces: testPieces} }

// chunkRecorder records OnText chunks.
type chunkRecorder struct{ chunks []string }

func (r *chunkRecorder) onText(s string) error {
	r.chunks = append(r.chunks, s)
	return nil
}

func (r *chunkRecorder) joined() string { return strings.Join(r.chunks, "") }

// greedySeq is a fakeSeq that also picks the argmax itself (model.GreedySequence), counting how often.
type greedySeq struct {
	*fakeSeq
	greedyCalls int
}

func (g *greedySeq) AppendGreedy(ctx context.Context, tokens []int) (int, error) {
	logits, err := g.Append(ctx, tokens)
	if err != nil {
		return 0, err
	}
	g.greedyCalls++
	best := 0
	for i, x := range logits {
		if x > logits[best] {
			best = i
		}
	}
	return best, nil
}

// decoderSeq is a greedySeq that also runs greedy decoding itself (model.GreedyDecoder) the way a
// pipelining sequence does: the step for each chosen token is appended before yield sees the token, and
// undone when yield refuses it.
type decoderSeq struct {
	*greedySeq
	decodeCalls int
}

func (d *decoderSeq) DecodeGreedy(ctx context.Context, tokens []int, maxTokens int, yield func(int) (bool, error)) error {
	d.decodeCalls++
	if maxTokens <= 0 {
		return fmt.Errorf("decoderSeq: maxTokens %d", maxTokens)
	}
	tok, err := d.AppendGreedy(ctx, tokens)
	if err != nil {
		return err
	}
	for chosen := 1; ; chosen++ {
		ahead, next := false, 0
		if chosen < maxTokens && d.Len() < d.MaxLen() {
			if next, err = d.AppendGreedy(ctx, []int{tok}); err != nil {
				return err
			}
			ahead = true
		}
		more, err := yield(tok)
		if err != nil || !more || chosen >= maxTokens {
			if ahead { // undo the step enqueued for the refused token
				d.tokens = d.tokens[:len(d.tokens)-1]
				d.appends--
				d.greedyCalls--
			}
			return err
		}
		if !ahead {
			if next, err = d.AppendGreedy(ctx, []int{tok}); err != nil {
				return err
			}
		}
		tok = next
	}
}
