// Command generate runs a LLaMA-family model on a prompt and streams the generated text to stdout.
//
// With no flags it runs the bundled tinycode-llama-16m model on a built-in code prompt. The report
// (backend, prompt tokens, prefill and decode speed) goes to stderr, so stdout carries only the text.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
	"github.com/squeezeai/sqllm/llama"
	"github.com/squeezeai/sqllm/model"
)

// defaultPrompt is the built-in code prompt for the bundled Python code model.
const defaultPrompt = `import math


def is_prime(n):
    """Return True if n is a prime number."""
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

type config struct {
	modelDir, prompt, promptFile      string
	maxTokens                         int
	temperature, topP, repeatPenalty  float64
	topK, repeatLastN                 int
	seed                              int64
	stops                             stringList
	backend, plugin, dtype            string
	maxChunk, maxContext              int
	randomWeights, ignoreEOS, quiet   bool
	contextFile, cacheDir             string
	noCache, interactive              bool
	sqBudget, sqCentroids, sqSparsity float64
	sqHierarchical, sqMass, sqRem     bool
	sqCoarse, sqCoarseKeep            float64
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed by run as one line; -h prints the usage below
	fs.StringVar(&c.modelDir, "model", "", "model directory (config.json, tokenizer.json, *.safetensors); default: the bundled "+engine.DefaultModel)
	fs.StringVar(&c.prompt, "prompt", "", "prompt text (default: a built-in code prompt)")
	fs.StringVar(&c.promptFile, "prompt-file", "", "read the prompt from a file ('-' = stdin)")
	fs.IntVar(&c.maxTokens, "max-tokens", 128, "maximum number of new tokens")
	fs.Float64Var(&c.temperature, "temperature", 0, "sampling temperature (0 = greedy)")
	fs.IntVar(&c.topK, "top-k", 0, "keep only the k most likely tokens (0 = off)")
	fs.Float64Var(&c.topP, "top-p", 1, "nucleus sampling: keep the smallest set with this probability (1 = off)")
	fs.Float64Var(&c.repeatPenalty, "repeat-penalty", 1, "repetition penalty (1 = off)")
	fs.IntVar(&c.repeatLastN, "repeat-last-n", 64, "how many previous tokens the repetition penalty looks at (-1 = all)")
	fs.Int64Var(&c.seed, "seed", 0, "random seed for sampling")
	fs.Var(&c.stops, "stop", "stop when the generated text contains this string (repeatable)")
	fs.StringVar(&c.backend, "backend", "auto", "auto | go | xla (auto: the CUDA PJRT plugin if installed, else the pure-Go CPU backend)")
	fs.StringVar(&c.plugin, "pjrt-plugin", "", "path of a PJRT CUDA plugin (xla_cuda_plugin.so); default: $PJRT_CUDA_PLUGIN or the installed jax plugin")
	fs.StringVar(&c.dtype, "dtype", "", "compute dtype: f32 | bf16 (default: f32 on the go backend, bf16 on xla)")
	fs.IntVar(&c.maxChunk, "chunk", 0, "prefill chunk size in tokens (default: 512 on go, 2048 on xla)")
	fs.IntVar(&c.maxContext, "max-context", 0, "lower the context limit (default: the model's max_position_embeddings)")
	fs.BoolVar(&c.randomWeights, "random-weights", false, "use random weights of the config's shapes (benchmarks only)")
	fs.BoolVar(&c.ignoreEOS, "ignore-eos", false, "keep generating past the end-of-sequence token")
	fs.BoolVar(&c.quiet, "quiet", false, "no report on stderr")
	fs.StringVar(&c.contextFile, "context-file", "", "a long fixed context (document, code) prefilled once and cached; -prompt/-prompt-file is then the user input that follows it")
	fs.StringVar(&c.cacheDir, "cache-dir", "", "prefix cache directory (default: $SQLLM_CACHE_DIR or the user cache directory's sqllm/prefix)")
	fs.BoolVar(&c.noCache, "no-cache", false, "do not read or write the prefix cache")
	fs.Float64Var(&c.sqBudget, "squeeze-budget", 0, "Squeezed Attention over the -context-file: keep this fraction of its clustered keys per step (fixed budget; 0 = dense)")
	fs.Float64Var(&c.sqCentroids, "squeeze-centroids", 0.05, "number of k-means centroids as a fraction of the fixed context")
	fs.Float64Var(&c.sqSparsity, "squeeze-sparsity", 0, "Squeezed Attention over the -context-file with a threshold calibrated to drop this fraction of its clustered keys (the paper's Sq-NN%; 0 = dense)")
	fs.BoolVar(&c.sqHierarchical, "squeeze-hierarchical", false, "with -squeeze-sparsity or -squeeze-budget: a two-level index; the centroids are clustered into coarse centroids, and each step scores the coarse centroids, then only the centroids under the best ones")
	fs.BoolVar(&c.sqRem, "squeeze-remainder", true, "with -squeeze-sparsity or -squeeze-budget: the keys a step drops are still attended, approximately: each cluster stands for its dropped keys through its centroid, weighted by their number, with their cluster's mean value (with -squeeze-hierarchical, the clusters a step does not score stand for their keys through their coarse centroid; =false: the paper's selection alone)")
	fs.BoolVar(&c.sqMass, "squeeze-mass", false, "with -squeeze-sparsity: every head keeps its best clusters until their estimated attention mass reaches a target calibrated to the sparsity (per-head, adapts to how spread each head's attention is), instead of one global threshold on a cluster's estimated probability")
	fs.Float64Var(&c.sqCoarse, "squeeze-coarse", 0, "with -squeeze-hierarchical: coarse centroids as a fraction of the fixed context, below -squeeze-centroids (0: 0.01)")
	fs.Float64Var(&c.sqCoarseKeep, "squeeze-coarse-keep", 0, "with -squeeze-hierarchical: fraction of the centroids each step scores, those under the best coarse centroids, in (0, 1] (0: twice the kept fraction, within [0.5, 1])")
	fs.BoolVar(&c.interactive, "interactive", false, "with -context-file: read user inputs from stdin, one per line, and answer each against the same fixed context")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: generate [flags]   (no flags: the bundled model on a built-in code prompt)")
			fs.PrintDefaults()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (use -prompt TEXT)", fs.Arg(0))
	}
	remSet := false // -squeeze-remainder given explicitly (its default is on when squeezing)
	fs.Visit(func(f *flag.Flag) { remSet = remSet || f.Name == "squeeze-remainder" })
	if !remSet && c.sqSparsity == 0 && c.sqBudget == 0 {
		c.sqRem = false
	}
	if c.prompt != "" && c.promptFile != "" {
		return nil, errors.New("-prompt and -prompt-file are exclusive")
	}
	if c.maxTokens <= 0 {
		return nil, fmt.Errorf("-max-tokens %d: must be positive", c.maxTokens)
	}
	if c.maxTokens > 1<<20 {
		return nil, fmt.Errorf("-max-tokens %d: absurdly large", c.maxTokens)
	}
	if _, err := xla.ParseKind(c.backend); err != nil {
		return nil, fmt.Errorf("-backend: %w", err)
	}
	if _, err := engine.ParseDType(c.dtype); err != nil {
		return nil, fmt.Errorf("-dtype: %w", err)
	}
	if c.interactive && c.contextFile == "" {
		return nil, errors.New("-interactive needs -context-file")
	}
	if c.interactive && c.promptFile == "-" {
		return nil, errors.New("-interactive reads its inputs from stdin: -prompt-file - cannot be used with it")
	}
	if c.sqBudget < 0 || c.sqBudget > 1 || math.IsNaN(c.sqBudget) {
		return nil, fmt.Errorf("-squeeze-budget %g: want a fraction in (0, 1]", c.sqBudget)
	}
	if c.sqBudget != 0 && c.contextFile == "" {
		return nil, errors.New("-squeeze-budget applies to a fixed context: give -context-file")
	}
	if c.sqSparsity < 0 || c.sqSparsity >= 1 || math.IsNaN(c.sqSparsity) {
		return nil, fmt.Errorf("-squeeze-sparsity %g: want a fraction in [0, 1) (0 = dense)", c.sqSparsity)
	}
	if c.sqSparsity != 0 && c.sqBudget != 0 {
		return nil, errors.New("-squeeze-sparsity and -squeeze-budget are exclusive: a calibrated threshold or a fixed budget")
	}
	if c.sqSparsity != 0 && c.contextFile == "" {
		return nil, errors.New("-squeeze-sparsity applies to a fixed context: give -context-file")
	}
	if c.sqCentroids <= 0 || c.sqCentroids > 0.5 {
		return nil, fmt.Errorf("-squeeze-centroids %g: want a fraction in (0, 0.5]", c.sqCentroids)
	}
	if c.sqMass && c.sqSparsity == 0 {
		return nil, errors.New("-squeeze-mass needs -squeeze-sparsity (the calibrated mode)")
	}
	if c.sqRem && c.sqSparsity == 0 && c.sqBudget == 0 {
		return nil, errors.New("-squeeze-remainder needs -squeeze-sparsity or -squeeze-budget")
	}
	if c.sqMass && c.sqHierarchical {
		return nil, errors.New("-squeeze-mass and -squeeze-hierarchical: the attention-mass selection works over a flat index only")
	}
	if (c.sqCoarse != 0 || c.sqCoarseKeep != 0) && !c.sqHierarchical {
		return nil, errors.New("-squeeze-coarse and -squeeze-coarse-keep apply to -squeeze-hierarchical")
	}
	if c.sqHierarchical {
		if c.sqBudget == 0 && c.sqSparsity == 0 {
			return nil, errors.New("-squeeze-hierarchical needs -squeeze-sparsity or -squeeze-budget")
		}
		if _, err := c.squeeze().Normalized(); err != nil {
			return nil, fmt.Errorf("-squeeze-hierarchical: %w", err)
		}
	}
	if c.maxChunk < 0 || c.maxContext < 0 {
		return nil, errors.New("-chunk and -max-context must not be negative")
	}
	return c, nil
}

// squeeze returns the Squeezed Attention options (nil: dense, which -squeeze-sparsity 0 means).
func (c *config) squeeze() *llama.SqueezeOptions {
	if c.sqBudget == 0 && c.sqSparsity == 0 {
		return nil
	}
	return &llama.SqueezeOptions{Budget: c.sqBudget, Sparsity: c.sqSparsity, Centroids: c.sqCentroids,
		Hierarchical: c.sqHierarchical, CoarseCentroids: c.sqCoarse, CoarseKeep: c.sqCoarseKeep, Mass: c.sqMass,
		Remainder: c.sqRem}
}

func (c *config) sampler() model.SamplerConfig {
	return model.SamplerConfig{Temperature: c.temperature, TopK: c.topK, TopP: c.topP,
		RepeatPenalty: c.repeatPenalty, RepeatLastN: c.repeatLastN, Seed: c.seed}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "generate: %v\n", err)
		return 2
	}
	if err := c.sampler().Validate(); err != nil {
		fmt.Fprintf(stderr, "generate: %v\n", err)
		return 2
	}
	kind, _ := xla.ParseKind(c.backend)
	xla.ReexecWithLibraryPath(xla.Options{Kind: kind, PluginPath: c.plugin})

	prompt := defaultPrompt
	if c.contextFile != "" {
		prompt = "" // the user input after a fixed context may be empty
	}
	switch {
	case c.prompt != "":
		prompt = c.prompt
	case c.promptFile == "-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			fmt.Fprintf(stderr, "generate: reading stdin: %v\n", err)
			return 1
		}
		prompt = string(b)
	case c.promptFile != "":
		b, err := os.ReadFile(c.promptFile)
		if err != nil {
			fmt.Fprintf(stderr, "generate: %v\n", err)
			return 1
		}
		prompt = string(b)
	}
	if prompt == "" && c.contextFile == "" {
		fmt.Fprintln(stderr, "generate: the prompt is empty")
		return 2
	}
	var fixed string
	if c.contextFile != "" {
		b, err := os.ReadFile(c.contextFile)
		if err != nil {
			fmt.Fprintf(stderr, "generate: -context-file: %v\n", err)
			return 1
		}
		fixed = string(b)
	}
	dir := c.modelDir
	if dir == "" {
		if dir, err = engine.FindDefaultModel(); err != nil {
			fmt.Fprintf(stderr, "generate: %v\n", err)
			return 1
		}
	}
	m, err := engine.Open(dir, engine.Options{Backend: kind, PluginPath: c.plugin, DType: c.dtype,
		MaxChunk: c.maxChunk, MaxContext: c.maxContext, RandomWeights: c.randomWeights,
		CacheDir: c.cacheDir, NoCache: c.noCache, Squeeze: c.squeeze()})
	if err != nil {
		fmt.Fprintf(stderr, "generate: %v\n", err)
		return 1
	}
	defer m.Close()
	if m.Backend.Note != "" && !c.quiet {
		fmt.Fprintf(stderr, "generate: note: %s\n", m.Backend.Note)
	}

	out := bufio.NewWriter(stdout)
	req := engine.Request{
		Prompt: prompt, MaxTokens: c.maxTokens, Sampler: c.sampler(), Stop: c.stops, IgnoreEOS: c.ignoreEOS,
		OnText: func(s string) error {
			if _, err := out.WriteString(s); err != nil {
				return err
			}
			return out.Flush()
		},
	}
	generate := m.Generate
	if c.contextFile != "" {
		fc, err := m.NewContext(ctx, fixed)
		if err != nil {
			fmt.Fprintf(stderr, "generate: -context-file %s: %v\n", c.contextFile, err)
			return 1
		}
		defer fc.Close()
		if !c.quiet {
			reportContext(stderr, m, fc)
		}
		generate = fc.Generate
	}
	answer := func(req engine.Request) int {
		res, err := generate(ctx, req)
		out.Flush()
		if res.Text != "" && !strings.HasSuffix(res.Text, "\n") {
			fmt.Fprintln(stdout)
		}
		if err != nil {
			fmt.Fprintf(stderr, "generate: %v\n", err)
			return 1
		}
		if !c.quiet {
			report(stderr, m, res)
		}
		return 0
	}
	if !c.interactive {
		return answer(req)
	}
	// Interactive: one user input per line, each answered from the same cached fixed context.
	in := bufio.NewScanner(stdin)
	in.Buffer(nil, 1<<24)
	if !c.quiet {
		fmt.Fprintln(stderr, "interactive: one input per line; end with Ctrl-D")
	}
	for in.Scan() {
		req.Prompt = in.Text() + "\n"
		if code := answer(req); code != 0 {
			return code
		}
		fmt.Fprintln(stdout)
		out.Flush()
		if ctx.Err() != nil {
			break
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(stderr, "generate: reading stdin: %v\n", err)
		return 1
	}
	return 0
}

func reportContext(w io.Writer, m *engine.Model, fc *engine.Context) {
	where := m.CacheDir()
	if where == "" {
		where = "no disk cache"
	}
	fmt.Fprintf(w, "fixed context: %d tokens, %s in %.3fs (cache: %s)\n", fc.Tokens, fc.Source, fc.Duration.Seconds(), where)
	if fc.WriteDuration > 0 {
		fmt.Fprintf(w, "fixed context: written to the disk cache in %.3fs\n", fc.WriteDuration.Seconds())
	}
	if info, ok := fc.Squeeze(); ok {
		fmt.Fprintln(w, squeezeReport(info))
	}
	if fc.Note != "" {
		fmt.Fprintf(w, "fixed context: note: %s\n", fc.Note)
	}
}

func report(w io.Writer, m *engine.Model, res engine.Response) {
	weightsNote := ""
	if m.RandomWeights {
		weightsNote = " (RANDOM WEIGHTS)"
	}
	fmt.Fprintf(w, "backend: %s, dtype %s%s\n", m.Backend.Describe(), m.DType(), weightsNote)
	fmt.Fprintf(w, "model: %s (%d layers, %.1fM parameters), loaded in %.2fs\n", m.Dir, m.Config.NumHiddenLayers,
		float64(m.Config.NumParams())/1e6, m.LoadDuration.Seconds())
	pre := res.PrefillDuration.Seconds()
	fmt.Fprintf(w, "prompt: %d tokens, prefill %.3fs (%.1f tokens/s; time to first token, compilation included on first use)\n",
		res.PromptTokens, pre, float64(res.PromptTokens)/max(pre, 1e-9))
	dec := res.DecodeDuration.Seconds()
	fmt.Fprintf(w, "decode: %d tokens in %.3fs (%.1f tokens/s); stop: %s\n", len(res.Tokens), dec,
		float64(res.DecodeTokens)/max(dec, 1e-9), res.StopReason)
	if res.SqueezeKept > 0 {
		fmt.Fprintf(w, "squeezed attention: the steps read %.3f of the fixed context's keys (measured; centroids counted)\n", res.SqueezeKept)
	}
}

// squeezeReport is the report line of a squeezed fixed context: how the index was made (clustered and
// calibrated, with the times, or loaded from the disk cache; a hierarchical one with its coarse centroids
// and the centroids a step scores) and the mean kept fraction, centroids counted.
func squeezeReport(info llama.SqueezeInfo) string {
	centroids := fmt.Sprintf("%d centroids", info.Centroids)
	if info.CoarseCentroids > 0 {
		centroids = fmt.Sprintf("%d centroids and %d coarse centroids (hierarchical: each step scores the coarse ones and %d centroids under the best)",
			info.Centroids, info.CoarseCentroids, info.ScoredCentroids)
	}
	if info.Options.Remainder {
		centroids += " (the dropped keys attended through them and their clusters' mean values)"
	}
	made := fmt.Sprintf("%d keys clustered into %s in %.3fs", info.Clustered, centroids, info.ClusterTime.Seconds())
	if info.Loaded {
		made = fmt.Sprintf("index of %d keys in %s loaded from the disk cache in %.3fs", info.Clustered,
			centroids, info.LoadTime.Seconds())
	}
	report := indexReport(info, made)
	if info.PagedDecode {
		report += "; decode reads the kept keys with the paged Triton kernel"
		if info.PagedSegDecode {
			report += ", the input's and generated tokens in the same launch"
		}
	}
	if info.SelectKernels {
		report += "; the kept keys are selected by the selection Triton kernels"
		if info.LookupKernel {
			report += ", a decode step's cluster scores in the lookup kernel"
		}
	}
	if info.ScoreKernels {
		report += "; the input's cluster scores come from the cluster-score Triton kernels"
	}
	return report
}

// indexReport is squeezeReport's text for an index made (or loaded) as `made` says.
func indexReport(info llama.SqueezeInfo, made string) string {
	if info.Options.Calibrated() {
		calibrated := ""
		if !info.Loaded {
			calibrated = fmt.Sprintf(", calibrated in %.3fs", info.CalibrateTime.Seconds())
		}
		if info.Options.Mass {
			return fmt.Sprintf("squeezed attention: %s%s, window %d; sparsity %.2f: attention-mass target %.4g keeps %.3f of the clustered keys "+
				"for the calibration queries, one token at a time (kept lists per layer, window included: %v); mean kept fraction %.3f (centroids counted)",
				made, calibrated, info.Window, info.Options.Sparsity, info.Threshold, info.CalibratedKept, info.ListSizes, info.KeptFraction)
		}
		return fmt.Sprintf("squeezed attention: %s%s, window %d; sparsity %.2f: threshold %.3g keeps %.3f of the clustered keys "+
			"for the calibration queries (at most %d per head and step); mean kept fraction %.3f (centroids counted)",
			made, calibrated, info.Window, info.Options.Sparsity, info.Threshold, info.CalibratedKept, info.Budget, info.KeptFraction)
	}
	return fmt.Sprintf("squeezed attention: %s, window %d, budget %d keys; mean kept fraction %.3f (centroids counted)",
		made, info.Window, info.Budget, info.KeptFraction)
}
