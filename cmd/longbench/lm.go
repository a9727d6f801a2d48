package main

import (
	"context"
	"fmt"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
	"github.com/squeezeai/sqllm/evals"
)

// loaded is an opened model as the command uses it.
type loaded struct {
	lm         evals.LM
	maxContext int    // tokens the model accepts (prompt and generation)
	describe   string // backend, dtype and model, for the report
	close      func()
}

// opener opens the model the options name; tests substitute a fake.
type opener func(o *options) (*loaded, error)

// runnable says whether the engine can run a config: dense only, until Squeezed Attention lands. It is
// checked for every config at start-up, before any data or model is loaded.
func runnable(c evals.Config) error {
	if c.Squeezed() {
		return c.NotImplemented()
	}
	return nil
}

// openEngine opens the model with the engine.
func openEngine(o *options) (*loaded, error) {
	kind, _ := xla.ParseKind(o.backend)
	m, err := engine.Open(o.modelDir, engine.Options{Backend: kind, DType: o.dtype, CacheDir: o.cacheDir})
	if err != nil {
		return nil, err
	}
	desc := fmt.Sprintf("model %s on %s, dtype %s", m.Dir, m.Backend.Describe(), m.DType())
	if m.Backend.Note != "" {
		desc += " (" + m.Backend.Note + ")"
	}
	return &loaded{lm: engineLM{m}, maxContext: m.Runner.MaxLen(), describe: desc, close: func() { m.Close() }}, nil
}

// engineLM is evals.LM over an engine.Model with dense attention: the fixed context is prefilled (or found
// in the prefix cache) once, then continued with the user input; every key is kept.
type engineLM struct{ m *engine.Model }

func (l engineLM) Tokenize(text string, addSpecial bool) []int {
	return l.m.Tokenizer.Encode(text, addSpecial)
}

func (l engineLM) Detokenize(ids []int) string { return l.m.Tokenizer.Decode(ids, true) }

func (l engineLM) Generate(ctx context.Context, fixed, input []int, maxNew int, stop []string) (string, float64, error) {
	// The zero Sampler is greedy decoding.
	req := engine.Request{PromptTokens: input, MaxTokens: maxNew, Stop: stop}
	if len(fixed) == 0 {
		// a tokenizer without BOS and an empty fixed context: nothing to cache
		res, err := l.m.Generate(ctx, req)
		return res.Text, 1, err
	}
	c, err := l.m.NewContextTokens(ctx, fixed)
	if err != nil {
		return "", 0, err
	}
	defer c.Close()
	if req.PromptTokens == nil {
		req.PromptTokens = []int{} // an empty user input: continue the fixed context alone
	}
	res, err := c.Generate(ctx, req)
	return res.Text, 1, err
}
