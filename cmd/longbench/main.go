// Command longbench runs LongBench-format evaluations (package evals) on a model through the engine:
//
//	longbench -data DIR -tasks lcc,repobench-p -out OUT [-configs dense] [-limit N] [-max-length N]
//
// Predictions are appended to OUT/preds/CONFIG/TASK.jsonl as they are made (an interrupted run resumes
// where it stopped), and OUT/results.csv, OUT/results.md and OUT/budget.png are written at the end; the
// Markdown table also goes to stdout. With -gen-synthetic DIR it writes the synthetic passkey and
// key-value retrieval tasks instead. See EVALS.md at the repository root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
	"github.com/squeezeai/sqllm/evals"
	"github.com/squeezeai/sqllm/llama"
	"github.com/squeezeai/sqllm/tokenizer"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, openEngine))
}

// options are the parsed flags.
type options struct {
	data, tasks, modelDir, out, configs string
	prompts, maxLen                     string
	maxLength, limit                    int
	maxChunk, ctxGranule                int
	sqCentroids                         float64
	sqWindow, sqIters                   int
	backend, dtype, cacheDir            string
	quiet, timings                      bool
	timingsTo                           io.Writer // -timings: where the engine LM writes them (stderr)
	shard                               string
	shardIndex, shardCount              int
	genSynthetic, lengths               string
	seed                                int64
	perLength                           int
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("longbench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.data, "data", "", "directory of the task files: DIR/TASK.jsonl, DIR/TASK/dev.jsonl or DIR/TASK/TASK.jsonl")
	fs.StringVar(&o.tasks, "tasks", "", "comma-separated task names, e.g. lcc,repobench-p or tinycode_lcc")
	fs.StringVar(&o.modelDir, "model", "", "model directory; default: the bundled "+engine.DefaultModel)
	fs.StringVar(&o.out, "out", "", "output directory (preds/, results.csv, results.md, budget.png)")
	fs.StringVar(&o.configs, "configs", "dense", "comma-separated configs: dense, sqNN (Squeezed Attention, threshold calibrated to skip NN% of the keys), sqNNb (fixed budget: keep 1-NN% of the keys), sqNNh (sqNN over the hierarchical two-level index: 1% coarse centroids, each step scores the fine centroids of the best ones), sqNNm (calibrated to skip NN% with the attention-mass selection: every head keeps its best clusters until their estimated attention mass reaches one calibrated target)")
	fs.StringVar(&o.prompts, "prompts", "", "LongBench's config/dataset2prompt.json (templates; overrides the built-ins)")
	fs.StringVar(&o.maxLen, "maxlen", "", "LongBench's config/dataset2maxlen.json (max new tokens; overrides the built-ins)")
	fs.IntVar(&o.maxLength, "max-length", 0, "middle-truncate prompts longer than this many tokens (0: the model's context minus 512, at most 31500)")
	fs.IntVar(&o.limit, "limit", 0, "only the first N items of each task (0: all)")
	fs.StringVar(&o.shard, "shard", "", "I/N: only the items whose index in the task file is I modulo N (run N processes, e.g. one per GPU, into separate -out directories, then concatenate their predictions files and rerun without -shard to score)")
	fs.BoolVar(&o.timings, "timings", false, "print each item's phase times (context prefill/clustering/calibration, generation) to stderr")
	fs.StringVar(&o.backend, "backend", "auto", "auto | go | xla")
	fs.StringVar(&o.dtype, "dtype", "", "compute dtype: f32 | bf16 (default: f32 on the go backend, bf16 on xla)")
	fs.Float64Var(&o.sqCentroids, "squeeze-centroids", 0, "sqNN/sqNNb/sqNNh configs: centroids per KV head as a fraction of the context (0: the engine's 0.05)")
	fs.IntVar(&o.sqWindow, "squeeze-window", 0, "sqNN/sqNNb/sqNNh configs: observation window in tokens (0: the engine's 100)")
	fs.IntVar(&o.sqIters, "squeeze-iters", 0, "sqNN/sqNNb/sqNNh configs: k-means iterations, both levels (0: the engine's 10)")
	fs.IntVar(&o.maxChunk, "max-chunk", 0, "prefill chunk in tokens (0: the engine's default); a larger chunk means fewer step shapes to compile")
	fs.IntVar(&o.ctxGranule, "ctx-granule", 0, "fixed-context capacities are multiples of this many tokens (0: the engine's default); a larger granule means fewer executables to compile over contexts of many lengths")
	fs.StringVar(&o.cacheDir, "cache-dir", "-", "on-disk prefix cache directory ('-': none, the default, since every item has its own context; '': the per-user default)")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar or notes on stderr")
	fs.StringVar(&o.genSynthetic, "gen-synthetic", "", "write the synthetic passkey_N and kv_retrieval_N tasks into this directory and exit")
	fs.Int64Var(&o.seed, "seed", 1, "-gen-synthetic: random seed")
	fs.StringVar(&o.lengths, "lengths", "2000,4000", "-gen-synthetic: context lengths in tokens of the model's tokenizer")
	fs.IntVar(&o.perLength, "synthetic-n", 5, "-gen-synthetic: items per length (needles at evenly spaced depths)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "usage: longbench -data DIR -tasks a,b -out DIR [flags]\n       longbench -gen-synthetic DIR [-seed S] [-lengths 2000,4000]")
			fs.PrintDefaults()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.genSynthetic != "" {
		if o.perLength <= 0 {
			return nil, errors.New("-synthetic-n must be positive")
		}
		return o, nil
	}
	switch {
	case o.data == "":
		return nil, errors.New("-data DIR is required")
	case o.tasks == "":
		return nil, errors.New("-tasks is required")
	case o.out == "":
		return nil, errors.New("-out DIR is required")
	case o.limit < 0 || o.maxLength < 0 || o.maxChunk < 0 || o.ctxGranule < 0:
		return nil, errors.New("-limit, -max-length, -max-chunk and -ctx-granule must not be negative")
	case o.maxLength == 1:
		return nil, errors.New("-max-length 1 keeps no token (half of it is 0)")
	}
	// The squeeze knobs are checked like the engine checks them (any mode will do for that).
	if _, err := (llama.SqueezeOptions{Budget: 0.5, Centroids: o.sqCentroids, Window: o.sqWindow, Iterations: o.sqIters}).Normalized(); err != nil {
		return nil, fmt.Errorf("-squeeze-centroids/-squeeze-window/-squeeze-iters: %w", err)
	}
	if o.shard != "" {
		var err error
		if o.shardIndex, o.shardCount, err = parseShard(o.shard); err != nil {
			return nil, fmt.Errorf("-shard: %w", err)
		}
	}
	if _, err := xla.ParseKind(o.backend); err != nil {
		return nil, fmt.Errorf("-backend: %w", err)
	}
	if _, err := engine.ParseDType(o.dtype); err != nil {
		return nil, fmt.Errorf("-dtype: %w", err)
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, open opener) int {
	start := time.Now()
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "longbench: %v\n", err)
		return 2
	}
	if o.genSynthetic != "" {
		return genSynthetic(o, stdout, stderr)
	}
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "longbench: %v\n", err)
		return code
	}
	// Everything that can be checked without the model is checked before loading it.
	configs, err := evals.ParseConfigs(o.configs)
	if err != nil {
		return fail(2, err)
	}
	for _, c := range configs {
		if err := runnable(c, o); err != nil {
			return fail(2, err)
		}
	}
	specs, err := evals.NewSpecs(o.prompts, o.maxLen)
	if err != nil {
		return fail(1, err)
	}
	var tasks []*evals.Task
	for name := range strings.SplitSeq(o.tasks, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		t, err := evals.LoadTask(o.data, name, specs, o.limit)
		if err != nil {
			return fail(1, err)
		}
		if o.shardCount > 0 {
			t.Items = shardItems(t.Items, o.shardIndex, o.shardCount)
		}
		tasks = append(tasks, t)
	}
	if len(tasks) == 0 {
		return fail(2, errors.New("-tasks names no task"))
	}

	kind, _ := xla.ParseKind(o.backend)
	xla.ReexecWithLibraryPath(xla.Options{Kind: kind})
	if o.modelDir == "" {
		if o.modelDir, err = engine.FindDefaultModel(); err != nil {
			return fail(1, err)
		}
	}
	if o.timings {
		o.timingsTo = stderr
	}
	m, err := open(o)
	if err != nil {
		return fail(1, err)
	}
	defer m.close()
	maxLength := o.maxLength
	if maxLength == 0 {
		maxLength = min(31500, m.maxContext-512)
	}
	plan, err := evals.NewPlan(o.out, configs, tasks, maxLength)
	if err != nil {
		return fail(1, err)
	}
	lms := map[string]evals.LM{}
	for _, c := range configs {
		lms[c.Name] = m.lm
		if m.forConfig != nil {
			lms[c.Name] = m.forConfig(c)
		}
	}
	remaining := plan.Remaining()
	if !o.quiet {
		fmt.Fprintf(stderr, "longbench: %s; max length %d tokens; %d predictions to make (%d already in %s)\n",
			m.describe, maxLength, remaining, countDone(plan), o.out)
		for _, j := range plan.Jobs {
			if j.Repaired {
				fmt.Fprintf(stderr, "longbench: note: %s ended in a truncated row (interrupted write); it was cut off and will be redone\n", j.Path)
			}
		}
	}
	var progress evals.Progress
	var bar *progressbar.ProgressBar
	if remaining > 0 && !o.quiet && isTerminal(stderr) {
		bar = progressbar.NewOptions(remaining, progressbar.OptionSetWriter(stderr), progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true), progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionSetWidth(30),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(stderr) }))
		progress = bar
	}
	err = plan.Execute(ctx, lms, progress)
	if bar != nil && err != nil {
		fmt.Fprintln(stderr)
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "longbench: interrupted with %d of %d predictions made; rerun the same command to resume\n",
				remaining-plan.Remaining(), remaining)
			return 130
		}
		return fail(1, err)
	}
	results, err := plan.Results()
	if err != nil {
		return fail(1, err)
	}
	if err := evals.WriteResults(o.out, results); err != nil {
		return fail(1, err)
	}
	if err := evals.WriteMarkdown(stdout, results); err != nil {
		return fail(1, err)
	}
	if !o.quiet {
		fmt.Fprintf(stderr, "longbench: wrote %s/{%s,%s,%s} in %.1fs\n", o.out, evals.ResultsCSV, evals.ResultsMD,
			evals.BudgetPlot, time.Since(start).Seconds())
	}
	return 0
}

