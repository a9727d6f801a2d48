// Package engine is what a Go application embeds: open a Hugging Face LLaMA-family model directory,
// then generate text with a context.Context, streaming tokens as they are produced.
//
//	m, err := engine.Open("models/tinycode-llama-16m", engine.Options{})
//	if err != nil { ... }
//	defer m.Close()
//	res, err := m.Generate(ctx, engine.Request{Prompt: "def add(a, b):\n", MaxTokens: 32,
//		OnText: func(s string) error { fmt.Print(s); return nil }})
//
// A Model is safe for concurrent use: every Generate call runs its own sequence (KV cache).
// The API returns errors, never panics. Close waits for the calls in progress; later calls return
// ErrClosed.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/compute/dtypes"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/llama"
	"github.com/squeezeai/sqllm/model"
	"github.com/squeezeai/sqllm/tokenizer"
	"github.com/squeezeai/sqllm/weights"
)

// DefaultModel is the bundled model's directory, relative to the repository root.
const DefaultModel = "models/tinycode-llama-16m"

// Options configure Open.
type Options struct {
	// Backend: xla.Auto (default), xla.Go or xla.XLA.
	Backend xla.Kind
	// PluginPath names a PJRT CUDA plugin explicitly.
	PluginPath string
	// DType is the compute dtype: "f32" or "bf16". Empty: f32 on the pure-Go backend, bf16 on XLA.
	DType string
	// MaxChunk is the prefill chunk in tokens (0: 512 on the Go backend; on XLA 8192 in bfloat16 and 2048
	// in float32); at most MaxChunkLimit. Cancellation takes effect between chunks.
	MaxChunk int
	// CtxGranule is the step of the fixed contexts' KV capacities: powers of two up to it, then multiples of
	// it (0: 512 on the Go backend; 2048 on XLA, where every new capacity is an XLA compilation of a second
	// or more, so that a run over many contexts of different lengths compiles few executables).
	CtxGranule int
	// MaxContext lowers the context limit below the model's max_position_embeddings (0: the model's);
	// a larger value is an error, and so is a context above MaxContextLimit.
	MaxContext int
	// RandomWeights builds the model from config.json alone, with random weights (benchmarks only).
	RandomWeights bool
	// CacheDir is the directory of the on-disk prefix cache: "" = the per-user default
	// (prefixcache.DefaultDir: $SQLLM_CACHE_DIR or the user cache directory), "-" = no disk cache.
	CacheDir string
	// NoCache disables prefix caching altogether (every fixed context is recomputed).
	NoCache bool
	// MemoryCacheBytes is the byte budget of prefixes kept in device memory while unused (default 2 GiB).
	MemoryCacheBytes int64
	// Squeeze, when set, makes every fixed context (NewContext) use Squeezed Attention.
	Squeeze *llama.SqueezeOptions
}

// Limits checked by Open before anything is allocated for them.
const (
	// MaxContextLimit is the largest context (in tokens) a Model accepts: a config.json declaring a
	// larger max_position_embeddings needs Options.MaxContext to lower it.
	MaxContextLimit = 1 << 24
	// MaxChunkLimit is the largest Options.MaxChunk.
	MaxChunkLimit = 1 << 16
)

// ErrClosed is returned by calls on a closed Model (or a Context of one) and on a closed Context.
var ErrClosed = errors.New("engine: model is closed")

// errContextClosed wraps ErrClosed for a closed Context.
var errContextClosed = fmt.Errorf("engine: context is closed (%w)", ErrClosed)

// gate counts the calls in progress on an object so that closing it waits for them; once closed, it
// lets no new call in.
type gate struct {
	mu     sync.Mutex
	idle   *sync.Cond // signalled when active drops to 0
	active int
	closed bool
}

// enter registers a call; false when the object is closed.
func (g *gate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.active++
	return true
}

func (g *gate) exit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.active--; g.active == 0 && g.idle != nil {
		g.idle.Broadcast()
	}
}

