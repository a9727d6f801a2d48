package model

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// GenerateOptions controls Generate.
type GenerateOptions struct {
	// MaxTokens is the maximum number of new tokens; it must be > 0.
	MaxTokens int
	// Sampler chooses each token; the zero value is greedy decoding.
	Sampler SamplerConfig
	// StopTokens (e.g. EOS ids) end generation when one is sampled. The stop
	// token is neither emitted as text nor included in Result.Tokens.
	StopTokens []int
	// StopStrings end generation when the generated text contains one of
	// them; the text is cut before it and the stop string is never streamed.
	// They must be non-empty, valid UTF-8, and need a TextDecoder.
	StopStrings []string
	// OnText, if set, is called with chunks of text as soon as they are final
	// (text that could still be the start of a stop string is held back).
	// Returning an error aborts generation with that error. The
	// concatenation of all chunks always equals Result.Text.
	OnText func(text string) error
}

// StopReason tells why generation ended.
type StopReason string

// Stop reasons. A Result returned with an error has an empty StopReason.
const (
	StopEOS         StopReason = "eos"          // a stop token was sampled
	StopString      StopReason = "stop_string"  // the text contained a stop string
	StopMaxTokens   StopReason = "max_tokens"   // MaxTokens tokens were generated
	StopContextFull StopReason = "context_full" // the sequence reached MaxLen
)

// Result is the outcome of Generate.
type Result struct {
	// Tokens are the sampled tokens, without the stop token. When a stop
	// string matched, the tokens that formed it are included (Text is cut).
	Tokens []int
	// Text is the generated text, exactly the concatenation of the OnText
	// chunks (also on error: it then holds what was streamed so far).
	Text       string
	StopReason StopReason
	// PromptTokens is len(prompt).
	PromptTokens int
	// PrefillDuration is the time of the prompt's Append (time to the first
	// token's logits); DecodeDuration is the rest (sampling and the Appends
	// of generated tokens).
	PrefillDuration, DecodeDuration time.Duration
	// DecodeTokens is the number of Append calls after the prefill, one per
	// token of Tokens except the last sampled token, which is never appended:
	// len(Tokens) when StopReason is eos (the stop token was the last one
	// sampled), else len(Tokens)-1 (or 0).
	DecodeTokens int
	// SqueezeKept is, for a sequence over a fixed context read with Squeezed Attention, the mean fraction of
	// the fixed context's keys its steps read, measured on the steps themselves (centroids counted; see
	// llama.Sequence.SqueezeKept); 0 otherwise. The engine fills it in.
	SqueezeKept float64
}

var errNoLogits = errors.New("sequence returned no logits")

