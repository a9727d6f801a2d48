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
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var lens []int
	for _, s := range strings.Split(*lensFlag, ",") {
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
	m, err := engine.Open(dir, engine.Options{Backend: kind, PluginPath: *plugin, DType: *dtype, MaxChunk: *chunk,
		RandomWeights: *random})
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
	fmt.Fprintln(stdout, "| model | backend | dtype | prompt tokens | prefill tokens/s | prefill s | decode ms/token | decode tokens/s |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|---|---|---|")
	ctx := context.Background()
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
		for rep := 0; rep <= *reps; rep++ { // rep 0 compiles
			seq := m.Runner.NewSequence()
			t0 := time.Now()
			logits, err := seq.Append(ctx, prompt)
			if err != nil {
				fmt.Fprintf(stderr, "bench: %v\n", err)
				return 1
			}
			p := time.Since(t0).Seconds()
			tok := argmax(logits)
			t1 := time.Now()
			for range *decode {
				if logits, err = seq.Append(ctx, []int{tok}); err != nil {
					fmt.Fprintf(stderr, "bench: %v\n", err)
					return 1
				}
				tok = argmax(logits)
			}
			d := time.Since(t1).Seconds() / float64(max(*decode, 1))
			seq.Close()
			if rep > 0 {
				pre, dec = append(pre, p), append(dec, d)
			}
		}
		p, d := median(pre), median(dec)
		fmt.Fprintf(stdout, "| %s | %s | %s | %d | %.0f | %.3f | %.2f | %.1f |\n", name, m.Backend.Kind, m.DType(), n,
			float64(n)/p, p, d*1e3, 1/d)
	}
	return 0
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
