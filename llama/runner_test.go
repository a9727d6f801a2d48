package llama

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/gomlx/compute/dtypes"

	"github.com/squeezeai/sqllm/model"
)

// TestSegmentsMatchOneShot feeds a prompt in many different ways (small prefill chunks, one token at a
// time through the dynamic segment with folds and growth, multi-token dynamic chunks) and checks that
// every position's logits equal those of a single prefill.
func TestSegmentsMatchOneShot(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[1].IDs // 42 tokens
	ref := testRunner(t, dtypes.Float32, Options{})
	seq := ref.NewSequence()
	want, err := seq.AppendAllLogits(context.Background(), ids)
	seq.Close()
	if err != nil {
		t.Fatal(err)
	}

	small := testRunner(t, dtypes.Float32, Options{MaxChunk: 8, DynBlock: 4, CtxGranule: 16})
	splits := map[string][]int{
		"prefill-chunks-then-singles": {11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
		"singles":                     ones(len(ids)),
		"big-dyn-chunk":               {3, 20, 19},
	}
	for name, split := range splits {
		t.Run(name, func(t *testing.T) {
			s := small.NewSequence()
			defer s.Close()
			pos := 0
			for _, n := range split {
				if pos+n > len(ids) {
					n = len(ids) - pos
				}
				got, err := s.AppendAllLogits(context.Background(), ids[pos:pos+n])
				if err != nil {
					t.Fatal(err)
				}
				for i, row := range got {
					if d := maxDiff(row, want[pos+i]); d > 1e-4*maxAbs(want[pos+i]) {
						t.Fatalf("position %d: logits differ by %.2e", pos+i, d)
					}
				}
				pos += n
				if s.Len() != pos {
					t.Fatalf("Len() = %d, want %d", s.Len(), pos)
				}
			}
		})
	}
}

func ones(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

func maxDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// TestBFloat16 checks bf16 compute against transformers' float32 reference: logits within a few percent
// and the same top-1 token almost everywhere.
func TestBFloat16(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	r := testRunner(t, dtypes.BFloat16, Options{})
	gc := cases[1]
	seq := r.NewSequence()
	defer seq.Close()
	all, err := seq.AppendAllLogits(context.Background(), gc.IDs)
	if err != nil {
		t.Fatal(err)
	}
	rel := maxDiff(all[len(all)-1], gc.LastLogits) / maxAbs(gc.LastLogits)
	agree := 0
	for p := range gc.IDs {
		if argmax(all[p]) == gc.Top5IDs[p][0] {
			agree++
		}
	}
	t.Logf("bf16: last-position relative error %.2e; top-1 agrees at %d/%d positions", rel, agree, len(gc.IDs))
	if rel > 5e-2 {
		t.Errorf("bf16 last logits relative error %.2e > 5e-2", rel)
	}
	if agree < len(gc.IDs)*9/10 {
		t.Errorf("bf16 top-1 agrees at only %d/%d positions", agree, len(gc.IDs))
	}
}

func TestAppendErrors(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{MaxLen: 16})
	s := r.NewSequence()
	defer s.Close()
	if _, err := s.Append(context.Background(), make([]int, 17)); !errors.Is(err, model.ErrContextTooLong) {
		t.Errorf("17 tokens into a 16-token context: got %v, want ErrContextTooLong", err)
	}
	if _, err := s.Append(context.Background(), []int{1 << 20}); err == nil {
		t.Error("token id beyond the vocabulary: no error")
	}
	if _, err := s.Append(context.Background(), nil); err == nil {
		t.Error("no tokens: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, []int{1, 2}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v", err)
	}
	if s.Len() != 0 {
		t.Errorf("failed appends changed the sequence: Len() = %d", s.Len())
	}
	// The sequence is still usable.
	if _, err := s.Append(context.Background(), []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Append(context.Background(), []int{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("closed sequence: got %v", err)
	}
}
