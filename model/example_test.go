package model_test

import (
	"context"
	"fmt"

	"github.com/squeezeai/sqllm/model"
)

// countdownSeq is a toy Sequence: its logits always favour the token after
// the last one, up to token 4 (EOS).
type countdownSeq struct{ tokens []int }

func (s *countdownSeq) Append(ctx context.Context, tokens []int) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("countdown: %w", err)
	}
	s.tokens = append(s.tokens, tokens...)
	logits := make([]float32, 5)
	logits[min(s.tokens[len(s.tokens)-1]+1, 4)] = 1
	return logits, nil
}
func (s *countdownSeq) Len() int     { return len(s.tokens) }
func (s *countdownSeq) MaxLen() int  { return 64 }
func (s *countdownSeq) Close() error { return nil }

// words is a toy TextDecoder.
type words []string

func (w words) Push(id int) string { return w[id] }
func (w words) Flush() string      { return "" }

func ExampleGenerate() {
	seq := &countdownSeq{}
	dec := words{"Ready", ", set", ", go", "!", "<eos>"}
	res, err := model.Generate(context.Background(), seq, []int{0}, dec, model.GenerateOptions{
		MaxTokens:  10,
		StopTokens: []int{4},
		OnText: func(text string) error {
			fmt.Printf("chunk %q\n", text)
			return nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("tokens %v, text %q, stop %s, decode steps %d\n", res.Tokens, res.Text, res.StopReason, res.DecodeTokens)
	// Output:
	// chunk ", set"
	// chunk ", go"
	// chunk "!"
	// tokens [1 2 3], text ", set, go!", stop eos, decode steps 3
}
