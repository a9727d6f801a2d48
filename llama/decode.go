package llama

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/gomlx/gomlx/core/tensors"
)

// noPipeline turns DecodeGreedy's pipelining off (SQLLM_NO_PIPELINE=1), for measuring what it gains.
var noPipeline = os.Getenv("SQLLM_NO_PIPELINE") != ""

// pipelinedSteps counts the steps DecodeGreedy enqueued ahead of their token (tests check it moves).
var pipelinedSteps atomic.Int64

// DecodeGreedy appends tokens, then decodes greedily: it calls yield with each chosen token in turn (the
// first is the one after tokens) until yield returns false or an error, or maxTokens tokens have been
// chosen. Ties go to the lowest id, as in AppendGreedy.
//
// The steps are pipelined: while step i's token is copied to the host and handed to yield, step i+1 is
// already enqueued on the device, reading step i's token there (the XLA backend executes asynchronously,
// see backend/xla). The device then never waits for the host between tokens; before, a 7B decode step
// on an H100 spent about 1.7 ms of its 7.9 ms in that round trip. When yield stops, the step enqueued for
// the token it refused is dropped, so the sequence ends as a loop of AppendGreedy calls leaves it: holding
// tokens and every chosen token but the last.
//
// A step is enqueued ahead only when it fits the dynamic segment as it is (no growth, no fold into the
// fixed context, about one token in DynBlock otherwise); other steps wait for the host's token.
func (s *Sequence) DecodeGreedy(ctx context.Context, tokens []int, maxTokens int,
	yield func(token int) (more bool, err error)) (err error) {
	if maxTokens <= 0 {
		return fmt.Errorf("llama: decode: maxTokens must be > 0, got %d", maxTokens)
	}
	if yield == nil {
		return errors.New("llama: decode: nil yield function")
	}
	s.greedy, s.keepNext = true, true
	defer func() {
		s.greedy, s.keepNext, s.tokIn = false, false, nil
		if s.nextDev != nil {
			s.nextDev.FinalizeAll()
			s.nextDev = nil
		}
	}()
	if _, err := s.append(ctx, tokens, false); err != nil {
		return err
	}
	cur := s.take()
	var ahead *tensors.Tensor // the step enqueued for cur's token, not yet accepted
	defer func() {
		if cur != nil {
			cur.FinalizeAll()
		}
		if ahead != nil { // yield refused cur's token (or something failed): drop the step that fed it
			ahead.FinalizeAll()
			s.dynLen--
		}
	}()
	for chosen := 1; ; chosen++ {
		if chosen < maxTokens && s.canEnqueueAhead() {
			if ahead, err = s.stepFromDevice(ctx, cur); err != nil {
				return err
			}
		}
		ids, err := tensors.CopyFlatData[int32](cur)
		if err != nil {
			return fmt.Errorf("llama: decode step: %w", err)
		}
		cur.FinalizeAll()
		cur = nil
		tok := int(ids[0])
		more, err := yield(tok)
		if err != nil || !more || chosen >= maxTokens {
			return err
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("llama: %w", err)
		}
		if ahead == nil {
			if _, err := s.append(ctx, []int{tok}, false); err != nil {
				return err
			}
			ahead = s.take()
		}
		cur, ahead = ahead, nil
	}
}

// take returns the argmax a keepNext step left on the device.
func (s *Sequence) take() *tensors.Tensor {
	t := s.nextDev
	s.nextDev = nil
	return t
}

// canEnqueueAhead reports whether the next one-token step can run before its token is known on the host:
// the sequence is a plain decoding one whose dynamic segment has room for the token as it is.
func (s *Sequence) canEnqueueAhead() bool {
	return !noPipeline && !s.closed && len(s.pending) == 0 && s.ctx != nil && s.dyn != nil &&
		s.dynLen+1 <= s.dyn.capacity() && s.Len()+1 <= s.r.maxLen
}

// stepFromDevice enqueues the one-token step whose token is tok, the previous step's argmax on the
// device, and returns its own argmax (on the device).
func (s *Sequence) stepFromDevice(ctx context.Context, tok *tensors.Tensor) (next *tensors.Tensor, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("llama: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("llama: step failed: %v", p)
		}
	}()
	s.tokIn = tok
	defer func() { s.tokIn = nil }()
	before := s.dynLen
	// The token's value lives on the device; 0 holds its place in the host vector (the step ignores it).
	if _, err := s.dynChunk([]int{0}, false); err != nil {
		return nil, err
	}
	if s.dynLen != before+1 || s.nextDev == nil {
		return nil, errors.New("llama: internal error: a pipelined step did not advance the sequence by one token")
	}
	pipelinedSteps.Add(1)
	return s.take(), nil
}