// parseShard parses -shard's I/N.
func parseShard(s string) (i, n int, err error) {
	a, b, ok := strings.Cut(s, "/")
	if ok {
		i, err = strconv.Atoi(a)
		if err == nil {
			n, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || n < 1 || i < 0 || i >= n {
		return 0, 0, fmt.Errorf("%q is not I/N with 0 <= I < N", s)
	}
	return i, n, nil
}

// shardItems keeps the items whose index is i modulo n.
func shardItems(items []evals.Item, i, n int) []evals.Item {
	var out []evals.Item
	for j, it := range items {
		if j%n == i {
			out = append(out, it)
		}
	}
	return out
}

// countDone is the number of predictions already made for the plan's items.
func countDone(p *evals.Plan) int {
	n := 0
	for _, j := range p.Jobs {
		n += len(j.Task.Items) - j.Remaining()
	}
	return n
}

// isTerminal reports whether w is a terminal (a character device), where a progress bar belongs.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// genSynthetic writes the synthetic tasks, counting tokens with the model's tokenizer.
func genSynthetic(o *options, stdout, stderr io.Writer) int {
	var lengths []int
	for s := range strings.SplitSeq(o.lengths, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(stderr, "longbench: -lengths: %q is not a positive number\n", s)
			return 2
		}
		lengths = append(lengths, n)
	}
	dir := o.modelDir
	if dir == "" {
		var err error
		if dir, err = engine.FindDefaultModel(); err != nil {
			fmt.Fprintf(stderr, "longbench: %v\n", err)
			return 1
		}
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		fmt.Fprintf(stderr, "longbench: %v\n", err)
		return 1
	}
	paths, err := evals.WriteSynthetic(o.genSynthetic, evals.SyntheticOptions{Seed: o.seed, Lengths: lengths,
		PerLength: o.perLength, Count: func(s string) int { return len(tok.Encode(s, false)) }})
	if err != nil {
		fmt.Fprintf(stderr, "longbench: %v\n", err)
		return 1
	}
	for _, p := range paths {
		fmt.Fprintln(stdout, p)
	}
	return 0
}
