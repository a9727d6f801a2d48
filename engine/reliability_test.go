package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/llama/prefixcache"
	"github.com/squeezeai/sqllm/model"
)

// Tests of what the README's "Limits and errors" promises: cancellation stops within one step and leaves
// everything usable, concurrent calls get the answers they would get alone, Close waits for calls in
// progress, hostile requests and options give errors (never panics), and the prefix cache never serves
// a wrong or half-computed entry.
//
// Most use a model opened with 16-token prefill chunks, so that short prompts take several prefill steps.
// `.ci/run` also runs TestConcurrent* and TestCancel* under the race detector.

const smallChunk = 16

// raceEnabled is set by race_test.go under the race detector, which makes the bundled model about 30
// times slower: openSmall then opens a tiny model with random weights instead.
var raceEnabled bool

// tinyModel writes a model directory with the bundled tokenizer and a 2-layer, 64-wide config.json,
// for Options.RandomWeights.
func tinyModel(t *testing.T) string {
	t.Helper()
	return linkModel(t, map[string]func([]byte) []byte{"config.json": func(b []byte) []byte {
		s := string(b)
		for _, r := range [][2]string{
			{`"hidden_size": 384`, `"hidden_size": 64`}, {`"intermediate_size": 1024`, `"intermediate_size": 128`},
			{`"num_hidden_layers": 8`, `"num_hidden_layers": 2`}, {`"num_attention_heads": 6`, `"num_attention_heads": 2`},
			{`"num_key_value_heads": 2`, `"num_key_value_heads": 1`}, {`"head_dim": 64`, `"head_dim": 32`},
		} {
			if !strings.Contains(s, r[0]) {
				t.Fatalf("config.json lacks %s", r[0])
			}
			s = strings.Replace(s, r[0], r[1], 1)
		}
		return []byte(s)
	}})
}

