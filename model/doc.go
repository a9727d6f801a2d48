// Package model holds the engine contracts of sqllm and the generation logic
// that runs on top of them. It imports only the standard library, so it can
// be tested with a fake language model.
//
// # Contracts
//
// A backend exposes a running sequence as a [Sequence]: Append feeds tokens
// (the whole prompt, then one generated token at a time) into the KV cache
// and returns the logits for the next position. A tokenizer turns tokens back
// into text through a [TextDecoder], which never returns half a UTF-8
// character.
//
// # Sampling
//
// A [Sampler] picks the next token from logits as configured by a
// [SamplerConfig], applying the steps in the order Hugging Face transformers
// does:
//
//  1. repetition penalty over the last RepeatLastN tokens of the history
//     (64 by default, -1 = all), each distinct token once: a logit > 0 is
//     divided by the penalty, any other is multiplied by it;
//  2. temperature (0 = greedy: argmax, ties broken by the lowest id, like
//     torch.argmax; the steps below are then skipped);
//  3. top-k (exactly k tokens, ties broken by the lowest id);
//  4. top-p: the smallest set of most likely tokens whose cumulative
//     probability is >= p, always at least one;
//  5. min-p: tokens less likely than min-p times the most likely one are
//     dropped;
//  6. a draw from the remaining tokens with a PCG generator (math/rand/v2)
//     seeded by Seed, so that the same seed gives the same tokens.
//
// Sampling never sorts the vocabulary: top-k uses a size-k heap, top-p a
// histogram of the scaled logits that leaves only one small bucket to sort,
// and probabilities come from a table-based exponential. Buffers are reused
// between calls, so Sample does not allocate in steady state.
//
// # Generation
//
// [Generate] runs the prefill and decode loop: it appends the prompt, samples
// a token, streams its text, appends it, and so on until a stop token, a stop
// string, MaxTokens or the end of the context. Text is streamed through
// GenerateOptions.OnText as soon as it is final: only the text that could
// still be the beginning of a stop string is held back, and the
// concatenation of the chunks always equals Result.Text. A prompt that does
// not fit in the context is an error wrapping [ErrContextTooLong]; a prompt
// that fits, with too little room left for MaxTokens, generates until the
// context is full and reports [StopContextFull].
package model
