package evals

import (
	"context"
	"strings"
)

// Tokenizer is the part of the LM that prompts need.
type Tokenizer interface {
	// Tokenize encodes text; addSpecial adds the tokenizer's special tokens (BOS).
	Tokenize(text string, addSpecial bool) []int
	// Detokenize decodes ids, skipping special tokens.
	Detokenize(ids []int) string
}

// LM is what the runner needs from a model; cmd/longbench adapts the engine to it, tests use fakes.
type LM interface {
	Tokenizer
	// Generate continues fixed (the prefix-cached context, special tokens included) with input (possibly
	// empty), decoding greedily up to maxNew tokens, stopping at end of sequence or at a stop string (cut
	// before it). keptFraction is the mean fraction of the fixed context's keys that attention used (1 for
	// dense attention).
	Generate(ctx context.Context, fixed, input []int, maxNew int, stop []string) (text string, keptFraction float64, err error)
}

// Prompt is one item's prompt, ready for LM.Generate.
type Prompt struct {
	Fixed, Input []int // the fixed context (with BOS) and the user input (no special tokens)
	// FullTokens is the length of the whole prompt tokenized at once (with BOS), before truncation.
	FullTokens int
	Truncated  bool
}

// BuildPrompt makes an item's prompt as LongBench's pred.py does, split for prefix caching:
//
//  1. fill the template and split it at {input} (Spec.Split): fixed text F, user text U;
//  2. tokenize F+U with special tokens; when that is longer than maxLength (> 0), keep its first and last
//     maxLength/2 tokens (half = int(max_length/2)) and decode each half back to text, skipping special
//     tokens, so the prompt becomes head+tail;
//  3. split the truncated text again: when it still ends with U (U fell within the kept tail — always so
//     for an empty U) the fixed text is what precedes U; otherwise the user input itself was cut, and the
//     fixed text is the decoded head and the user text the decoded tail;
//  4. tokenize the fixed text with special tokens (BOS) and the user text without.
//
// Step 4 tokenizes the two parts separately, as a prefix cache must; pred.py tokenizes the whole prompt
// once, which can differ by a merge at the boundary when U is not empty.
func BuildPrompt(tok Tokenizer, spec *Spec, it Item, maxLength int) (Prompt, error) {
	fixed, user, err := spec.Split(it)
	if err != nil {
		return Prompt{}, err
	}
	full := tok.Tokenize(fixed+user, true)
	p := Prompt{FullTokens: len(full)}
	if maxLength > 0 && len(full) > maxLength {
		half := maxLength / 2
		head := tok.Detokenize(full[:half])
		tail := tok.Detokenize(full[len(full)-half:])
		text := head + tail
		if strings.HasSuffix(text, user) {
			fixed = text[:len(text)-len(user)]
		} else {
			fixed, user = head, tail
		}
		p.Truncated = true
	}
	if !p.Truncated && user == "" {
		p.Fixed, p.Input = full, nil // all fixed context: already tokenized
		return p, nil
	}
	p.Fixed = tok.Tokenize(fixed, true)
	p.Input = tok.Tokenize(user, false)
	return p, nil
}