// openSmall opens the bundled model (a tiny random one under the race detector) with 16-token prefill
// chunks and a 512-token context.
func openSmall(t *testing.T, opts Options) *Model {
	t.Helper()
	dir := bundled
	if raceEnabled {
		dir, opts.RandomWeights = tinyModel(t), true
	}
	opts.Backend, opts.MaxChunk = xla.Go, smallChunk
	if opts.MaxContext == 0 {
		opts.MaxContext = 512
	}
	if opts.CacheDir == "" {
		opts.CacheDir = "-"
	}
	m, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// cancelOnCheck is a context that cancels itself the at-th time its Err method is called: the engine
// checks its context once before the prefill and before every prefill chunk and decode step, so this
// cancels at an exact step. checks counts the calls.
type cancelOnCheck struct {
	context.Context
	cancel context.CancelFunc
	at     int32
	checks atomic.Int32
}

func newCancelOnCheck(at int32) *cancelOnCheck {
	ctx, cancel := context.WithCancel(context.Background())
	return &cancelOnCheck{Context: ctx, cancel: cancel, at: at}
}

func (c *cancelOnCheck) Err() error {
	if c.checks.Add(1) == c.at {
		c.cancel()
	}
	return c.Context.Err()
}

// A prompt of 100 to 200 tokens: 7 or more prefill chunks of 16.
var longPrompt = fixedContext + "\n    def dot(self, other):\n        return self.x * other.x + self.y * other.y\n"

func sameResult(t *testing.T, what string, got, want Response) {
	t.Helper()
	if !slices.Equal(got.Tokens, want.Tokens) || got.Text != want.Text || got.StopReason != want.StopReason {
		t.Errorf("%s: %q (%v, %s), want %q (%v, %s)", what, got.Text, got.Tokens, got.StopReason,
			want.Text, want.Tokens, want.StopReason)
	}
}

func generate(t *testing.T, g func(context.Context, Request) (Response, error), req Request) Response {
	t.Helper()
	res, err := g(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestCancelPrefill: a context cancelled after the first prefill chunk of Model.Generate stops the
// prefill there (no token is generated, the context is not polled again), and the model then answers
// exactly like a fresh one.
func TestCancelPrefill(t *testing.T) {
	m, fresh := openSmall(t, Options{}), openSmall(t, Options{})
	ids := m.Encode(longPrompt)
	if len(ids) < 6*smallChunk {
		t.Fatalf("the prompt has only %d tokens", len(ids))
	}
	req := Request{PromptTokens: ids, MaxTokens: 8}
	want := generate(t, fresh.Generate, req)

	// Check 1: before the prefill; 2: before chunk 1; 3: before chunk 2, where it is cancelled.
	ctx := newCancelOnCheck(3)
	res, err := m.Generate(ctx, req)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want an error wrapping context.Canceled", err)
	}
	if len(res.Tokens) != 0 || res.StopReason != "" {
		t.Errorf("a prefill cancelled after its first chunk generated %v (%s)", res.Tokens, res.StopReason)
	}
	if n := ctx.checks.Load(); n != 3 {
		t.Errorf("the context was checked %d times; want 3 (the prefill goes on after the cancellation)", n)
	}
	for range 2 {
		sameResult(t, "after the cancelled prefill", generate(t, m.Generate, req), want)
	}
}

// TestCancelDecode: cancelling from OnText stops generation at the next step: some tokens, fewer than
// MaxTokens, the text streamed so far, and an error wrapping context.Canceled. The next request is
// answered like on a fresh model.
func TestCancelDecode(t *testing.T) {
	m, fresh := openSmall(t, Options{}), openSmall(t, Options{})
	req := Request{Prompt: "def fibonacci(n):\n", MaxTokens: 40, IgnoreEOS: true}
	want := generate(t, fresh.Generate, req)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var streamed strings.Builder
	cancelled := req
	cancelled.OnText = func(s string) error {
		streamed.WriteString(s)
		cancel()
		return nil
	}
	res, err := m.Generate(ctx, cancelled)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want an error wrapping context.Canceled", err)
	}
	if len(res.Tokens) == 0 || len(res.Tokens) >= req.MaxTokens {
		t.Errorf("cancelled at the first text: %d tokens", len(res.Tokens))
	}
	if res.Text != streamed.String() || !slices.Equal(res.Tokens, want.Tokens[:len(res.Tokens)]) {
		t.Errorf("partial result %q %v; streamed %q; want a prefix of %v", res.Text, res.Tokens, streamed.String(), want.Tokens)
	}
	sameResult(t, "after the cancelled decode", generate(t, m.Generate, req), want)
}

// TestCancelContextGenerate: Context.Generate cancelled in the prefill of a long user input, and in the
// decode, leaves the shared prefix intact: the same Context then answers exactly like a Context of a
// fresh model.
func TestCancelContextGenerate(t *testing.T) {
	m, fresh := openSmall(t, Options{}), openSmall(t, Options{})
	input := "\n    def project(self, other):\n        \"\"\"Project this vector onto other.\"\"\"\n" +
		"        k = (self.x * other.x + self.y * other.y) / (other.x ** 2 + other.y ** 2)\n" +
		"        return Vector(k * other.x, k * other.y)\n\n    def angle(self, other):\n"
	if n := len(m.Tokenizer.Encode(input, false)); n < 3*smallChunk {
		t.Fatalf("the input has only %d tokens", n)
	}
	req := Request{Prompt: input, MaxTokens: 12}
	other := Request{Prompt: "\n    def __neg__(self):\n", MaxTokens: 12}
	fc, err := fresh.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	want, wantOther := generate(t, fc.Generate, req), generate(t, fc.Generate, other)

	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := newCancelOnCheck(3) // before the prefill, chunk 1, chunk 2: cancelled
	res, err := c.Generate(ctx, req)
	if !errors.Is(err, context.Canceled) || len(res.Tokens) != 0 {
		t.Fatalf("cancelled in the input's prefill: %v, tokens %v", err, res.Tokens)
	}
	if n := ctx.checks.Load(); n != 3 {
		t.Errorf("the context was checked %d times, want 3", n)
	}
	dctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	decodeReq := req
	decodeReq.OnText = func(string) error { cancel(); return nil }
	if res, err := c.Generate(dctx, decodeReq); !errors.Is(err, context.Canceled) || len(res.Tokens) >= req.MaxTokens {
		t.Fatalf("cancelled in the decode: %v, %d tokens", err, len(res.Tokens))
	}
	sameResult(t, "input after the cancellations", generate(t, c.Generate, req), want)
	sameResult(t, "other input after the cancellations", generate(t, c.Generate, other), wantOther)
}

// waitIdle waits until no call (nor a prefix computation that outlived its caller) runs on m.
func waitIdle(t *testing.T, m *Model) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		m.life.mu.Lock()
		n := m.life.active
		m.life.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a computation is still running a minute after its caller gave up")
		}
	}
}

