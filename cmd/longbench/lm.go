package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
	"github.com/squeezeai/sqllm/evals"
	"github.com/squeezeai/sqllm/llama"
)

// loaded is an opened model as the command uses it.
type loaded struct {
	lm         evals.LM
	maxContext int    // tokens the model accepts (prompt and generation)
	describe   string // backend, dtype and model, for the report
	close      func()
	// forConfig returns the LM for one configuration (nil: lm serves every config).
	forConfig func(evals.Config) evals.LM
}

// opener opens the model the options name; tests substitute a fake.
type opener func(o *options) (*loaded, error)

// runnable says whether the engine can run a config: dense, sqNN (the calibrated threshold dropping NN%
// of the clustered keys for the context's own window queries, the paper's Sq-NN%), sqNNb (the
// fixed-budget mode: every step keeps 1-NN% of them), sqNNh (sqNN over the hierarchical two-level
// index) and sqNNm (sqNN with the attention-mass selection), with the -squeeze-* knobs (a hierarchical index needs fewer coarse centroids than centroids).
// It is checked for every config at start-up, before any data or model is loaded.
func runnable(c evals.Config, o *options) error {
	sq := squeezeOptions(c, o)
	if sq == nil {
		return nil
	}
	if _, err := sq.Normalized(); err != nil {
		return fmt.Errorf("config %s: %w", c.Name, err)
	}
	return nil
}

// squeezeOptions maps a config to the engine's Squeezed Attention options (nil: dense), with the index
// knobs of the -squeeze-* flags (0: the engine's defaults).
func squeezeOptions(c evals.Config, o *options) *llama.SqueezeOptions {
	if !c.Squeezed() {
		return nil
	}
	sq := &llama.SqueezeOptions{Sparsity: c.Sparsity, Hierarchical: c.Hierarchical, Mass: c.Mass}
	if c.FixedBudget {
		sq = &llama.SqueezeOptions{Budget: 1 - c.Sparsity}
	}
	sq.Remainder = c.Remainder
	sq.Centroids, sq.Window, sq.Iterations = o.sqCentroids, o.sqWindow, o.sqIters
	return sq
}

// openEngine opens the model with the engine.
func openEngine(o *options) (*loaded, error) {
	kind, _ := xla.ParseKind(o.backend)
	m, err := engine.Open(o.modelDir, engine.Options{Backend: kind, DType: o.dtype, CacheDir: o.cacheDir, MaxChunk: o.maxChunk,
		CtxGranule: o.ctxGranule})
	if err != nil {
		return nil, err
	}
	desc := fmt.Sprintf("model %s on %s, dtype %s", m.Dir, m.Backend.Describe(), m.DType())
	if m.Backend.Note != "" {
		desc += " (" + m.Backend.Note + ")"
	}
	return &loaded{lm: engineLM{m: m, timings: o.timingsTo}, maxContext: m.Runner.MaxLen(), describe: desc, close: func() { m.Close() },
		forConfig: func(c evals.Config) evals.LM { return engineLM{m: m, sq: squeezeOptions(c, o), timings: o.timingsTo} }}, nil
}

// engineLM is evals.LM over an engine.Model: the fixed context is prefilled (or found in the prefix cache)
// once, squeezed when sq is set, then continued with the user input. The kept fraction it reports is the
// one measured on the item's own steps (engine Response.SqueezeKept, centroids counted), 1 for dense.
type engineLM struct {
	m       *engine.Model
	sq      *llama.SqueezeOptions // nil: dense
	timings io.Writer             // -timings: each item's phase times (nil: none)
}

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
	start := time.Now()
	c, err := l.m.NewContextSqueezed(ctx, fixed, l.sq)
	if err != nil {
		return "", 0, err
	}
	defer c.Close()
	ctxTime := time.Since(start)
	kept := 1.0
	info, squeezed := c.Squeeze()
	if squeezed {
		kept = info.KeptFraction
	}
	if req.PromptTokens == nil {
		req.PromptTokens = []int{} // an empty user input: continue the fixed context alone
	}
	res, err := c.Generate(ctx, req)
	if res.SqueezeKept > 0 {
		kept = res.SqueezeKept // measured on this item's own steps
	}
	if l.timings != nil && err == nil {
		line := fmt.Sprintf("longbench: timings: %d+%d tokens: context %.3fs", len(fixed), len(input), ctxTime.Seconds())
		if squeezed {
			line += fmt.Sprintf(" (clustering %.3fs, calibration %.3fs, kept %.3f)", info.ClusterTime.Seconds(),
				info.CalibrateTime.Seconds(), kept)
		}
		fmt.Fprintf(l.timings, "%s, input %.3fs, %d new tokens %.3fs\n", line, res.PrefillDuration.Seconds(), len(res.Tokens),
			res.DecodeDuration.Seconds())
	}
	return res.Text, kept, err
}