// close refuses new calls and waits for the active ones to exit; false when already closed.
func (g *gate) close() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.closed = true
	if g.idle == nil {
		g.idle = sync.NewCond(&g.mu)
	}
	for g.active > 0 {
		g.idle.Wait()
	}
	return true
}

func (g *gate) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// Model is an opened model: tokenizer, weights on a device, compiled steps.
type Model struct {
	Dir       string
	Config    *llama.Config
	Tokenizer *tokenizer.Tokenizer
	Runner    *llama.Runner
	Backend   *xla.Backend
	// RandomWeights is true when the weights are random (Options.RandomWeights).
	RandomWeights bool
	LoadDuration  time.Duration
	eos           []int
	cache         *cacheState
	squeeze       *llama.SqueezeOptions
	dtype         string
	life          gate
}

// enter registers a call on the model (Close waits for it): ErrClosed once closed (or for a Model
// that Open did not make). Every successful enter needs an exit.
func (m *Model) enter() error {
	if m == nil || !m.life.enter() {
		return ErrClosed
	}
	if m.Runner == nil { // not opened by Open
		m.life.exit()
		return ErrClosed
	}
	return nil
}

func (m *Model) exit() { m.life.exit() }

// ParseDType validates a -dtype value ("" means automatic).
func ParseDType(s string) (string, error) {
	switch strings.ToLower(s) {
	case "", "auto":
		return "", nil
	case "f32", "float32":
		return "f32", nil
	case "bf16", "bfloat16":
		return "bf16", nil
	}
	return "", fmt.Errorf("unknown dtype %q (want f32 or bf16)", s)
}

// Open loads the model in dir (config.json, tokenizer.json and safetensors weights).
func Open(dir string, opts Options) (m *Model, err error) {
	defer recoverTo(&err)
	start := time.Now()
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("model directory %s: %w", dir, errors.Unwrap(err))
	} else if !st.IsDir() {
		return nil, fmt.Errorf("model directory %s: not a directory", dir)
	}
	dt, err := ParseDType(opts.DType)
	if err != nil {
		return nil, err
	}
	switch {
	case opts.MaxContext < 0:
		return nil, fmt.Errorf("engine: MaxContext %d must not be negative", opts.MaxContext)
	case opts.CtxGranule < 0 || opts.CtxGranule > MaxChunkLimit:
		return nil, fmt.Errorf("engine: CtxGranule %d must be in [0, %d]", opts.CtxGranule, MaxChunkLimit)
	case opts.MaxChunk > MaxChunkLimit:
		return nil, fmt.Errorf("engine: MaxChunk %d exceeds the limit of %d tokens", opts.MaxChunk, MaxChunkLimit)
	case opts.MemoryCacheBytes < 0:
		return nil, fmt.Errorf("engine: MemoryCacheBytes %d must not be negative (0: the default 2 GiB)", opts.MemoryCacheBytes)
	}
	hf, err := weights.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	cfg, err := llama.NewConfig(hf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "config.json"), err)
	}
	// The context is bounded before anything is sized by it: never beyond what the model was trained
	// for, and never so large that a request's bookkeeping could exhaust memory.
	switch {
	case opts.MaxContext > cfg.MaxPositionEmbeddings:
		return nil, fmt.Errorf("engine: MaxContext %d is beyond the model's context (max_position_embeddings %d)",
			opts.MaxContext, cfg.MaxPositionEmbeddings)
	case opts.MaxContext > MaxContextLimit:
		return nil, fmt.Errorf("engine: MaxContext %d exceeds the engine's limit of %d tokens", opts.MaxContext, MaxContextLimit)
	case opts.MaxContext == 0 && cfg.MaxPositionEmbeddings > MaxContextLimit:
		return nil, fmt.Errorf("%s: max_position_embeddings %d exceeds the engine's limit of %d tokens (set a smaller MaxContext)",
			filepath.Join(dir, "config.json"), cfg.MaxPositionEmbeddings, MaxContextLimit)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("%s: tokenizer has %d tokens but the model's vocab_size is %d", dir, tok.VocabSize(), cfg.VocabSize)
	}
	b, err := xla.New(xla.Options{Kind: opts.Backend, PluginPath: opts.PluginPath})
	if err != nil {
		return nil, err
	}
	if dt == "" {
		dt = "f32"
		if b.Kind == xla.XLA {
			dt = "bf16"
		}
	}
	dtype := dtypes.Float32
	if dt == "bf16" {
		dtype = dtypes.BFloat16
	}
	var w *llama.Weights
	if opts.RandomWeights {
		w, err = llama.RandomWeightsOn(b.Backend, cfg, dtype, 1)
	} else {
		var ckpt *weights.Checkpoint
		ckpt, err = weights.OpenDir(dir)
		if err != nil {
			return nil, err
		}
		w, err = llama.LoadWeights(cfg, ckpt, dtype)
		ckpt.Close()
	}
	if err != nil {
		return nil, err
	}
	chunk := opts.MaxChunk
	if chunk <= 0 {
		switch {
		case b.Kind != xla.XLA:
			chunk = 512
		case dtype == dtypes.BFloat16 && cfg.SlidingWindow == 0 && cfg.HeadDim%8 == 0:
			chunk = 8192 // fused (cuDNN) attention: a chunk's memory grows with its length, not its square
		default:
			chunk = 2048 // the plain attention graph (float32, sliding windows): its scores grow with chunk × context
		}
	}
	granule := opts.CtxGranule
	if granule == 0 && b.Kind == xla.XLA {
		granule = 2048
	}
	r, err := llama.NewRunner(b.Backend, cfg, w, llama.Options{MaxChunk: chunk, MaxLen: opts.MaxContext, CtxGranule: granule})
	if err != nil {
		return nil, err
	}
	m = &Model{Dir: dir, Config: cfg, Tokenizer: tok, Runner: r, Backend: b, eos: readEOS(dir, cfg, tok),
		RandomWeights: opts.RandomWeights, dtype: "f32", squeeze: opts.Squeeze}
	if r.DType() == dtypes.BFloat16 {
		m.dtype = "bf16"
	}
	if err := m.initCache(opts); err != nil {
		r.Close()
		return nil, err
	}
	m.LoadDuration = time.Since(start)
	return m, nil
}

