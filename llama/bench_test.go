package llama

import (
	"context"
	"fmt"
	"testing"

	"github.com/gomlx/compute/dtypes"
)

// BenchmarkDecode times one decode step after a prompt of ctx tokens (pure-Go backend unless
// SQLLM_TEST_BACKEND=xla).
func BenchmarkDecode(b *testing.B) {
	r := testRunner(b, dtypes.Float32, Options{})
	for _, n := range []int{64, 1024, 4096} {
		b.Run(fmt.Sprintf("ctx=%d", n), func(b *testing.B) {
			prompt := make([]int, n)
			for i := range prompt {
				prompt[i] = 100 + (i*7919)%8000
			}
			seq := r.NewSequence()
			defer seq.Close()
			if _, err := seq.Append(context.Background(), prompt); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if seq.Len() >= r.MaxLen() {
					b.Fatal("context full")
				}
				if _, err := seq.Append(context.Background(), []int{42}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPrefill times a prefill of n tokens.
func BenchmarkPrefill(b *testing.B) {
	r := testRunner(b, dtypes.Float32, Options{})
	for _, n := range []int{512, 2048} {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			prompt := make([]int, n)
			for i := range prompt {
				prompt[i] = 100 + (i*7919)%8000
			}
			for b.Loop() {
				seq := r.NewSequence()
				if _, err := seq.Append(context.Background(), prompt); err != nil {
					b.Fatal(err)
				}
				seq.Close()
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}
