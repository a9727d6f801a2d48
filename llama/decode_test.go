package llama

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"
)

// greedyLoop is the reference for DecodeGreedy: AppendGreedy step by step, n tokens chosen.
func greedyLoop(t *testing.T, seq *Sequence, in []int, n int) []int {
	t.Helper()
	var out []int
	for len(out) < n {
		next, err := seq.AppendGreedy(context.Background(), in)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, next)
		if len(out) < n {
			in = []int{next}
		}
	}
	return out
}

// TestDecodeGreedy: pipelined greedy decoding chooses the tokens of an AppendGreedy loop, on a sequence's
// own context and from a prefix, across the dynamic segment's growth and folds (DynBlock 16); stopped at
// any token, it leaves the sequence where the loop leaves it (the next step's logits agree), so the step
// it had enqueued for the refused token is really dropped.
func TestDecodeGreedy(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{MaxChunk: 128, DynBlock: 16})
	ctx := context.Background()
	prompt, p := syntheticPrefix(t, r, 150)
	defer p.Free()
	const n = 40
	for name, mk := range map[string]func() *Sequence{"own": r.NewSequence, "prefix": p.NewSequence} {
		in := prompt
		if name == "prefix" {
			in = []int{5, 6, 7}
		}
		ref := mk()
		want := greedyLoop(t, ref, in, n)
		for _, stop := range []int{1, 2, 15, 16, 17, 23, n} {
			seq := mk()
			before := pipelinedSteps.Load()
			var got []int
			err := seq.DecodeGreedy(ctx, in, n, func(tok int) (bool, error) {
				got = append(got, tok)
				return len(got) < stop, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != stop {
				t.Fatalf("%s, stop %d: %d tokens chosen", name, stop, len(got))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s, stop %d: token %d = %d, the AppendGreedy loop chose %d", name, stop, i, got[i], want[i])
				}
			}
			if stop > 2 && pipelinedSteps.Load() == before {
				t.Errorf("%s, stop %d: no step was enqueued ahead", name, stop)
			}
			// The sequence holds in and every chosen token but the last, as the loop leaves it.
			loop := mk()
			greedyLoop(t, loop, in, stop)
			if seq.Len() != loop.Len() {
				t.Fatalf("%s, stop %d: length %d, the loop's %d", name, stop, seq.Len(), loop.Len())
			}
			a, err := seq.Append(ctx, []int{got[stop-1]})
			if err != nil {
				t.Fatal(err)
			}
			b, err := loop.Append(ctx, []int{got[stop-1]})
			if err != nil {
				t.Fatal(err)
			}
			if d := maxDiff(a, b); d > 1e-5 {
				t.Errorf("%s, stop %d: the next step's logits differ from the loop's by %.2e", name, stop, d)
			}
			seq.Close()
			loop.Close()
		}
		ref.Close()
	}
}

// TestDecodeGreedyErrors: yield's error is returned as is and drops the step enqueued ahead; a bad
// maxTokens is refused; a cancelled context stops decoding.
func TestDecodeGreedyErrors(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{MaxChunk: 128, DynBlock: 16})
	ctx := context.Background()
	seq := r.NewSequence()
	defer seq.Close()
	if err := seq.DecodeGreedy(ctx, []int{1, 2, 3}, 0, nil); err == nil {
		t.Error("maxTokens 0: no error")
	}
	if err := seq.DecodeGreedy(ctx, []int{1, 2, 3}, 5, nil); err == nil || seq.Len() != 0 {
		t.Errorf("nil yield: error %v, sequence length %d", err, seq.Len())
	}
	boom := errors.New("boom")
	calls := 0
	err := seq.DecodeGreedy(ctx, []int{1, 2, 3}, 10, func(int) (bool, error) {
		calls++
		if calls == 3 {
			return false, boom
		}
		return true, nil
	})
	if !errors.Is(err, boom) || calls != 3 {
		t.Errorf("yield error: got %v after %d calls", err, calls)
	}
	if seq.Len() != 3+2 {
		t.Errorf("after 3 tokens chosen the sequence holds %d tokens, want 5", seq.Len())
	}
	cctx, cancel := context.WithCancel(ctx)
	calls = 0
	err = seq.DecodeGreedy(cctx, []int{4}, 10, func(int) (bool, error) {
		calls++
		if calls == 2 {
			cancel()
		}
		return true, nil
	})
	if !errors.Is(err, context.Canceled) || calls != 2 {
		t.Errorf("cancelled: got %v after %d calls", err, calls)
	}
}

// TestWeightValuesSplit: the split form of probs·values (partial sums over key chunks) equals the one
// product.
func TestWeightValuesSplit(t *testing.T) {
	testSplitK = true
	defer func() { testSplitK = false }()
	rng := rand.New(rand.NewPCG(1, 2))
	const kvh, rows, capacity, hd = 2, 3, 4 * splitKRows, 8
	probs, values := make([]float32, kvh*rows*capacity), make([]float32, kvh*capacity*hd)
	for i := range probs {
		probs[i] = rng.Float32()
	}
	for i := range values {
		values[i] = rng.Float32()*2 - 1
	}
	exec, err := graph.NewExec(testBackend(t), func(p, v *graph.Node) (*graph.Node, *graph.Node) {
		return weightValues(p, v), graph.Einsum("kqp,kpd->kqd", p, v)
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Call(tensors.FromFlatDataAndDimensions(probs, kvh, rows, capacity),
		tensors.FromFlatDataAndDimensions(values, kvh, capacity, hd))
	if err != nil {
		t.Fatal(err)
	}
	split, plain := tensors.MustCopyFlatData[float32](out[0]), tensors.MustCopyFlatData[float32](out[1])
	if d := maxDiff(split, plain); d > 1e-3 || len(split) != kvh*rows*hd {
		t.Errorf("split form differs from the product by %.2e (%d values)", d, len(split))
	}
}

// syntheticPrefix prefills a prefix of n synthetic token ids and returns the ids and the prefix.
func syntheticPrefix(t *testing.T, r *Runner, n int) ([]int, *Prefix) {
	t.Helper()
	prompt := make([]int, n)
	for i := range prompt {
		prompt[i] = 100 + (i*7919)%8000
	}
	p, err := r.Prefill(context.Background(), prompt)
	if err != nil {
		t.Fatal(err)
	}
	return prompt, p
}