// Close releases the device memory. It waits for the calls in progress (Generate, NewContext,
// Context.Generate) to return; later calls return ErrClosed. Closing twice is harmless.
func (m *Model) Close() error {
	if m == nil || !m.life.close() || m.Runner == nil {
		return nil
	}
	if m.cache != nil {
		m.cache.mem.Purge()
	}
	err := m.Runner.Close()
	m.Runner = nil
	return err
}

// DType is the compute dtype name ("f32" or "bf16").
func (m *Model) DType() string { return m.dtype }

// Request is one generation request.
type Request struct {
	Prompt string // text; the tokenizer's post-processor adds BOS
	// PromptTokens, when set, is used instead of Prompt.
	PromptTokens []int
	MaxTokens    int // new tokens (default 128)
	Sampler      model.SamplerConfig
	Stop         []string // stop strings
	// IgnoreEOS keeps generating past the end-of-sequence token.
	IgnoreEOS bool
	// OnText receives text as soon as it is final (never half a UTF-8 character); an error aborts.
	OnText func(text string) error
}

// Response is the result of Generate.
type Response = model.Result

// Encode tokenizes text as a prompt (with BOS as the tokenizer's post-processor says).
func (m *Model) Encode(text string) []int {
	if m == nil || m.Tokenizer == nil {
		return nil
	}
	return m.Tokenizer.Encode(text, true)
}

