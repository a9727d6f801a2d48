package model

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// decodeAll is the reference text of tokens, through a fresh decoder.
func decodeAll(tokens []int) string {
	d := newTestDecoder()
	var b strings.Builder
	for _, t := range tokens {
		b.WriteString(d.Push(t))
	}
	b.WriteString(d.Flush())
	return b.String()
}

func TestGenerate(t *testing.T) {
	tests := []struct {
		name       string
		script     []int // greedy output of the fake model
		maxLen     int
		prompt     []int
		opts       GenerateOptions
		wantTokens []int
		wantText   string
		wantReason StopReason
	}{
		{
			name:       "max tokens",
			script:     []int{1, 2, 3, 9, 9, 9},
			opts:       GenerateOptions{MaxTokens: 3},
			wantTokens: []int{1, 2, 3}, wantText: "Hello world!", wantReason: StopMaxTokens,
		},
		{
			name:       "stop token not emitted",
			script:     []int{1, 2, 0, 3},
			opts:       GenerateOptions{MaxTokens: 10, StopTokens: []int{0}},
			wantTokens: []int{1, 2}, wantText: "Hello world", wantReason: StopEOS,
		},
		{
			name:       "second stop token",
			script:     []int{1, 3, 2},
			opts:       GenerateOptions{MaxTokens: 10, StopTokens: []int{0, 3}},
			wantTokens: []int{1}, wantText: "Hello", wantReason: StopEOS,
		},
		{
			name:       "stop token first",
			script:     []int{0},
			opts:       GenerateOptions{MaxTokens: 10, StopTokens: []int{0}},
			wantTokens: []int{}, wantText: "", wantReason: StopEOS,
		},
		{
			name:       "stop string split across tokens",
			script:     []int{1, 6, 7, 8, 9},
			opts:       GenerateOptions{MaxTokens: 10, StopStrings: []string{"<end>"}},
			wantTokens: []int{1, 6, 7, 8}, wantText: "Hello", wantReason: StopString,
		},
		{
			name:       "partial stop string released",
			script:     []int{1, 6, 7, 9, 3},
			opts:       GenerateOptions{MaxTokens: 5, StopStrings: []string{"<end>"}},
			wantTokens: []int{1, 6, 7, 9, 3}, wantText: "Hello<end ok!", wantReason: StopMaxTokens,
		},
		{
			name:       "stop string inside a token",
			script:     []int{1, 2, 3},
			opts:       GenerateOptions{MaxTokens: 10, StopStrings: []string{"wor"}},
			wantTokens: []int{1, 2}, wantText: "Hello ", wantReason: StopString,
		},
		{
			name:       "multi-byte stop string over split character",
			script:     []int{1, 4, 5, 3, 9},
			opts:       GenerateOptions{MaxTokens: 10, StopStrings: []string{"€!"}},
			wantTokens: []int{1, 4, 5, 3}, wantText: "Hello", wantReason: StopString,
		},
		{
			name:       "earliest of several stop strings",
			script:     []int{1, 2, 3},
			opts:       GenerateOptions{MaxTokens: 10, StopStrings: []string{"d!", "lo w", "xyz"}},
			wantTokens: []int{1, 2}, wantText: "Hel", wantReason: StopString,
		},
		{
			name:       "split character completed",
			script:     []int{4, 5, 10, 11},
			opts:       GenerateOptions{MaxTokens: 4, StopStrings: []string{"ée!"}},
			wantTokens: []int{4, 5, 10, 11}, wantText: "€ée", wantReason: StopMaxTokens,
		},
		{
			name:       "dangling half character flushed",
			script:     []int{1, 4},
			opts:       GenerateOptions{MaxTokens: 2},
			wantTokens: []int{1, 4}, wantText: "Hello\uFFFD", wantReason: StopMaxTokens,
		},
		{
			name:   "context full",
			script: []int{1, 2, 3, 9, 9, 9, 9, 9},
			maxLen: 6, prompt: []int{1, 1},
			opts:       GenerateOptions{MaxTokens: 10},
			wantTokens: []int{1, 2, 3, 9}, wantText: "Hello world! ok", wantReason: StopContextFull,
		},
		{
			name:   "max tokens exactly fills context",
			script: []int{1, 2, 3, 9},
			maxLen: 6, prompt: []int{1, 1},
			opts:       GenerateOptions{MaxTokens: 4},
			wantTokens: []int{1, 2, 3, 9}, wantText: "Hello world! ok", wantReason: StopMaxTokens,
		},
		{
			name:   "prompt fills context",
			script: []int{1},
			maxLen: 2, prompt: []int{1, 1},
			opts:       GenerateOptions{MaxTokens: 4},
			wantTokens: []int{}, wantText: "", wantReason: StopContextFull,
		},
		{
			name:   "eos before context full",
			script: []int{1, 0},
			maxLen: 6, prompt: []int{1, 1},
			opts:       GenerateOptions{MaxTokens: 10, StopTokens: []int{0}},
			wantTokens: []int{1}, wantText: "Hello", wantReason: StopEOS,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.maxLen == 0 {
				tt.maxLen = 100
			}
			if tt.prompt == nil {
				tt.prompt = []int{3, 9}
			}
			seq := scriptSeq(testVocab, tt.maxLen, tt.script)
			var rec chunkRecorder
			tt.opts.OnText = rec.onText
			res, err := Generate(context.Background(), seq, tt.prompt, newTestDecoder(), tt.opts)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			// A sequence that runs greedy decoding itself (pipelined, model.GreedyDecoder) gives the same
			// result and leaves the same sequence.
			dseq := &decoderSeq{greedySeq: &greedySeq{fakeSeq: scriptSeq(testVocab, tt.maxLen, tt.script)}}
			var drec chunkRecorder
			dopts := tt.opts
			dopts.OnText = drec.onText
			dres, err := Generate(context.Background(), dseq, tt.prompt, newTestDecoder(), dopts)
			if err != nil {
				t.Fatalf("Generate (GreedyDecoder): %v", err)
			}
			if !slices.Equal(dres.Tokens, res.Tokens) || dres.Text != res.Text || dres.StopReason != res.StopReason ||
				dres.DecodeTokens != res.DecodeTokens || dseq.Len() != seq.Len() || drec.joined() != rec.joined() {
				t.Errorf("GreedyDecoder: %v %q %s %d decode tokens, len %d; Append path: %v %q %s %d, len %d",
					dres.Tokens, dres.Text, dres.StopReason, dres.DecodeTokens, dseq.Len(),
					res.Tokens, res.Text, res.StopReason, res.DecodeTokens, seq.Len())
			}
			if wantCalls := min(1, tt.maxLen-len(tt.prompt)); dseq.decodeCalls != wantCalls {
				t.Errorf("DecodeGreedy called %d times, want %d", dseq.decodeCalls, wantCalls)
			}
			if !slices.Equal(res.Tokens, tt.wantTokens) {
				t.Errorf("Tokens = %v, want %v", res.Tokens, tt.wantTokens)
			}
			if res.Text != tt.wantText {
				t.Errorf("Text = %q, want %q", res.Text, tt.wantText)
			}
			if res.StopReason != tt.wantReason {
				t.Errorf("StopReason = %q, want %q", res.StopReason, tt.wantReason)
			}
			if got := rec.joined(); got != res.Text {
				t.Errorf("streamed %q (chunks %q) != Text %q", got, rec.chunks, res.Text)
			}
			for _, c := range rec.chunks {
				if c == "" {
					t.Errorf("empty chunk streamed")
				}
			}
			if res.PromptTokens != len(tt.prompt) {
				t.Errorf("PromptTokens = %d, want %d", res.PromptTokens, len(tt.prompt))
			}
			// Prefill plus one Append per generated token except the last
			// sampled one; the sequence never holds a stop token.
			wantAppends := max(len(res.Tokens)-1, 0)
			if res.StopReason == StopEOS {
				wantAppends = len(res.Tokens) // the stop token came from the last one's logits
			}
			if res.DecodeTokens != wantAppends || seq.appends != wantAppends+1 {
				t.Errorf("DecodeTokens = %d, Append calls = %d; want %d and %d", res.DecodeTokens, seq.appends, wantAppends, wantAppends+1)
			}
			if want := len(tt.prompt) + wantAppends; seq.Len() != want {
				t.Errorf("seq.Len() = %d, want %d", seq.Len(), want)
			}
			if res.PrefillDuration <= 0 || res.DecodeDuration <= 0 {
				t.Errorf("durations not set: prefill %v decode %v", res.PrefillDuration, res.DecodeDuration)
			}
		})
	}
}

