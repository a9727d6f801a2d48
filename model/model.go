package model

import (
	"context"
	"errors"
)

// Sequence is one running sequence of a language model: its state (KV cache)
// grows as tokens are appended.
//
// A Sequence is not safe for concurrent use.
type Sequence interface {
	// Append feeds tokens at the end of the sequence (the prompt in one call,
	// or one generated token) and returns the logits (len = vocab) of the
	// position after the last appended token. It must honour ctx
	// cancellation (returning ctx.Err() wrapped).
	Append(ctx context.Context, tokens []int) ([]float32, error)
	// Len is the number of tokens in the sequence so far.
	Len() int
	// MaxLen is the model's context limit (max tokens the sequence may hold).
	MaxLen() int
	// Close releases device memory.
	Close() error
}

// GreedySequence is a Sequence that can pick the most likely next token itself (on its device), so that
// greedy decoding copies one token id per step instead of the vocabulary's logits.
type GreedySequence interface {
	Sequence
	// AppendGreedy is Append followed by argmax of the logits (ties to the lowest id).
	AppendGreedy(ctx context.Context, tokens []int) (int, error)
}

// GreedyDecoder is a sequence that runs greedy decoding itself, so that it can pipeline the steps (enqueue
// step i+1 on its device, fed by step i's token there, before step i's token reaches the host). Generate
// uses it for plain greedy decoding.
type GreedyDecoder interface {
	// DecodeGreedy appends tokens, then calls yield with each chosen token (the first is the one after
	// tokens; ties to the lowest id) until yield returns false or an error, or maxTokens were chosen. The
	// sequence ends holding tokens and every chosen token but the last.
	DecodeGreedy(ctx context.Context, tokens []int, maxTokens int, yield func(token int) (more bool, err error)) error
}

// TextDecoder streams text for generated tokens (implemented by
// tokenizer.StreamDecoder): Push never returns half a UTF-8 character; Flush
// returns whatever is still buffered at the end of the stream.
type TextDecoder interface {
	Push(id int) string
	Flush() string
}

// ErrContextTooLong is returned (wrapped, with the numbers) when a prompt does
// not fit in the free part of a sequence's context. Test with errors.Is.
var ErrContextTooLong = errors.New("prompt plus requested tokens exceed the model's context")