// TestCancelNewContext: NewContext cancelled during the prefill of a long fixed context returns an error
// wrapping context.Canceled at once; the computation stops, and neither the memory nor the disk cache
// keeps anything of it. The same context is then computed again, correctly, and written to disk.
func TestCancelNewContext(t *testing.T) {
	dir := t.TempDir()
	m, fresh := openSmall(t, Options{CacheDir: dir}), openSmall(t, Options{})
	long := strings.Repeat(fixedContext, 2) // ~ 300 tokens: ~ 19 prefill chunks
	questions := []Request{{Prompt: "\n    def dot(self, other):\n", MaxTokens: 10}, {Prompt: "", MaxTokens: 10}}
	fc, err := fresh.NewContext(context.Background(), long)
	if err != nil {
		t.Fatal(err)
	}
	var want []Response
	for _, q := range questions {
		want = append(want, generate(t, fc.Generate, q))
	}
	fc.Close()

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	c, err := m.NewContext(ctx, long)
	if err == nil {
		c.Close()
		t.Skipf("the prefill took less than the %v before the cancellation", time.Since(start))
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want an error wrapping context.Canceled", err)
	}
	waitIdle(t, m)
	time.Sleep(20 * time.Millisecond) // the computation's result, if any, is stored just after it returns
	if n := m.cache.mem.Len(); n != 0 {
		t.Errorf("the memory cache holds %d entries after a cancelled prefill", n)
	}
	if files, _ := os.ReadDir(dir); len(files) != 0 {
		t.Errorf("the disk cache holds %v after a cancelled prefill", files)
	}

	ask := func(m *Model, wantSource CacheSource) {
		t.Helper()
		c, err := m.NewContext(context.Background(), long)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if c.Source != wantSource {
			t.Errorf("source %q, want %q (note %q)", c.Source, wantSource, c.Note)
		}
		for i, q := range questions {
			sameResult(t, "question after the cancelled NewContext", generate(t, c.Generate, q), want[i])
		}
	}
	ask(m, FromComputed)
	ask(m, FromMemory)
	ask(openSmall(t, Options{CacheDir: dir}), FromDisk)
}

// TestConcurrentNewContextOneCancels: of two callers waiting for the same fixed context, the one that
// started the computation gives up; the other still gets the context, and the right answers.
func TestConcurrentNewContextOneCancels(t *testing.T) {
	m, fresh := openSmall(t, Options{}), openSmall(t, Options{})
	long := strings.Repeat(fixedContext, 2)
	q := Request{Prompt: "\n    def dot(self, other):\n", MaxTokens: 10}
	fc, err := fresh.NewContext(context.Background(), long)
	if err != nil {
		t.Fatal(err)
	}
	want := generate(t, fc.Generate, q)
	fc.Close()

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		c, err := m.NewContext(ctx, long)
		if err == nil {
			c.Close()
		}
		first <- err
	}()
	time.Sleep(20 * time.Millisecond) // the first caller starts the computation
	second := make(chan *Context, 1)
	go func() {
		c, err := m.NewContext(context.Background(), long)
		if err != nil {
			t.Error(err)
		}
		second <- c
	}()
	time.Sleep(20 * time.Millisecond) // the second joins it
	cancel()
	if err := <-first; err == nil {
		t.Skip("the prefill ended before the cancellation")
	} else if !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v", err)
	}
	c := <-second
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	sameResult(t, "the caller that waited", generate(t, c.Generate, q), want)
}