// TestGenerateTable drives Generate with logits that depend only on the last
// token (a table), starting from a non-empty sequence.
func TestGenerateTable(t *testing.T) {
	next := map[int]int{1: 2, 2: 3, 3: 9, 9: 1}
	seq := tableSeq(testVocab, 20, next)
	if _, err := seq.Append(context.Background(), []int{11, 11, 11}); err != nil {
		t.Fatal(err)
	}
	res, err := Generate(context.Background(), seq, []int{9}, newTestDecoder(), GenerateOptions{MaxTokens: 100})
	if err != nil {
		t.Fatal(err)
	}
	// 20 - 3 (already there) - 1 (prompt) = 16 tokens fit.
	want := []int{1, 2, 3, 9, 1, 2, 3, 9, 1, 2, 3, 9, 1, 2, 3, 9}
	if !slices.Equal(res.Tokens, want) || res.StopReason != StopContextFull {
		t.Errorf("Tokens = %v (%s), want %v (context_full)", res.Tokens, res.StopReason, want)
	}
	if seq.Len() != 19 {
		t.Errorf("seq.Len() = %d, want 19", seq.Len())
	}
}

func TestGenerateHoldsBackOnlyStopPrefixes(t *testing.T) {
	// "Hello", "<", "end", " ok", "<", "e", ">" with stop "<end>" and "<e>"
	script := []int{1, 6, 7, 9, 6, 11, 8, 3}
	// streamed text expected after each token is pushed
	wantAfter := []string{"Hello", "Hello", "Hello", "Hello<end ok", "Hello<end ok", "Hello<end ok", "Hello<end ok"}
	seq := scriptSeq(testVocab, 100, script)
	var rec chunkRecorder
	var seen []string
	seq.before = func(n int) {
		if n > 0 { // before the n-th decode Append, n tokens have been pushed
			seen = append(seen, rec.joined())
		}
	}
	res, err := Generate(context.Background(), seq, []int{3}, newTestDecoder(), GenerateOptions{
		MaxTokens: 20, StopStrings: []string{"<end>", "<e>"}, OnText: rec.onText,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.StopReason != StopString || res.Text != "Hello<end ok" {
		t.Fatalf("got %q (%s), want %q (stop_string)", res.Text, res.StopReason, "Hello<end ok")
	}
	if !slices.Equal(seen, wantAfter[:len(seen)]) || len(seen) != 6 {
		t.Errorf("streamed so far after each token = %q, want %q", seen, wantAfter[:6])
	}
}

// refStream is the reference for streamed generation with stop strings: the
// text decoded after each token, cut at the first stop string to appear.
func refStream(tokens []int, stops []string) (text string, n int, stopped bool) {
	d := newTestDecoder()
	var b strings.Builder
	for i, t := range tokens {
		b.WriteString(d.Push(t))
		cut := -1
		for _, s := range stops {
			if j := strings.Index(b.String(), s); j >= 0 && (cut < 0 || j < cut) {
				cut = j
			}
		}
		if cut >= 0 {
			return b.String()[:cut], i + 1, true
		}
	}
	b.WriteString(d.Flush())
	full := b.String()
	cut := -1
	for _, s := range stops {
		if j := strings.Index(full, s); j >= 0 && (cut < 0 || j < cut) {
			cut = j
		}
	}
	if cut >= 0 {
		return full[:cut], len(tokens), true
	}
	return full, len(tokens), false
}

// longestHeld is the length of the longest suffix of s that is a proper
// prefix of a stop string.
func longestHeld(s string, stops []string) int {
	best := 0
	for _, st := range stops {
		for k := 1; k < len(st) && k <= len(s); k++ {
			if strings.HasPrefix(st, s[len(s)-k:]) {
				best = max(best, k)
			}
		}
	}
	return best
}

// TestGenerateStreamRandom checks on random token streams that the chunks
// concatenate to Result.Text, that Text matches the reference cut, and that
// after each token exactly the text that cannot start a stop string has been
// streamed.
func TestGenerateStreamRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	stopSets := [][]string{nil, {"<end>"}, {"!"}, {"lo", "end>"}, {"€!", "é<"}, {"ee", "e<e", "<end> ok"}}
	alphabet := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	for trial := range 2000 {
		stops := stopSets[r.IntN(len(stopSets))]
		script := make([]int, 1+r.IntN(12))
		for i := range script {
			script[i] = alphabet[r.IntN(len(alphabet))]
		}
		seq := scriptSeq(testVocab, 100, script)
		var rec chunkRecorder
		var seen []string
		seq.before = func(n int) {
			if n > 0 {
				seen = append(seen, rec.joined())
			}
		}
		res, err := Generate(context.Background(), seq, []int{3}, newTestDecoder(), GenerateOptions{
			MaxTokens: len(script), StopStrings: stops, OnText: rec.onText,
		})
		if err != nil {
			t.Fatal(err)
		}
		wantText, wantN, stopped := refStream(script, stops)
		if res.Text != wantText || rec.joined() != res.Text || len(res.Tokens) != wantN || (res.StopReason == StopString) != stopped {
			t.Fatalf("trial %d script %v stops %q:\n got %q (streamed %q) %d tokens %s\nwant %q %d tokens stopped=%v",
				trial, script, stops, res.Text, rec.joined(), len(res.Tokens), res.StopReason, wantText, wantN, stopped)
		}
		// Minimal hold-back: after token i, everything but the longest
		// stop-string prefix of the decoded text has been streamed.
		for i, got := range seen {
			decoded := decodePrefix(script[:i+1])
			want := decoded[:len(decoded)-longestHeld(decoded, stops)]
			if got != want {
				t.Fatalf("trial %d script %v stops %q: after token %d streamed %q, want %q", trial, script, stops, i, got, want)
			}
		}
	}
}

// decodePrefix is the text a stream decoder has returned after tokens
// (without a final Flush).
func decodePrefix(tokens []int) string {
	d := newTestDecoder()
	var b strings.Builder
	for _, t := range tokens {
		b.WriteString(d.Push(t))
	}
	return b.String()
}

func TestGenerateNoDecoder(t *testing.T) {
	seq := scriptSeq(testVocab, 100, []int{1, 2, 3})
	res, err := Generate(context.Background(), seq, []int{1}, nil, GenerateOptions{MaxTokens: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Tokens, []int{1, 2, 3}) || res.Text != "" {
		t.Errorf("got %v %q", res.Tokens, res.Text)
	}
}

func TestGenerateContextTooLong(t *testing.T) {
	seq := tableSeq(testVocab, 10, nil)
	if _, err := seq.Append(context.Background(), []int{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	_, err := Generate(context.Background(), seq, make([]int, 8), newTestDecoder(), GenerateOptions{MaxTokens: 1})
	if !errors.Is(err, ErrContextTooLong) {
		t.Fatalf("err = %v, want ErrContextTooLong", err)
	}
	for _, n := range []string{"8", "7", "10"} {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("error %q does not state %s", err, n)
		}
	}
	if seq.appends != 1 {
		t.Errorf("Append called %d times after the error", seq.appends-1)
	}
}

func TestGenerateInvalid(t *testing.T) {
	ok := GenerateOptions{MaxTokens: 5}
	tests := []struct {
		name    string
		prompt  []int
		dec     TextDecoder
		opts    GenerateOptions
		wantErr string
	}{
		{"empty prompt", nil, newTestDecoder(), ok, "empty prompt"},
		{"zero max tokens", []int{1}, newTestDecoder(), GenerateOptions{}, "max tokens"},
		{"negative max tokens", []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: -1}, "max tokens"},
		{"bad sampler", []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: 5, Sampler: SamplerConfig{TopP: 2}}, "top-p"},
		{"empty stop string", []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: 5, StopStrings: []string{""}}, "stop strings"},
		{"invalid utf-8 stop string", []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: 5, StopStrings: []string{"\xe2"}}, "stop strings"},
		{"stop strings without decoder", []int{1}, nil, GenerateOptions{MaxTokens: 5, StopStrings: []string{"x"}}, "TextDecoder"},
		{"OnText without decoder", []int{1}, nil, GenerateOptions{MaxTokens: 5, OnText: func(string) error { return nil }}, "TextDecoder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seq := scriptSeq(testVocab, 100, []int{1})
			_, err := Generate(context.Background(), seq, tt.prompt, tt.dec, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
			}
			if seq.appends != 0 {
				t.Errorf("Append called %d times", seq.appends)
			}
		})
	}
}

