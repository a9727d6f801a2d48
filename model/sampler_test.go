package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
)

var (
	inf = float32(math.Inf(1))
	nan = float32(math.NaN())
)

func TestGreedyArgmaxTies(t *testing.T) {
	tests := []struct {
		name   string
		logits []float32
		want   int
	}{
		{"single", []float32{1}, 0},
		{"clear max", []float32{0, 3, 1}, 1},
		{"tie picks lowest id", []float32{1, 3, 2, 3, 3}, 1},
		{"all equal", []float32{7, 7, 7}, 0},
		{"negative", []float32{-2, -1, -1, -3}, 1},
		{"-inf ignored", []float32{-inf, -5, -inf}, 1},
		{"all -inf", []float32{-inf, -inf}, 0},
		{"nan ignored", []float32{nan, 1, 2, nan, 2}, 2},
		{"+inf wins", []float32{1, inf, inf}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Greedy ignores top-k / top-p / min-p.
			for _, cfg := range []SamplerConfig{{}, {TopK: 2, TopP: 0.5, MinP: 0.3, Seed: 3}} {
				if got := NewSampler(cfg).Sample(tt.logits, nil); got != tt.want {
					t.Errorf("cfg %+v: Sample = %d, want %d", cfg, got, tt.want)
				}
			}
		})
	}
}

// randomLogits returns n logits ~ N(0, scale²), rounded to 0.5 when ties is
// set (so that ties, also at the maximum, are common).
func randomLogits(r *rand.Rand, n int, scale float64, ties bool) []float32 {
	l := make([]float32, n)
	for i := range l {
		v := r.NormFloat64() * scale
		if ties {
			v = math.Round(v*2) / 2
		}
		l[i] = float32(v)
	}
	return l
}

func TestTopK1EqualsGreedy(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, temp := range []float64{0.01, 0.5, 1, 3, 100, 1e6} {
		for _, topP := range []float64{0, 0.5} {
			cfg := SamplerConfig{Temperature: temp, TopK: 1, TopP: topP, Seed: 42}
			s := NewSampler(cfg)
			for trial := range 200 {
				l := randomLogits(r, 300, 2, trial%2 == 0)
				if got, want := s.Sample(l, nil), argmax(l); got != want {
					t.Fatalf("%+v trial %d: Sample = %d, argmax = %d", cfg, trial, got, want)
				}
			}
		}
	}
}

func sampleN(s *Sampler, logits []float32, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = s.Sample(logits, nil)
	}
	return out
}

func TestSeedDeterminism(t *testing.T) {
	flat := make([]float32, 64)
	for _, cfg := range []SamplerConfig{
		{Temperature: 1},
		{Temperature: 1, TopK: 32},
		{Temperature: 1, TopP: 0.9},
		{Temperature: 1, MinP: 0.5},
	} {
		a := sampleN(NewSampler(withSeed(cfg, 7)), flat, 100)
		b := sampleN(NewSampler(withSeed(cfg, 7)), flat, 100)
		c := sampleN(NewSampler(withSeed(cfg, 8)), flat, 100)
		if !slices.Equal(a, b) {
			t.Errorf("%+v: same seed gave different tokens:\n%v\n%v", cfg, a, b)
		}
		if slices.Equal(a, c) {
			t.Errorf("%+v: seeds 7 and 8 gave the same tokens %v", cfg, a)
		}
		distinct := map[int]bool{}
		for _, x := range a {
			distinct[x] = true
		}
		if len(distinct) < 10 {
			t.Errorf("%+v: flat distribution gave only %d distinct tokens in 100 draws", cfg, len(distinct))
		}
	}
}

func withSeed(c SamplerConfig, seed int64) SamplerConfig { c.Seed = seed; return c }

// logProbs returns log(p) as logits.
func logProbs(p ...float64) []float32 {
	l := make([]float32, len(p))
	for i, v := range p {
		l[i] = float32(math.Log(v))
	}
	return l
}