// TestConcurrentMixed: eight goroutines share one Model: Generate with different prompts, Context.Generate
// with different inputs on one Context, and NewContext of the same text (one computation) then Generate;
// every answer equals the answer computed alone.
func TestConcurrentMixed(t *testing.T) {
	m := openSmall(t, Options{})
	prompts := []string{"import os\n", "class Stack:\n", "def add(a, b):\n", "for i in range(10):\n"}
	inputs := []string{"\n    def dot(self, other):\n", "\n    def __mul__(self, k):\n", "", "\n    def __repr__(self):\n"}
	const maxTokens = 8
	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	type job struct {
		name string
		run  func() (Response, error)
	}
	var jobs []job
	for _, p := range prompts {
		jobs = append(jobs, job{"Generate " + p, func() (Response, error) {
			return m.Generate(context.Background(), Request{Prompt: p, MaxTokens: maxTokens})
		}})
	}
	for _, in := range inputs {
		jobs = append(jobs, job{"Context.Generate " + in, func() (Response, error) {
			return c.Generate(context.Background(), Request{Prompt: in, MaxTokens: maxTokens})
		}})
	}
	// Two goroutines build the same new context at once, then ask the first input.
	for range 2 {
		jobs = append(jobs, job{"NewContext+Generate", func() (Response, error) {
			c, err := m.NewContext(context.Background(), longPrompt)
			if err != nil {
				return Response{}, err
			}
			defer c.Close()
			return c.Generate(context.Background(), Request{Prompt: inputs[0], MaxTokens: maxTokens})
		}})
	}
	want := make([]Response, len(jobs))
	for i, j := range jobs {
		var err error
		if want[i], err = j.run(); err != nil {
			t.Fatal(err)
		}
	}
	m.PurgeMemoryCache() // the NewContext jobs compute again, concurrently
	got := make([]Response, len(jobs))
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() { got[i], errs[i] = j.run() })
	}
	wg.Wait()
	for i, j := range jobs {
		if errs[i] != nil {
			t.Errorf("%s: %v", j.name, errs[i])
			continue
		}
		sameResult(t, j.name+" (concurrently)", got[i], want[i])
	}
}

// TestConcurrentContextInputs: goroutines asking one Context different short questions at once each get
// the answer they get alone. The context's token slice has spare capacity, so a question appended in
// place (to the shared last context token) would overwrite another's: this failed about one run in three
// before Context.Generate clipped that slice, and always under the race detector.
func TestConcurrentContextInputs(t *testing.T) {
	m := openSmall(t, Options{})
	ids := m.Encode(longPrompt)
	if spare := cap(slices.Clone(ids)) - len(ids); spare < 10 {
		t.Fatalf("the context has %d tokens: only %d spare in a clone", len(ids), spare)
	}
	c, err := m.NewContextTokens(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	inputs := []string{"\n    def dot(self, other):\n", "\n    def __mul__(self, k):\n", "\n    def __repr__(self):\n",
		"\n    def __eq__(self, o):\n", "\n    x = 1\n", "\n    def norm2(self):\n", "\n    @property\n", "\n    def zero():\n"}
	want := make([]Response, len(inputs))
	for i, in := range inputs {
		want[i] = generate(t, c.Generate, Request{Prompt: in, MaxTokens: 1})
	}
	rounds := 12
	if raceEnabled {
		rounds = 2
	}
	var wg sync.WaitGroup
	got := make([][]Response, len(inputs))
	for i, in := range inputs {
		wg.Go(func() {
			for range rounds {
				res, err := c.Generate(context.Background(), Request{Prompt: in, MaxTokens: 1})
				if err != nil {
					t.Error(err)
				}
				got[i] = append(got[i], res)
			}
		})
	}
	wg.Wait()
	for i := range inputs {
		for _, g := range got[i] {
			sameResult(t, fmt.Sprintf("input %q concurrently", inputs[i]), g, want[i])
		}
	}
}

// TestConcurrentCancel: goroutines cancelled mid-generation do not disturb the others sharing the Model
// and the Context.
func TestConcurrentCancel(t *testing.T) {
	m := openSmall(t, Options{})
	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reqs := []Request{{Prompt: "\n    def dot(self, other):\n", MaxTokens: 8}, {Prompt: "\n    def __repr__(self):\n", MaxTokens: 8}}
	var want []Response
	for _, r := range reqs {
		want = append(want, generate(t, c.Generate, r))
	}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	got := make([]Response, 6)
	for i := range 6 {
		wg.Go(func() {
			req := reqs[i%2]
			switch {
			case i < 2: // not cancelled
				got[i], errs[i] = c.Generate(context.Background(), req)
			case i < 4: // cancelled at the first text
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				req.OnText = func(string) error { cancel(); return nil }
				_, errs[i] = c.Generate(ctx, req)
			default: // cancelled after the first prefill chunk of a long prompt
				_, errs[i] = m.Generate(newCancelOnCheck(3), Request{Prompt: longPrompt, MaxTokens: 8})
			}
		})
	}
	wg.Wait()
	for i := range 6 {
		if i < 2 {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			sameResult(t, "uncancelled request beside cancelled ones", got[i], want[i])
		} else if !errors.Is(errs[i], context.Canceled) {
			t.Errorf("request %d: %v, want context.Canceled", i, errs[i])
		}
	}
}

// TestConcurrentCloseWaits: Model.Close called while a Generate is decoding waits for it: the generation
// completes with the right answer; afterwards every call returns ErrClosed, and closing again is harmless.
func TestConcurrentCloseWaits(t *testing.T) {
	m, fresh := openSmall(t, Options{}), openSmall(t, Options{})
	req := Request{Prompt: "def fibonacci(n):\n", MaxTokens: 24, IgnoreEOS: true}
	want := generate(t, fresh.Generate, req)
	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}

	var once sync.Once
	closed := make(chan error, 1)
	running := req
	running.OnText = func(string) error {
		once.Do(func() {
			go func() { closed <- m.Close() }()
			time.Sleep(100 * time.Millisecond) // let Close run: it must wait for this call
		})
		return nil
	}
	res, err := m.Generate(context.Background(), running)
	if err != nil {
		t.Fatalf("Generate while Close was called: %v", err)
	}
	sameResult(t, "Generate during Close", res, want)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}

	if _, err := m.Generate(context.Background(), req); !errors.Is(err, ErrClosed) {
		t.Errorf("Generate after Close: %v", err)
	}
	if _, err := m.NewContext(context.Background(), fixedContext); !errors.Is(err, ErrClosed) {
		t.Errorf("NewContext after Close: %v", err)
	}
	if _, err := m.NewContextTokens(context.Background(), []int{1, 2, 3}); !errors.Is(err, ErrClosed) {
		t.Errorf("NewContextTokens after Close: %v", err)
	}
	if _, err := c.Generate(context.Background(), req); !errors.Is(err, ErrClosed) {
		t.Errorf("Context.Generate after the model's Close: %v", err)
	}
	c.Close()
	c.Close()
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if m.DType() != "f32" || m.Encode("x") == nil {
		t.Error("DType or Encode stopped working after Close")
	}
	m.PurgeMemoryCache()
}