func TestGenerateCancel(t *testing.T) {
	for _, cancelAt := range []int{0, 1, 3} {
		ctx, cancel := context.WithCancel(context.Background())
		seq := scriptSeq(testVocab, 100, []int{1, 2, 3, 9, 9, 9, 9})
		// Cancel just before the cancelAt-th Append: that Append fails.
		seq.before = func(n int) {
			if n == cancelAt {
				cancel()
			}
		}
		var rec chunkRecorder
		res, err := Generate(ctx, seq, []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: 10, OnText: rec.onText})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelAt %d: err = %v, want context.Canceled", cancelAt, err)
		}
		// Tokens sampled before the failing Append are returned.
		if len(res.Tokens) != cancelAt {
			t.Errorf("cancelAt %d: %d partial tokens %v", cancelAt, len(res.Tokens), res.Tokens)
		}
		if res.StopReason != "" {
			t.Errorf("cancelAt %d: StopReason = %q, want empty", cancelAt, res.StopReason)
		}
		if rec.joined() != res.Text || res.Text != decodePrefix(res.Tokens) {
			t.Errorf("cancelAt %d: streamed %q, Text %q, want %q", cancelAt, rec.joined(), res.Text, decodePrefix(res.Tokens))
		}
	}

	// Cancellation seen between steps (by a sequence that ignores ctx).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seq := scriptSeq(testVocab, 100, []int{1, 2, 3, 9})
	seq.ignoreCtx = true
	var rec chunkRecorder
	res, err := Generate(ctx, seq, []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: 10, OnText: func(s string) error {
		if len(rec.chunks) == 1 {
			cancel()
		}
		return rec.onText(s)
	}})
	if !errors.Is(err, context.Canceled) || !slices.Equal(res.Tokens, []int{1, 2}) || rec.joined() != res.Text || res.Text != "Hello world" {
		t.Errorf("err %v tokens %v text %q streamed %q", err, res.Tokens, res.Text, rec.joined())
	}
}