// checkDistribution draws n samples and compares the empirical distribution
// with want (a map id -> probability; absent ids must never be drawn).
func checkDistribution(t *testing.T, cfg SamplerConfig, logits []float32, want map[int]float64) {
	t.Helper()
	const n = 40000
	const tol = 0.01
	s := NewSampler(cfg)
	counts := make([]int, len(logits))
	for range n {
		counts[s.Sample(logits, nil)]++
	}
	for id, c := range counts {
		got := float64(c) / n
		if math.Abs(got-want[id]) > tol {
			t.Errorf("%+v: P(%d) = %.4f, want %.4f", cfg, id, got, want[id])
		}
		if _, ok := want[id]; !ok && c > 0 {
			t.Errorf("%+v: token %d drawn %d times, want never", cfg, id, c)
		}
	}
}

func TestTopPNucleus(t *testing.T) {
	probs := logProbs(0.5, 0.25, 0.15, 0.1)
	tests := []struct {
		name string
		cfg  SamplerConfig
		want map[int]float64
	}{
		{"off", SamplerConfig{Temperature: 1}, map[int]float64{0: 0.5, 1: 0.25, 2: 0.15, 3: 0.1}},
		{"p=1 is off", SamplerConfig{Temperature: 1, TopP: 1}, map[int]float64{0: 0.5, 1: 0.25, 2: 0.15, 3: 0.1}},
		{"p=0.3 keeps top token", SamplerConfig{Temperature: 1, TopP: 0.3}, map[int]float64{0: 1}},
		{"p=0.5 keeps top token", SamplerConfig{Temperature: 1, TopP: 0.49}, map[int]float64{0: 1}},
		{"p=0.7 keeps two", SamplerConfig{Temperature: 1, TopP: 0.7}, map[int]float64{0: 0.5 / 0.75, 1: 0.25 / 0.75}},
		{"p=0.8 keeps three", SamplerConfig{Temperature: 1, TopP: 0.8}, map[int]float64{0: 0.5 / 0.9, 1: 0.25 / 0.9, 2: 0.15 / 0.9}},
		{"p=0.95 keeps all", SamplerConfig{Temperature: 1, TopP: 0.95}, map[int]float64{0: 0.5, 1: 0.25, 2: 0.15, 3: 0.1}},
		// T=0.5 squares the probabilities: .25,.0625,.0225,.01 / .345
		{"temperature before top-p", SamplerConfig{Temperature: 0.5, TopP: 0.8},
			map[int]float64{0: 0.25 / 0.3125, 1: 0.0625 / 0.3125}},
		// top-k path: top-p over the top-k renormalised distribution.
		{"top-k 3 then p=0.8", SamplerConfig{Temperature: 1, TopK: 3, TopP: 0.8},
			map[int]float64{0: 0.5 / 0.75, 1: 0.25 / 0.75}}, // 0.5/0.9=.556 < .8 <= .833
		{"top-k 3 then p=0.9", SamplerConfig{Temperature: 1, TopK: 3, TopP: 0.9},
			map[int]float64{0: 0.5 / 0.9, 1: 0.25 / 0.9, 2: 0.15 / 0.9}},
		{"top-k 2", SamplerConfig{Temperature: 1, TopK: 2}, map[int]float64{0: 0.5 / 0.75, 1: 0.25 / 0.75}},
		// min-p 0.4: keep p >= 0.2 → {0, 1}
		{"min-p", SamplerConfig{Temperature: 1, MinP: 0.4}, map[int]float64{0: 0.5 / 0.75, 1: 0.25 / 0.75}},
		// min-p 0.25: keep p >= 0.125 → {0,1,2}; top-p 0.7 first keeps {0,1}
		{"top-p then min-p", SamplerConfig{Temperature: 1, TopP: 0.7, MinP: 0.25}, map[int]float64{0: 0.5 / 0.75, 1: 0.25 / 0.75}},
		{"top-k then min-p", SamplerConfig{Temperature: 1, TopK: 3, MinP: 0.4}, map[int]float64{0: 0.5 / 0.75, 1: 0.25 / 0.75}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Seed = 1234
			checkDistribution(t, tt.cfg, probs, tt.want)
		})
	}
}

