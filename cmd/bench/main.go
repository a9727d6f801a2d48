// Command bench measures prefill and decode speed of a model for several prompt lengths and prints a
// Markdown table (for BENCHMARKS.md). Each length is run once to compile (warm-up), then timed.
//
//	bench -lens 1024,4096,8192 -decode 64 [-backend xla -dtype bf16] [-model DIR] [-random-weights]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
	"github.com/squeezeai/sqllm/llama"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelDir := fs.String("model", "", "model directory (default: the bundled model)")
	lensFlag := fs.String("lens", "1024,4096,8192", "comma-separated prompt lengths in tokens")
	decode := fs.Int("decode", 64, "decode steps to time after each prompt")
	reps := fs.Int("reps", 3, "timed repetitions per length (the median is reported)")
	backend := fs.String("backend", "auto", "auto | go | xla")
	plugin := fs.String("pjrt-plugin", "", "PJRT CUDA plugin path")
	dtype := fs.String("dtype", "", "f32 | bf16")
	chunk := fs.Int("chunk", 0, "prefill chunk size")
	random := fs.Bool("random-weights", false, "random weights from config.json (for real shapes without a checkpoint)")
	label := fs.String("label", "", "label for the table's first column (default: the model directory's name)")
	ttftCtx := fs.Int("ttft-context", 0, "also measure time to first token with a cached fixed context of this many tokens (0 = skip)")
	ttftQ := fs.Int("ttft-question", 64, "user-input tokens after the fixed context, for -ttft-context")
	cacheDir := fs.String("cache-dir", "", "prefix cache directory for -ttft-context and -squeeze-budget (default: a temporary directory)")
	ttftDisk := fs.Bool("ttft-disk", true, "with -ttft-context, also time disk hits")
	memCache := fs.Float64("memory-cache-gib", 0, "device memory budget of cached prefixes, GiB (0: the engine's default, 2 GiB)")
	sqBudget := fs.Float64("squeeze-budget", 0, "instead of the speed table: every -lens length as a fixed context, answered dense and with Squeezed Attention at this fixed budget (fraction of the keys kept, e.g. 0.1): user-input step and decode ms/token (0 = off)")
	sqInput := fs.Int("squeeze-input", 512, "user-input tokens after the fixed context, for -squeeze-budget")
	sqHier := fs.Bool("squeeze-hierarchical", false, "with -squeeze-budget, also a row with the hierarchical (two-level) index")
	sqRem := fs.Bool("squeeze-remainder", false, "with -squeeze-budget, also a row with the dropped keys attended through their clusters (SqueezeOptions.Remainder)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !(*sqBudget >= 0 && *sqBudget < 1) || *sqInput < 1 {
		fmt.Fprintf(stderr, "bench: -squeeze-budget %v / -squeeze-input %d: want a fraction in [0, 1) and at least one input token\n", *sqBudget, *sqInput)
		return 2
	}
	if *sqRem && *sqBudget == 0 {
		fmt.Fprintln(stderr, "bench: -squeeze-remainder needs -squeeze-budget (it adds a row to that table)")
		return 2
	}
	if *sqHier && *sqBudget == 0 {
		fmt.Fprintln(stderr, "bench: -squeeze-hierarchical needs -squeeze-budget (it adds a row to that table)")
		return 2
	}
	if !(*memCache >= 0) || math.IsInf(*memCache, 0) {
		fmt.Fprintf(stderr, "bench: -memory-cache-gib %v: want a finite number of GiB >= 0\n", *memCache)
		return 2
	}
	var lens []int
	for _, s := range strings.Split(*lensFlag, ",") {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(stderr, "bench: -lens: bad length %q\n", s)
			return 2
		}
		lens = append(lens, n)
	}
	kind, err := xla.ParseKind(*backend)
	if err != nil {
		fmt.Fprintf(stderr, "bench: -backend: %v\n", err)
		return 2
	}
	xla.ReexecWithLibraryPath(xla.Options{Kind: kind, PluginPath: *plugin})
	dir := *modelDir
	if dir == "" {
		if dir, err = engine.FindDefaultModel(); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
	}
	if (*ttftCtx > 0 || *sqBudget > 0) && *cacheDir == "" { // fresh: a stored prefix or index would skip the work timed
		tmp, err := os.MkdirTemp("", "sqllm-bench-cache")
		if err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		*cacheDir = tmp
	}
	m, err := engine.Open(dir, engine.Options{Backend: kind, PluginPath: *plugin, DType: *dtype, MaxChunk: *chunk,
		RandomWeights: *random, CacheDir: *cacheDir, MemoryCacheBytes: int64(*memCache * (1 << 30))})
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	defer m.Close()
	name := *label
	if name == "" {
		name = dir[strings.LastIndex(dir, "/")+1:]
		if *random {
			name += " (random weights)"
		}
	}
	fmt.Fprintf(stdout, "<!-- %s; %s; GOMAXPROCS=%d; %s -->\n", m.Backend.Describe(), m.DType(), runtime.GOMAXPROCS(0),
		time.Now().UTC().Format("2006-01-02"))
	ctx := context.Background()
	if *ttftCtx > 0 {
		if err := ttft(ctx, stdout, m, name, *ttftCtx, *ttftQ, *reps, *ttftDisk); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		if *lensFlag == "" {
			return 0
		}
	}
	if *sqBudget > 0 {
		if err := squeezed(ctx, stdout, m, name, lens, *sqInput, *decode, *reps, *sqBudget, *sqHier, *sqRem); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		return 0
	}
	var bw float64 // measured copy bandwidth, bytes/s (read + write)
	if len(lens) > 0 {
		var overhead time.Duration
		if bw, overhead, err = copyBandwidth(m); err != nil {
			fmt.Fprintf(stderr, "bench: measuring copy bandwidth: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "<!-- measured copy bandwidth (read+write bytes of x+1, slope between %d and %d MiB buffers): %.0f GB/s, call overhead %.0f us; weights %.2f GB -->\n",
			copyBytes(m)>>22, copyBytes(m)>>20, bw/1e9, float64(overhead.Microseconds()), float64(m.Runner.WeightBytes())/1e9)
		fmt.Fprintln(stdout, "| model | backend | dtype | prompt tokens | prefill tokens/s | prefill s | prefill TFLOP/s | decode ms/token | decode tokens/s | roofline ms/token | × roofline | peak GPU memory GiB | first run s |")
		fmt.Fprintln(stdout, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	}
	mem := startMemSampler()
	defer mem.stop()
	for _, n := range lens {
		if n+*decode > m.Runner.MaxLen() {
			fmt.Fprintf(stderr, "bench: %d + %d tokens exceed the context %d; skipped\n", n, *decode, m.Runner.MaxLen())
			continue
		}
		prompt := make([]int, n)
		for i := range prompt {
			prompt[i] = 100 + (i*7919)%(m.Config.VocabSize-200)
		}
		var pre, dec []float64
		var first float64 // rep 0: the compilations of the length's steps, then the same work as the others
		mem.reset()
		for rep := 0; rep <= *reps; rep++ { // rep 0 compiles
			// Greedy decoding as the engine runs it (llama.Sequence.DecodeGreedy): the argmax is taken on
			// the device and the steps are pipelined. The prefill ends when the first token reaches the
			// host; each decode step then adds one token.
			seq := m.Runner.NewSequence()
			t0 := time.Now()
			var p float64
			var t1 time.Time
			err := seq.DecodeGreedy(ctx, prompt, *decode+1, func(int) (bool, error) {
				if t1.IsZero() {
					p, t1 = time.Since(t0).Seconds(), time.Now()
				}
				return true, nil
			})
			if err != nil {
				fmt.Fprintf(stderr, "bench: %v\n", err)
				return 1
			}
			d := time.Since(t1).Seconds() / float64(max(*decode, 1))
			seq.Close()
			if rep > 0 {
				pre, dec = append(pre, p), append(dec, d)
			} else {
				first = time.Since(t0).Seconds()
			}
		}
		p, d := median(pre), median(dec)
		// Decode steps run with the prompt in the fixed-context segment and the generated tokens in a
		// dynamic segment of 128-token blocks; the roofline counts the middle step.
		dynCap := (*decode + 1 + 127) / 128 * 128
		roof := float64(m.Runner.DecodeStepBytes(n+*decode/2, dynCap)) / bw
		peak := "n/a"
		if gib, ok := mem.peakGiB(); ok {
			peak = fmt.Sprintf("%.1f", gib)
		}
		fmt.Fprintf(stdout, "| %s | %s | %s | %d | %.0f | %.3f | %.3g | %.2f | %.1f | %.2f | %.2f | %s | %.1f |\n", name, m.Backend.Kind,
			m.DType(), n, float64(n)/p, p, m.Runner.PrefillFLOPs(n)/p/1e12, d*1e3, 1/d, roof*1e3, d/roof, peak, first)
	}
	return 0
}

func synthetic(n, offset, vocab int) []int {
	ids := make([]int, n)
	for i := range ids {
		ids[i] = 100 + ((i+offset)*7919)%(vocab-200)
	}
	return ids
}

// ttft measures the time to the first generated token for a fixed context of n tokens plus a user input of q
// tokens: cold (no cache: the whole prompt is prefilled), from the memory cache, and from the disk cache.
func ttft(ctx context.Context, w io.Writer, m *engine.Model, name string, n, q, reps int, disk bool) error {
	fixed := synthetic(n, 0, m.Config.VocabSize)
	question := synthetic(q, n, m.Config.VocabSize)
	cold := func() error {
		_, err := m.Generate(ctx, engine.Request{PromptTokens: append(slices.Clone(fixed), question...), MaxTokens: 1})
		return err
	}
	var source engine.CacheSource
	cached := func() error {
		c, err := m.NewContextTokens(ctx, fixed)
		if err != nil {
			return err
		}
		defer c.Close()
		source = c.Source
		t0 := time.Now()
		_, err = c.Generate(ctx, engine.Request{PromptTokens: question, MaxTokens: 1})
		if os.Getenv("SQLLM_TRACE") != "" {
			fmt.Fprintf(os.Stderr, "trace: %s in %v, then the user input to the first token in %v\n", c.Source, c.Duration, time.Since(t0))
		}
		return err
	}
	timeIt := func(f func() error, before func()) (float64, error) {
		var ts []float64
		for rep := 0; rep <= reps; rep++ { // rep 0 compiles
			if before != nil {
				before()
			}
			t0 := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			if rep > 0 {
				ts = append(ts, time.Since(t0).Seconds())
			}
		}
		return median(ts), nil
	}
	tCold, err := timeIt(cold, nil)
	if err != nil {
		return err
	}
	if err := cached(); err != nil { // computes the prefix and writes the disk entry
		return err
	}
	tMem, err := timeIt(cached, nil)
	if err != nil {
		return err
	}
	if source != engine.FromMemory {
		return fmt.Errorf("expected memory hits, got %s", source)
	}
	tDisk := math.NaN()
	if disk {
		if tDisk, err = timeIt(cached, m.PurgeMemoryCache); err != nil {
			return err
		}
		if source != engine.FromDisk {
			return fmt.Errorf("expected disk hits, got %s", source)
		}
	}
	fmt.Fprintf(w, "\n| model | backend | dtype | fixed context | user input | cold TTFT s | memory hit TTFT s | disk hit TTFT s | memory speed-up | disk speed-up |\n")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(w, "| %s | %s | %s | %d | %d | %.4f | %.4f | %.4f | %.1f× | %.1f× |\n\n", name, m.Backend.Kind, m.DType(), n, q,
		tCold, tMem, tDisk, tCold/tMem, tCold/tDisk)
	return nil
}

// squeezed measures Squeezed Attention inside the engine: for each fixed-context length, the context is
// prefilled once, then used dense and with a fixed-budget squeeze index; each answers the same user input
// (input tokens) and decodes decode tokens greedily. It prints the time of the user input's step (to the
// first token's logits) and the decode time per token, medians of reps runs after a compiling one.
func squeezed(ctx context.Context, w io.Writer, m *engine.Model, name string, lens []int, input, decode, reps int, budget float64,
	hierarchical, remainder bool) error {
	fmt.Fprintf(w, "\n| model | dtype | fixed context | user input | attention | user-input step ms | decode ms/token | kept fraction | clustering s |\n")
	fmt.Fprintln(w, "|---|---|---:|---:|---|---:|---:|---:|---:|")
	for _, n := range lens {
		fixed := synthetic(n, 0, m.Config.VocabSize)
		question := synthetic(input, n, m.Config.VocabSize)
		var denseIn, denseDec float64
		configs := []*llama.SqueezeOptions{nil, {Budget: budget}}
		if hierarchical {
			configs = append(configs, &llama.SqueezeOptions{Budget: budget, Hierarchical: true})
		}
		if remainder {
			configs = append(configs, &llama.SqueezeOptions{Budget: budget, Remainder: true})
		}
		for _, sq := range configs {
			c, err := m.NewContextSqueezed(ctx, fixed, sq)
			if err != nil {
				return err
			}
			info, isSq := c.Squeeze()
			var tin, tdec []float64
			for rep := 0; rep <= reps; rep++ { // rep 0 compiles
				res, err := c.Generate(ctx, engine.Request{PromptTokens: question, MaxTokens: decode + 1, IgnoreEOS: true})
				if err != nil {
					c.Close()
					return err
				}
				if rep > 0 && res.DecodeTokens > 0 {
					tin = append(tin, res.PrefillDuration.Seconds())
					tdec = append(tdec, res.DecodeDuration.Seconds()/float64(res.DecodeTokens))
				}
			}
			c.Close()
			tIn, tDec := median(tin), median(tdec)
			mode, kept, clus, vs := "dense", "1", "", ""
			if isSq {
				mode = fmt.Sprintf("squeezed, budget %g", budget)
				if info.Options.Hierarchical {
					mode += ", hierarchical"
				}
				if info.Options.Remainder {
					mode += ", remainder"
				}
				if info.PagedDecode {
					mode += ", paged kernel"
					if info.PagedSegDecode {
						mode += " with the input tokens"
					}
				}
				if info.SelectKernels {
					mode += ", selection kernels"
					if info.LookupKernel {
						mode += " with the lookup kernel"
					}
				}
				if info.ScoreKernels {
					mode += ", score kernels"
				}
				kept = fmt.Sprintf("%.3f", info.KeptFraction)
				clus = fmt.Sprintf("%.2f", info.ClusterTime.Seconds())
				if info.Loaded {
					clus = "loaded"
				}
				vs = fmt.Sprintf(" (%.2f× / %.2f×)", denseIn/tIn, denseDec/tDec)
			} else {
				denseIn, denseDec = tIn, tDec
			}
			fmt.Fprintf(w, "| %s | %s | %d | %d | %s%s | %.2f | %.2f | %s | %s |\n", name, m.DType(), n, input, mode, vs,
				tIn*1e3, tDec*1e3, kept, clus)
		}
	}
	return nil
}

// copyBytes is the larger buffer size of the bandwidth probe: 2 GiB on a GPU, 128 MiB on the CPU (the
// smaller one is a quarter of it).
func copyBytes(m *engine.Model) int64 {
	if m.Backend.Kind == xla.XLA {
		return 2 << 30
	}
	return 128 << 20
}

// copyBandwidth measures the device's memory bandwidth as the engine sees it: an executable that reads a
// float32 buffer and writes x+1 to a new one, timed (fastest of 10 calls) over a buffer of copyBytes and
// one of a quarter of that. The bandwidth is the slope, extra bytes read + written over extra time, so the
// fixed cost of an executable call (about 0.1 ms on a GPU, which made the single-size probe of session 3
// read 1.9-2.1 TB/s on an H100 that copies at about 3 TB/s) cancels; overhead is that fixed cost.
func copyBandwidth(m *engine.Model) (bw float64, overhead time.Duration, err error) {
	big := int(copyBytes(m) / 4)
	small := big / 4
	tBig, err := copyTime(m, big)
	if err != nil {
		return 0, 0, err
	}
	tSmall, err := copyTime(m, small)
	if err != nil {
		return 0, 0, err
	}
	if tBig <= tSmall {
		return 0, 0, fmt.Errorf("copying %d floats took no longer than %d (%.3g s, %.3g s)", big, small, tBig, tSmall)
	}
	bw = float64(8*(big-small)) / (tBig - tSmall)
	overhead = time.Duration((tSmall - float64(8*small)/bw) * 1e9)
	return bw, overhead, nil
}

// copyTime is the fastest of 10 timed runs of y = x+1 over n float32 (then y's first element read back,
// to wait for the device without copying y to the host): the bandwidth the card reaches, where medians
// moved by up to 10% between runs of the same card.
func copyTime(m *engine.Model, n int) (float64, error) {
	b := m.Backend.Backend
	mk, err := graph.NewExec(b, func(g *graph.Graph) *graph.Node {
		return graph.Iota(g, shapes.Make(dtypes.Float32, n), 0)
	})
	if err != nil {
		return 0, err
	}
	defer mk.Finalize()
	add, err := graph.NewExec(b, func(x *graph.Node) (*graph.Node, *graph.Node) {
		y := graph.AddScalar(x, 1)
		return y, graph.Slice(y, graph.AxisRange(0, 1))
	})
	if err != nil {
		return 0, err
	}
	defer add.Finalize()
	out, err := mk.Call()
	if err != nil {
		return 0, err
	}
	x := out[0]
	defer x.FinalizeAll()
	var ts []float64
	for i := range 11 {
		t0 := time.Now()
		out, err := add.Call(x)
		if err != nil {
			return 0, err
		}
		if _, err := tensors.CopyFlatData[float32](out[1]); err != nil {
			return 0, err
		}
		if i > 0 {
			ts = append(ts, time.Since(t0).Seconds())
		}
		out[0].FinalizeAll()
		out[1].FinalizeAll()
	}
	return slices.Min(ts), nil
}

// memSampler polls nvidia-smi for the GPU memory in use (the XLA client runs without preallocation, so
// its pool grows to the peak need and stays there). ok is false without nvidia-smi.
type memSampler struct {
	mu   sync.Mutex
	peak float64 // MiB
	ok   bool
	done chan struct{}
}

func startMemSampler() *memSampler {
	s := &memSampler{done: make(chan struct{})}
	if _, err := exec.LookPath("nvidia-smi"); err != nil {
		return s
	}
	go func() {
		for {
			out, err := exec.Command("nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0").Output()
			if err == nil {
				if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil {
					s.mu.Lock()
					s.peak, s.ok = max(s.peak, v), true
					s.mu.Unlock()
				}
			}
			select {
			case <-s.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *memSampler) reset() { s.mu.Lock(); s.peak = 0; s.mu.Unlock() }

func (s *memSampler) peakGiB() (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak / 1024, s.ok
}

func (s *memSampler) stop() { close(s.done) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