func TestGenerateOnTextError(t *testing.T) {
	errStop := errors.New("client went away")
	seq := scriptSeq(testVocab, 100, []int{1, 2, 3, 9})
	var rec chunkRecorder
	res, err := Generate(context.Background(), seq, []int{1}, newTestDecoder(), GenerateOptions{MaxTokens: 10, OnText: func(s string) error {
		rec.onText(s)
		if len(rec.chunks) == 2 {
			return errStop
		}
		return nil
	}})
	if !errors.Is(err, errStop) {
		t.Fatalf("err = %v, want %v", err, errStop)
	}
	if rec.joined() != res.Text || res.Text != "Hello world" || !slices.Equal(res.Tokens, []int{1, 2}) {
		t.Errorf("Tokens %v Text %q streamed %q", res.Tokens, res.Text, rec.joined())
	}
}

func TestGenerateRepeatPenaltySeesPrompt(t *testing.T) {
	// The model always prefers token 1 (logit 5) then token 2 (logit 4).
	seq := &fakeSeq{vocab: testVocab, maxLen: 100, logits: func([]int) []float32 {
		l := make([]float32, testVocab)
		l[1], l[2] = 5, 4
		return l
	}}
	res, err := Generate(context.Background(), seq, []int{1}, nil, GenerateOptions{
		MaxTokens: 3, Sampler: SamplerConfig{RepeatPenalty: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	// 1 is in the prompt: 5/2 < 4 → 2; then both are in the history: 2.5 > 2 → 1.
	if want := []int{2, 1, 1}; !slices.Equal(res.Tokens, want) {
		t.Errorf("Tokens = %v, want %v", res.Tokens, want)
	}
}

func TestGenerateSeeded(t *testing.T) {
	flat := func([]int) []float32 { return make([]float32, testVocab) }
	gen := func(seed int64) []int {
		seq := &fakeSeq{vocab: testVocab, maxLen: 100, logits: flat}
		res, err := Generate(context.Background(), seq, []int{1}, nil, GenerateOptions{
			MaxTokens: 30, Sampler: SamplerConfig{Temperature: 1, TopP: 0.9, Seed: seed},
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.Tokens
	}
	a, b, c := gen(1), gen(1), gen(2)
	if !slices.Equal(a, b) || slices.Equal(a, c) {
		t.Errorf("seed 1: %v / %v, seed 2: %v", a, b, c)
	}
}

func TestGenerateNoLogits(t *testing.T) {
	seq := &fakeSeq{vocab: testVocab, maxLen: 100, logits: func([]int) []float32 { return nil }}
	_, err := Generate(context.Background(), seq, []int{1}, nil, GenerateOptions{MaxTokens: 3})
	if err == nil || !strings.Contains(err.Error(), "no logits") {
		t.Fatalf("err = %v, want a no-logits error", err)
	}
}

// TestGenerateGreedyOnDevice checks that plain greedy decoding lets a GreedySequence pick the tokens
// (one AppendGreedy per Append, same tokens as host argmax), and that sampling or a repetition penalty
// keeps the host sampler.
func TestGenerateGreedyOnDevice(t *testing.T) {
	next := map[int]int{1: 2, 2: 3, 3: 9, 9: 1}
	want, err := Generate(context.Background(), tableSeq(testVocab, 40, next), []int{9}, newTestDecoder(), GenerateOptions{MaxTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	g := &greedySeq{fakeSeq: tableSeq(testVocab, 40, next)}
	got, err := Generate(context.Background(), g, []int{9}, newTestDecoder(), GenerateOptions{MaxTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Tokens, want.Tokens) || got.StopReason != want.StopReason {
		t.Errorf("greedy on device: %v (%s), want %v (%s)", got.Tokens, got.StopReason, want.Tokens, want.StopReason)
	}
	if g.greedyCalls != g.appends || g.appends != 10 {
		t.Errorf("AppendGreedy calls %d, Append calls %d; want 10 of each", g.greedyCalls, g.appends)
	}
	for _, sc := range []SamplerConfig{{Temperature: 0.7, Seed: 1}, {RepeatPenalty: 1.3}} {
		g := &greedySeq{fakeSeq: tableSeq(testVocab, 40, next)}
		if _, err := Generate(context.Background(), g, []int{9}, newTestDecoder(), GenerateOptions{MaxTokens: 5, Sampler: sc}); err != nil {
			t.Fatal(err)
		}
		if g.greedyCalls != 0 {
			t.Errorf("sampler %+v: AppendGreedy used %d times; the host sampler must pick", sc, g.greedyCalls)
		}
	}
}