// refKept is a brute-force reference: full sort, softmax, top-k, top-p,
// min-p. It returns the kept ids, sorted.
func refKept(l []float32, cfg SamplerConfig) []int {
	type iv struct {
		id int
		v  float64
	}
	c := make([]iv, len(l))
	for i, v := range l {
		c[i] = iv{i, float64(v) / cfg.Temperature}
	}
	sort.SliceStable(c, func(a, b int) bool { return c[a].v > c[b].v })
	if cfg.TopK > 0 && cfg.TopK < len(c) {
		c = c[:cfg.TopK]
	}
	var z float64
	for _, x := range c {
		z += math.Exp(x.v - c[0].v)
	}
	n := len(c)
	if cfg.TopP > 0 && cfg.TopP < 1 {
		cum := 0.0
		for i, x := range c {
			if cum >= cfg.TopP {
				n = i
				break
			}
			cum += math.Exp(x.v-c[0].v) / z
		}
	}
	c = c[:n]
	var ids []int
	for _, x := range c {
		if d := x.v - c[0].v; d >= expCutoff && math.Exp(d) >= cfg.MinP {
			ids = append(ids, x.id)
		}
	}
	slices.Sort(ids)
	return ids
}

func keptIDs(kept []cand) []int {
	ids := make([]int, 0, len(kept))
	for _, c := range kept {
		if c.v > 0 {
			ids = append(ids, int(c.id))
		}
	}
	slices.Sort(ids)
	return ids
}

// TestFilterMatchesReference checks the histogram top-p and the heap top-k
// against a full sort on random logits.
func TestFilterMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for trial := range 200 {
		vocab := 1 + r.IntN(2000)
		l := randomLogits(r, vocab, 0.5+4*r.Float64(), false)
		cfg := SamplerConfig{
			Temperature: []float64{0.2, 0.7, 1, 1.5, 10}[r.IntN(5)],
			TopP:        []float64{0.1, 0.5, 0.9, 0.95, 0.999, 1}[r.IntN(6)],
			MinP:        []float64{0, 0, 0.01, 0.1}[r.IntN(4)],
		}
		if r.IntN(2) == 0 {
			cfg.TopK = 1 + r.IntN(100)
		}
		s := NewSampler(cfg)
		var kept []cand
		switch {
		case cfg.TopK > 0 && cfg.TopK < vocab:
			kept, _ = s.topK(l, cfg.TopK)
		case cfg.TopP < 1:
			kept, _ = s.topP(l)
		default:
			continue
		}
		got, want := keptIDs(kept), refKept(l, cfg)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d vocab %d %+v:\n got %d ids %v\nwant %d ids %v", trial, vocab, cfg, len(got), got, len(want), want)
		}
	}
}