// Generate appends prompt to seq and samples up to opts.MaxTokens new
// tokens, streaming their text through dec (which may be nil when neither
// StopStrings nor OnText is used).
//
// The prompt must be non-empty. If it does not fit in the free context
// (seq.MaxLen()-seq.Len()) the error wraps ErrContextTooLong. If it fits but
// prompt plus MaxTokens does not, generation stops with StopContextFull once
// seq.Len() at start + len(prompt) + len(Tokens) reaches seq.MaxLen().
//
// The last sampled token is never appended (its logits are not needed): on
// return seq holds the prompt and all of Tokens when generation ended on a
// stop token, else all of Tokens but the last one, which a caller continuing
// the sequence must append first.
//
// The repetition penalty sees prompt plus the generated tokens (not tokens
// that were in seq before the call). ctx is checked between steps; on
// cancellation the partial Result is returned with an error wrapping
// ctx.Err().
func Generate(ctx context.Context, seq Sequence, prompt []int, dec TextDecoder, opts GenerateOptions) (res Result, err error) {
	res.PromptTokens = len(prompt)
	if len(prompt) == 0 {
		return res, errors.New("model: generate: empty prompt")
	}
	if opts.MaxTokens <= 0 {
		return res, fmt.Errorf("model: generate: max tokens must be > 0, got %d", opts.MaxTokens)
	}
	if err = opts.Sampler.Validate(); err != nil {
		return res, fmt.Errorf("model: generate: %w", err)
	}
	for _, s := range opts.StopStrings {
		if s == "" || !utf8.ValidString(s) {
			return res, fmt.Errorf("model: generate: stop strings must be non-empty valid UTF-8, got %q", s)
		}
	}
	if dec == nil && (len(opts.StopStrings) > 0 || opts.OnText != nil) {
		return res, errors.New("model: generate: stop strings and OnText need a TextDecoder")
	}
	free := seq.MaxLen() - seq.Len()
	if len(prompt) > free {
		return res, fmt.Errorf("model: generate: %w: prompt has %d tokens but only %d of the %d-token context are free",
			ErrContextTooLong, len(prompt), max(free, 0), seq.MaxLen())
	}
	if err = ctx.Err(); err != nil {
		return res, fmt.Errorf("model: generate: %w", err)
	}

	budget, full := opts.MaxTokens, StopMaxTokens
	if room := free - len(prompt); room < budget {
		budget, full = room, StopContextFull
	}

	sampler := NewSampler(opts.Sampler)
	history := make([]int, len(prompt), len(prompt)+budget)
	copy(history, prompt)
	// next appends tokens and picks the following token: on the sequence's device when decoding is plain
	// greedy (only the id crosses to the host), else by the sampler from the logits.
	greedySeq, onDevice := seq.(GreedySequence)
	onDevice = onDevice && sampler.cfg.Temperature == 0 && sampler.cfg.RepeatPenalty == 1
	next := func(tokens []int) (int, error) {
		if onDevice {
			return greedySeq.AppendGreedy(ctx, tokens)
		}
		logits, err := seq.Append(ctx, tokens)
		if err == nil && len(logits) == 0 {
			err = errNoLogits
		}
		if err != nil {
			return 0, err
		}
		return sampler.Sample(logits, history), nil
	}

	text := newTextStream(dec, opts.StopStrings, opts.OnText)
	var decodeStart time.Time
	defer func() {
		res.Text = text.out.String()
		if !decodeStart.IsZero() {
			res.DecodeDuration = time.Since(decodeStart)
		}
	}()
	res.Tokens = make([]int, 0, budget)
	// accept takes the next sampled token; it reports whether generation goes on.
	accept := func(tok int) (bool, error) {
		if len(res.Tokens) >= budget {
			res.StopReason = full
			return false, nil
		}
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("model: generate: %w", err)
		}
		if slices.Contains(opts.StopTokens, tok) {
			res.StopReason = StopEOS
			return false, nil
		}
		res.Tokens = append(res.Tokens, tok)
		history = append(history, tok)
		stopped, err := text.push(tok)
		if err != nil {
			return false, err
		}
		if stopped {
			res.StopReason = StopString
			return false, nil
		}
		if len(res.Tokens) >= budget {
			res.StopReason = full
			return false, nil // the last token is not appended: its logits are not needed
		}
		return true, nil
	}

	start := time.Now()
	if dev, ok := seq.(GreedyDecoder); ok && onDevice && budget > 0 {
		// Plain greedy decoding on a sequence that pipelines it: the sequence drives the loop.
		var acceptErr error
		first := true
		err = dev.DecodeGreedy(ctx, prompt, budget, func(tok int) (bool, error) {
			if first {
				res.PrefillDuration = time.Since(start)
				decodeStart, first = time.Now(), false
			} else {
				res.DecodeTokens++
			}
			more, err := accept(tok)
			acceptErr = err
			return more, err
		})
		switch {
		case acceptErr != nil:
			return res, acceptErr
		case err != nil && first:
			res.PrefillDuration = time.Since(start)
			return res, fmt.Errorf("model: generate: prefill: %w", err)
		case err != nil:
			return res, fmt.Errorf("model: generate: decode step %d: %w", res.DecodeTokens+1, err)
		}
	} else {
		tok, err := next(prompt)
		res.PrefillDuration = time.Since(start)
		if err != nil {
			return res, fmt.Errorf("model: generate: prefill: %w", err)
		}
		decodeStart = time.Now()
		for {
			more, err := accept(tok)
			if err != nil {
				return res, err
			}
			if !more {
				break
			}
			tok, err = next([]int{tok})
			res.DecodeTokens++
			if err != nil {
				return res, fmt.Errorf("model: generate: decode step %d: %w", res.DecodeTokens, err)
			}
		}
	}
	stopped, err := text.finish(res.StopReason == StopString)
	if err != nil {
		return res, err
	}
	if stopped {
		res.StopReason = StopString
	}
	return res, nil
}

// textStream turns tokens into streamed text, holding back only what could
// still be the beginning of a stop string.
type textStream struct {
	dec     TextDecoder
	stops   []string
	onText  func(string) error
	pending string          // decoded, not yet emitted
	out     strings.Builder // everything emitted
}

func newTextStream(dec TextDecoder, stops []string, onText func(string) error) *textStream {
	return &textStream{dec: dec, stops: stops, onText: onText}
}

// push decodes id; it reports whether a stop string was found (the text
// before it has then been emitted).
func (t *textStream) push(id int) (bool, error) {
	if t.dec == nil {
		return false, nil
	}
	t.pending += t.dec.Push(id)
	return t.advance()
}

// finish flushes the decoder and emits what remains, cut at a stop string.
// When a stop string already matched, the rest of the text is dropped.
func (t *textStream) finish(alreadyStopped bool) (bool, error) {
	if t.dec == nil {
		return false, nil
	}
	tail := t.dec.Flush()
	if alreadyStopped {
		return false, nil
	}
	t.pending += tail
	if stopped, err := t.advance(); stopped || err != nil {
		return stopped, err
	}
	rest := t.pending
	t.pending = ""
	return false, t.emit(rest)
}

// advance emits pending text up to a stop string (reporting true) or up to
// the longest suffix that is a prefix of a stop string (held back).
func (t *textStream) advance() (bool, error) {
	if cut := t.stopIndex(); cut >= 0 {
		head := t.pending[:cut]
		t.pending = ""
		return true, t.emit(head)
	}
	keep := t.holdBack()
	head := t.pending[:len(t.pending)-keep]
	t.pending = t.pending[len(t.pending)-keep:]
	return false, t.emit(head)
}

// stopIndex returns the earliest position of a stop string in pending, or -1.
func (t *textStream) stopIndex() int {
	cut := -1
	for _, s := range t.stops {
		if i := strings.Index(t.pending, s); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	return cut
}

// holdBack returns the length of the longest suffix of pending that is a
// proper prefix of some stop string.
func (t *textStream) holdBack() int {
	best := 0
	for _, s := range t.stops {
		for k := min(len(s)-1, len(t.pending)); k > best; k-- {
			if strings.HasPrefix(s, t.pending[len(t.pending)-k:]) {
				best = k
				break
			}
		}
	}
	return best
}

func (t *textStream) emit(s string) error {
	if s == "" {
		return nil
	}
	t.out.WriteString(s)
	if t.onText != nil {
		if err := t.onText(s); err != nil {
			return fmt.Errorf("model: generate: OnText: %w", err)
		}
	}
	return nil
}