// TestConcurrentContextCloseWaits: Context.Close called while one of its Generates is decoding waits for
// it. (With a one-byte memory budget, the released prefix is freed at once: without the wait, the
// generation would read freed buffers.)
func TestConcurrentContextCloseWaits(t *testing.T) {
	m := openSmall(t, Options{MemoryCacheBytes: 1})
	req := Request{Prompt: "\n    def dot(self, other):\n", MaxTokens: 16, IgnoreEOS: true}
	c0, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	want := generate(t, c0.Generate, req)
	c0.Close()

	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != FromComputed {
		t.Fatalf("source %s: the one-byte budget did not free the prefix", c.Source)
	}
	var once sync.Once
	closed := make(chan struct{})
	running := req
	running.OnText = func(string) error {
		once.Do(func() {
			go func() { c.Close(); close(closed) }()
			time.Sleep(100 * time.Millisecond)
		})
		return nil
	}
	res, err := c.Generate(context.Background(), running)
	if err != nil {
		t.Fatalf("Context.Generate while the context was closed: %v", err)
	}
	sameResult(t, "Context.Generate during Close", res, want)
	<-closed
	if _, err := c.Generate(context.Background(), req); !errors.Is(err, ErrClosed) {
		t.Errorf("Generate on a closed context: %v", err)
	}
	if n := m.cache.mem.Len(); n != 0 {
		t.Errorf("%d prefixes left in memory after the context's Close", n)
	}
}

// noPanic fails when err is missing or reports a recovered panic.
func noPanic(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
	} else if strings.Contains(err.Error(), "internal error") || strings.Contains(err.Error(), "goroutine ") {
		t.Errorf("%s: a panic was recovered: %.300s", what, err)
	}
}