func TestRepeatPenalty(t *testing.T) {
	tests := []struct {
		name    string
		cfg     SamplerConfig
		logits  []float32
		history []int
		want    int
	}{
		{"off: positive max kept", SamplerConfig{}, []float32{2, 1.5, 0}, []int{0}, 0},
		{"positive logit divided", SamplerConfig{RepeatPenalty: 2}, []float32{2, 1.5, 0}, []int{0}, 1},
		{"negative logit multiplied", SamplerConfig{RepeatPenalty: 1.5}, []float32{-1, -1.2, -3}, []int{0}, 1},
		// Dividing a negative logit would raise it (-1.3/1.5 = -0.87 > -1):
		// HF multiplies, so token 1 stays below token 0.
		{"negative logit never raised", SamplerConfig{RepeatPenalty: 1.5}, []float32{-1, -1.3, -3}, []int{1}, 0},
		{"each distinct token once", SamplerConfig{RepeatPenalty: 2}, []float32{2, 0.6}, []int{0, 0, 0, 0}, 0},
		{"penalty < 1 rewards", SamplerConfig{RepeatPenalty: 0.5}, []float32{2, 1.5}, []int{1}, 1},
		{"window excludes old tokens", SamplerConfig{RepeatPenalty: 2, RepeatLastN: 1}, []float32{2, 1.5, 0}, []int{0, 2}, 0},
		{"window includes recent", SamplerConfig{RepeatPenalty: 2, RepeatLastN: 2}, []float32{2, 1.5, 0}, []int{0, 2}, 1},
		{"-1 = whole history", SamplerConfig{RepeatPenalty: 2, RepeatLastN: -1}, append([]float32{2, 1.5}, make([]float32, 100)...),
			append([]int{0}, seqInts(2, 100)...), 1},
		{"default window 64", SamplerConfig{RepeatPenalty: 2}, append([]float32{2, 1.5}, make([]float32, 100)...),
			append([]int{0}, seqInts(2, 66)...), 0},
		{"default window 64 includes 64th", SamplerConfig{RepeatPenalty: 2}, append([]float32{2, 1.5}, make([]float32, 100)...),
			append([]int{0}, seqInts(2, 63)...), 1},
		{"out-of-range ids ignored", SamplerConfig{RepeatPenalty: 2}, []float32{2, 1.5}, []int{-1, 7}, 0},
		{"sampling path penalised too", SamplerConfig{RepeatPenalty: 100, Temperature: 1, TopK: 1}, []float32{2, 1.5}, []int{0}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := slices.Clone(tt.logits)
			s := NewSampler(tt.cfg)
			if got := s.Sample(tt.logits, tt.history); got != tt.want {
				t.Errorf("Sample = %d, want %d", got, tt.want)
			}
			if !slices.Equal(orig, tt.logits) {
				t.Errorf("logits modified: %v -> %v", orig, tt.logits)
			}
			// Second call with the same sampler: stamps must not leak.
			if got := s.Sample(tt.logits, tt.history); got != tt.want {
				t.Errorf("second Sample = %d, want %d", got, tt.want)
			}
		})
	}
}

// seqInts returns n ids from start (start, start+1, ...).
func seqInts(start, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = start + i
	}
	return out
}

func TestSampleNoAllocs(t *testing.T) {
	l := randomLogits(rand.New(rand.NewPCG(1, 1)), 5000, 3, false)
	hist := seqInts(0, 100)
	for _, cfg := range benchConfigs {
		cfg.RepeatPenalty = 1.1
		s := NewSampler(cfg)
		s.Sample(l, hist) // grow buffers
		if a := testing.AllocsPerRun(20, func() { s.Sample(l, hist) }); a != 0 {
			t.Errorf("%+v: %v allocations per Sample", cfg, a)
		}
	}
}

func TestSampleInfiniteLogits(t *testing.T) {
	l := []float32{0, inf, 1, inf}
	for _, cfg := range benchConfigs {
		if got := NewSampler(cfg).Sample(l, nil); got != 1 {
			t.Errorf("%+v: Sample = %d, want 1 (first +Inf)", cfg, got)
		}
	}
	masked := []float32{-inf, nan, 3, -inf}
	for _, cfg := range benchConfigs {
		cfg.TopK = min(cfg.TopK, 3)
		if got := NewSampler(cfg).Sample(masked, nil); got != 2 {
			t.Errorf("%+v: Sample = %d, want 2 (only finite logit)", cfg, got)
		}
	}
}