// Generate runs the prompt and samples up to MaxTokens new tokens, stopping at EOS or a stop string.
// A MaxTokens beyond the free context is clamped: generation then ends with model.StopContextFull.
func (m *Model) Generate(ctx context.Context, req Request) (res Response, err error) {
	defer recoverTo(&err)
	if err := m.enter(); err != nil {
		return res, err
	}
	defer m.exit()
	prompt := req.PromptTokens
	if prompt == nil {
		prompt = m.Encode(req.Prompt)
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 128
	}
	if req.MaxTokens < 0 {
		return res, fmt.Errorf("engine: max tokens %d must be positive", req.MaxTokens)
	}
	if err := req.Sampler.Validate(); err != nil {
		return res, err
	}
	if len(prompt) > m.Runner.MaxLen() {
		return res, fmt.Errorf("engine: %w: the prompt has %d tokens, the model's context is %d",
			model.ErrContextTooLong, len(prompt), m.Runner.MaxLen())
	}
	seq := m.Runner.NewSequence()
	defer seq.Close()
	return m.generate(ctx, seq, prompt, req)
}

// generate runs the generate loop on a sequence.
func (m *Model) generate(ctx context.Context, seq model.Sequence, prompt []int, req Request) (Response, error) {
	if req.MaxTokens == 0 {
		req.MaxTokens = 128
	}
	if req.MaxTokens < 0 {
		return Response{}, fmt.Errorf("engine: max tokens %d must be positive", req.MaxTokens)
	}
	opts := model.GenerateOptions{
		MaxTokens:   req.MaxTokens,
		Sampler:     req.Sampler,
		StopStrings: req.Stop,
		OnText:      req.OnText,
	}
	if !req.IgnoreEOS {
		opts.StopTokens = m.EOSTokens()
	}
	return model.Generate(ctx, seq, prompt, m.Tokenizer.NewStreamDecoder(true), opts)
}

// EOSTokens are the ids that end generation: config.json's eos_token_id, generation_config.json's, and the
// tokenizer's eos_token.
func (m *Model) EOSTokens() []int { return m.eos }

// readEOS collects the end-of-sequence ids from every place a hub checkpoint may declare them.
func readEOS(dir string, cfg *llama.Config, tok *tokenizer.Tokenizer) []int {
	ids := slices.Clone(cfg.EOSTokenIDs)
	if b, err := readSmallFile(filepath.Join(dir, "generation_config.json")); err == nil {
		var gc struct {
			EOS json.RawMessage `json:"eos_token_id"`
		}
		if json.Unmarshal(b, &gc) == nil {
			var one int
			var many []int
			if json.Unmarshal(gc.EOS, &one) == nil {
				ids = append(ids, one)
			} else if json.Unmarshal(gc.EOS, &many) == nil {
				ids = append(ids, many...)
			}
		}
	}
	if id, ok := tok.EOS(); ok {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// maxSmallFile bounds the optional JSON files read beside the model (real ones are a few hundred bytes).
const maxSmallFile = 16 << 20

// readSmallFile reads a file of at most maxSmallFile bytes, never more, whatever it is (a device, a pipe).
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmallFile+1))
	if err == nil && len(b) > maxSmallFile {
		err = fmt.Errorf("%s: larger than %d bytes", path, maxSmallFile)
	}
	return b, err
}

// recoverTo turns a panic escaping the library into an error: the public API never panics.
func recoverTo(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("engine: internal error: %v\n%s", p, debug.Stack())
	}
}

// FindDefaultModel locates the bundled model: $SQLLM_MODEL, then DefaultModel under the current
// directory or any parent, then next to the executable.
func FindDefaultModel() (string, error) {
	if d := os.Getenv("SQLLM_MODEL"); d != "" {
		return d, nil
	}
	var roots []string
	if wd, err := os.Getwd(); err == nil {
		roots = append(roots, wd)
	}
	if exe, err := os.Executable(); err == nil {
		roots = append(roots, filepath.Dir(exe))
	}
	for _, root := range roots {
		for d := root; ; d = filepath.Dir(d) {
			p := filepath.Join(d, DefaultModel)
			if st, err := os.Stat(filepath.Join(p, "config.json")); err == nil && !st.IsDir() {
				return p, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("the bundled model %s was not found under the current directory or the executable's; pass -model DIR", DefaultModel)
}