// TestHostileRequests: bad token ids, empty and absurd requests, nil and zero values give errors, never
// panics (the API's recover would turn a panic into an "internal error").
func TestHostileRequests(t *testing.T) {
	m := bundledModel(t)
	ctx := context.Background()
	vocab := m.Config.VocabSize
	for _, ids := range [][]int{{-1}, {1, -7, 3}, {vocab}, {1 << 40}, {math.MinInt}, {}} {
		_, err := m.Generate(ctx, Request{PromptTokens: ids, MaxTokens: 4})
		noPanic(t, fmt.Sprint("Generate of ids ", ids), err)
	}
	for name, req := range map[string]Request{
		"negative MaxTokens":    {Prompt: "x", MaxTokens: -5},
		"empty stop string":     {Prompt: "x", MaxTokens: 4, Stop: []string{""}},
		"invalid UTF-8 stop":    {Prompt: "x", MaxTokens: 4, Stop: []string{"\xff"}},
		"NaN temperature":       {Prompt: "x", MaxTokens: 4, Sampler: model.SamplerConfig{Temperature: math.NaN()}},
		"top-p above 1":         {Prompt: "x", MaxTokens: 4, Sampler: model.SamplerConfig{TopP: 2}},
		"negative top-k":        {Prompt: "x", MaxTokens: 4, Sampler: model.SamplerConfig{TopK: -1}},
		"infinite rep. penalty": {Prompt: "x", MaxTokens: 4, Sampler: model.SamplerConfig{RepeatPenalty: math.Inf(1)}},
		"OnText error":          {Prompt: "x", MaxTokens: 8, OnText: func(string) error { return errors.New("client went away") }},
	} {
		_, err := m.Generate(ctx, req)
		noPanic(t, name, err)
	}
	if _, err := m.Generate(ctx, Request{Prompt: "x", MaxTokens: 8, OnText: func(string) error { panic("callback bug") }}); err == nil ||
		!strings.Contains(err.Error(), "callback bug") {
		t.Errorf("a panicking OnText: %v", err)
	}
	// Invalid UTF-8 and NUL bytes in a prompt are text like any other.
	if _, err := m.Generate(ctx, Request{Prompt: "x\xff\x00y", MaxTokens: 2}); err != nil {
		t.Errorf("invalid UTF-8 prompt: %v", err)
	}

	for name, ids := range map[string][]int{"nil": nil, "empty": {}, "negative id": {1, -1, 2}, "id beyond the vocabulary": {1, vocab + 5, 2}} {
		_, err := m.NewContextTokens(ctx, ids)
		noPanic(t, "NewContextTokens "+name, err)
	}
	if _, err := m.NewContextTokens(ctx, make([]int, m.Runner.MaxLen()+10)); !errors.Is(err, model.ErrContextTooLong) {
		t.Errorf("NewContextTokens beyond the context: %v", err)
	}
	c, err := m.NewContext(ctx, "x = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ids := range [][]int{{-1}, {vocab}, {1 << 40}} {
		_, err := c.Generate(ctx, Request{PromptTokens: ids, MaxTokens: 4})
		noPanic(t, "Context.Generate of bad ids", err)
	}
	if _, err := c.Generate(ctx, Request{PromptTokens: make([]int, m.Runner.MaxLen()), MaxTokens: 4}); !errors.Is(err, model.ErrContextTooLong) {
		t.Errorf("Context.Generate beyond the context: %v", err)
	}
	// An empty (non-nil) input continues the context itself.
	if _, err := c.Generate(ctx, Request{PromptTokens: []int{}, MaxTokens: 2}); err != nil {
		t.Errorf("empty input: %v", err)
	}

	// nil and zero values.
	var nilModel *Model
	zero := &Model{}
	for name, mm := range map[string]*Model{"nil Model": nilModel, "zero Model": zero} {
		if _, err := mm.Generate(ctx, Request{Prompt: "x"}); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: Generate: %v", name, err)
		}
		if _, err := mm.NewContext(ctx, "x"); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: NewContext: %v", name, err)
		}
		if _, err := mm.NewContextTokens(ctx, []int{1}); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: NewContextTokens: %v", name, err)
		}
		if err := mm.Close(); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
		mm.PurgeMemoryCache()
		_ = mm.CacheDir()
		_ = mm.Encode("x")
	}
	for name, cc := range map[string]*Context{"nil Context": nil, "zero Context": {}} {
		if _, err := cc.Generate(ctx, Request{Prompt: "x"}); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: Generate: %v", name, err)
		}
		cc.Close()
	}
}