func TestWeight(t *testing.T) {
	for _, temp := range []float64{0.3, 1, 2.5} {
		scale := expSteps / temp
		const m = float32(7.25)
		for d := 0.0; d <= 40; d += 0.00917 {
			v := m - float32(d)
			got, _, ok := weight(v, m, scale)
			x := (float64(m) - float64(v)) / temp
			want := math.Exp(-x)
			if x > -expCutoff {
				if ok || got != 0 {
					t.Fatalf("T=%v weight(%v) = %v, %v; want 0 beyond the cut-off", temp, v, got, ok)
				}
				continue
			}
			if rel := math.Abs(got-want) / want; !ok || rel > 1e-8 {
				t.Fatalf("T=%v weight(%v) = %v, want %v (rel err %g)", temp, v, got, want, rel)
			}
		}
	}
	if w, _, _ := weight(3, 3, 64); w != 1 {
		t.Errorf("weight of the maximum = %v, want exactly 1", w)
	}
	for _, v := range []float32{-inf, nan} {
		if w, _, ok := weight(v, 3, 64); w != 0 || ok {
			t.Errorf("weight(%v) = %v, %v; want 0, false", v, w, ok)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		cfg     SamplerConfig
		wantErr string // substring; "" = valid
	}{
		{SamplerConfig{}, ""},
		{SamplerConfig{Temperature: 0.8, TopK: 40, TopP: 0.95, MinP: 0.05, RepeatPenalty: 1.1, RepeatLastN: -1, Seed: -3}, ""},
		{SamplerConfig{TopP: 1, RepeatPenalty: 1, MinP: 1}, ""},
		{SamplerConfig{Temperature: -0.1}, "temperature"},
		{SamplerConfig{Temperature: math.NaN()}, "temperature"},
		{SamplerConfig{Temperature: math.Inf(1)}, "temperature"},
		{SamplerConfig{TopK: -1}, "top-k"},
		{SamplerConfig{TopP: -0.5}, "top-p"},
		{SamplerConfig{TopP: 1.01}, "top-p"},
		{SamplerConfig{TopP: math.NaN()}, "top-p"},
		{SamplerConfig{MinP: -0.1}, "min-p"},
		{SamplerConfig{MinP: 2}, "min-p"},
		{SamplerConfig{RepeatPenalty: -1}, "repeat-penalty"},
		{SamplerConfig{RepeatPenalty: math.Inf(1)}, "repeat-penalty"},
		{SamplerConfig{RepeatLastN: -2}, "repeat-last-n"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", tt.cfg, err)
		case tt.wantErr != "" && err == nil:
			t.Errorf("%+v: no error, want one naming %q", tt.cfg, tt.wantErr)
		case err != nil && !strings.Contains(err.Error(), tt.wantErr):
			t.Errorf("%+v: error %q does not name %q", tt.cfg, err, tt.wantErr)
		}
	}
}

var benchConfigs = []SamplerConfig{
	{},                            // greedy
	{Temperature: 0.8, TopK: 40},  // top-k
	{Temperature: 0.8, TopP: 0.9}, // top-p alone
	{Temperature: 0.8, TopK: 40, TopP: 0.95, MinP: 0.05}, // llama.cpp-like
	{Temperature: 1},             // full distribution
	{Temperature: 1, MinP: 0.05}, // min-p alone
}

// llmLogits imitates a language model's logits: a broad normal background
// with a handful of strong candidates.
func llmLogits(vocab int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 99))
	l := randomLogits(r, vocab, 2.5, false)
	for i := range 20 {
		l[r.IntN(vocab)] = float32(12 + 0.4*float64(i))
	}
	return l
}

func BenchmarkSample(b *testing.B) {
	const vocab = 128256
	l := llmLogits(vocab, 1)
	hist := seqInts(1000, 512)
	for _, bc := range []struct {
		name string
		cfg  SamplerConfig
	}{
		{"greedy", benchConfigs[0]},
		{"topk40", benchConfigs[1]},
		{"topp0.9", benchConfigs[2]},
		{"topk40-topp0.95-minp0.05", benchConfigs[3]},
		{"full", benchConfigs[4]},
		{"minp0.05", benchConfigs[5]},
		{"greedy-penalty1.1", SamplerConfig{RepeatPenalty: 1.1}},
		{"topp0.9-penalty1.1", SamplerConfig{Temperature: 0.8, TopP: 0.9, RepeatPenalty: 1.1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewSampler(bc.cfg)
			s.Sample(l, hist) // grow the buffers
			b.ReportAllocs()
			for b.Loop() {
				s.Sample(l, hist)
			}
		})
	}
}