// TestMaxTokensClamped: a MaxTokens far beyond the context (math.MaxInt) is clamped to the free context:
// generation ends with StopContextFull when the context is full, for Generate and for Context.Generate.
func TestMaxTokensClamped(t *testing.T) {
	const maxContext = 48
	m := openSmall(t, Options{MaxContext: maxContext})
	ids := m.Encode("def add(a, b):\n")
	res, err := m.Generate(context.Background(), Request{PromptTokens: ids, MaxTokens: math.MaxInt, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.StopReason != model.StopContextFull || len(ids)+len(res.Tokens) != maxContext {
		t.Errorf("%d prompt + %d new tokens (%s), want %d (context_full)", len(ids), len(res.Tokens), res.StopReason, maxContext)
	}
	c, err := m.NewContext(context.Background(), "import math\n")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	input := m.Tokenizer.Encode("x = 1\n", false)
	res, err = c.Generate(context.Background(), Request{PromptTokens: input, MaxTokens: math.MaxInt, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.StopReason != model.StopContextFull || c.Tokens+len(input)+len(res.Tokens) != maxContext {
		t.Errorf("%d context + %d input + %d new tokens (%s), want %d (context_full)", c.Tokens, len(input), len(res.Tokens),
			res.StopReason, maxContext)
	}
	if _, err := m.Generate(context.Background(), Request{PromptTokens: make([]int, maxContext+1), MaxTokens: 1}); !errors.Is(err, model.ErrContextTooLong) {
		t.Errorf("a prompt beyond MaxContext: %v", err)
	}
}

// linkModel makes a copy of the bundled model directory whose files are symbolic links, except the ones
// edit rewrites.
func linkModel(t *testing.T, edits map[string]func([]byte) []byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(bundled)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		src, dst := filepath.Join(abs, e.Name()), filepath.Join(dir, e.Name())
		if f := edits[e.Name()]; f != nil {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			err = os.WriteFile(dst, f(b), 0o644)
		} else {
			err = os.Symlink(src, dst)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestOpenLimits: options and files that would size something absurdly are refused before anything is
// allocated for them.
func TestOpenLimits(t *testing.T) {
	for name, opts := range map[string]Options{
		"MaxContext beyond the model": {MaxContext: 16385},
		"negative MaxContext":         {MaxContext: -1},
		"negative MemoryCacheBytes":   {MemoryCacheBytes: -1},
		"negative CtxGranule":         {CtxGranule: -1},
		"CtxGranule over the limit":   {CtxGranule: MaxChunkLimit + 1},
		"MaxChunk over the limit":     {MaxChunk: MaxChunkLimit + 1},
		"MaxChunk MaxInt":             {MaxChunk: math.MaxInt}, // would never finish rounding to a power of two
	} {
		opts.Backend, opts.CacheDir = xla.Go, "-"
		m, err := Open(bundled, opts)
		if err == nil {
			m.Close()
		}
		noPanic(t, name, err)
	}

	hugeContext := linkModel(t, map[string]func([]byte) []byte{"config.json": func(b []byte) []byte {
		return []byte(strings.Replace(string(b), `"max_position_embeddings": 16384`, `"max_position_embeddings": 1099511627776`, 1))
	}})
	m, err := Open(hugeContext, Options{Backend: xla.Go, CacheDir: "-"})
	if err == nil {
		m.Close()
		t.Fatal("a config.json with max_position_embeddings 2^40 was accepted")
	}
	if !strings.Contains(err.Error(), "max_position_embeddings 1099511627776") {
		t.Errorf("error %q does not name the setting", err)
	}
	// MaxContext makes such a model usable; requests are bounded by it.
	m, err = Open(hugeContext, Options{Backend: xla.Go, CacheDir: "-", MaxContext: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res, err := m.Generate(context.Background(), Request{Prompt: "x = 1\n", MaxTokens: math.MaxInt, IgnoreEOS: true})
	if err != nil || res.StopReason != model.StopContextFull {
		t.Errorf("MaxTokens MaxInt on a 64-token context: %v, %s", err, res.StopReason)
	}
}

// TestOpenIndexOutsideDirectory: an index naming a shard outside the model directory is refused, even
// when that file exists and holds the right tensors.
func TestOpenIndexOutsideDirectory(t *testing.T) {
	const shard = "model-00001-of-00003.safetensors"
	dir := linkModel(t, map[string]func([]byte) []byte{"model.safetensors.index.json": func(b []byte) []byte {
		return []byte(strings.ReplaceAll(string(b), `"`+shard+`"`, `"../`+shard+`"`))
	}})
	abs, _ := filepath.Abs(filepath.Join(bundled, shard))
	if err := os.Symlink(abs, filepath.Join(filepath.Dir(dir), shard)); err != nil {
		t.Fatal(err)
	}
	m, err := Open(dir, Options{Backend: xla.Go, CacheDir: "-"})
	if err == nil {
		m.Close()
		t.Fatal("an index pointing outside the model directory was followed")
	}
	if !strings.Contains(err.Error(), "outside the directory") {
		t.Errorf("error %q", err)
	}
}

// TestCacheWriteFailure: when the disk cache can be neither read nor written (here the entry's name is
// taken by a directory; a full disk or a read-only cache also make Write fail), NewContext still
// succeeds with the right answers and says so in Note, in this model and in the next one.
func TestCacheWriteFailure(t *testing.T) {
	dir := t.TempDir()
	m := openSmall(t, Options{CacheDir: dir})
	want := uncachedSmall(t, "\n    def dot(self, other):\n")
	key := prefixcache.MakeKey(m.cache.modelFP, m.DType(), m.Encode(fixedContext))
	if err := os.Mkdir(m.cache.disk.Path(key), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, mm := range []*Model{m, openSmall(t, Options{CacheDir: dir})} {
		c, err := mm.NewContext(context.Background(), fixedContext)
		if err != nil {
			t.Fatal(err)
		}
		if c.Source != FromComputed || !strings.Contains(c.Note, "could not write") {
			t.Errorf("source %q, note %q; want a computed prefix and a note on the failed write", c.Source, c.Note)
		}
		sameResult(t, "answer despite the cache failure", generate(t, c.Generate, Request{Prompt: "\n    def dot(self, other):\n", MaxTokens: 12}), want)
		c.Close()
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(leftovers) != 0 {
		t.Errorf("failed writes left %v", leftovers)
	}
}

// uncachedSmall is the answer of a 16-token-chunk model with no prefix cache to fixedContext + question.
func uncachedSmall(t *testing.T, question string) Response {
	t.Helper()
	m := openSmall(t, Options{NoCache: true})
	c, err := m.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return generate(t, c.Generate, Request{Prompt: question, MaxTokens: 12})
}

// TestConcurrentCacheWriters: two models (as two processes would) compute and write the same prefix
// at once into one cache directory, beside a temp file left by a writer killed mid-write; the entry
// that remains is complete, and a third model reads it and answers right.
func TestConcurrentCacheWriters(t *testing.T) {
	dir := t.TempDir()
	m1, m2 := openSmall(t, Options{CacheDir: dir}), openSmall(t, Options{CacheDir: dir})
	key := prefixcache.MakeKey(m1.cache.modelFP, m1.DType(), m1.Encode(fixedContext))
	killed := m1.cache.disk.Path(key) + ".tmp-killed"
	if err := os.WriteFile(killed, []byte("SQLLMKV\x00 half an entry"), 0o644); err != nil {
		t.Fatal(err)
	}
	question := "\n    def dot(self, other):\n"
	want := uncachedSmall(t, question)
	var wg sync.WaitGroup
	for _, m := range []*Model{m1, m2} {
		wg.Go(func() {
			c, err := m.NewContext(context.Background(), fixedContext)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			if c.Source == FromMemory || c.Note != "" { // computed, or read from the other's entry
				t.Errorf("source %q, note %q", c.Source, c.Note)
			}
		})
	}
	wg.Wait()
	m3 := openSmall(t, Options{CacheDir: dir})
	c, err := m3.NewContext(context.Background(), fixedContext)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Source != FromDisk {
		t.Errorf("source %q (note %q), want a disk hit", c.Source, c.Note)
	}
	sameResult(t, "answer from the raced entry", generate(t, c.Generate, Request{Prompt: question, MaxTokens: 12}), want)
}
