package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// DefaultRepeatLastN is the repetition-penalty window used when
// SamplerConfig.RepeatLastN is 0 (the llama.cpp default).
const DefaultRepeatLastN = 64

// SamplerConfig selects how the next token is chosen from logits. The zero
// value is greedy decoding with no penalty.
//
// The steps are applied in Hugging Face order: repetition penalty,
// temperature, top-k, top-p, min-p, then a draw from the remaining tokens.
type SamplerConfig struct {
	// Temperature divides the logits before the softmax. 0 selects greedy
	// decoding (argmax, ties broken by the lowest token id); top-k, top-p and
	// min-p then have no effect.
	Temperature float64
	// TopK keeps only the TopK most likely tokens (ties at the boundary are
	// broken by the lowest token id, so exactly TopK tokens are kept).
	// 0 = off.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose cumulative
	// probability is >= TopP (always at least one token). 0 or 1 = off.
	TopP float64
	// MinP drops tokens whose probability is below MinP times the probability
	// of the most likely token. 0 = off.
	MinP float64
	// RepeatPenalty penalises tokens that occur in the last RepeatLastN
	// tokens of the history, each distinct token once: a positive logit is
	// divided by it, any other logit is multiplied by it. 1 = off; 0 (unset)
	// is treated as 1.
	RepeatPenalty float64
	// RepeatLastN is the number of most recent history tokens the repetition
	// penalty looks at: 0 = DefaultRepeatLastN (64), -1 = the whole history.
	RepeatLastN int
	// Seed seeds the PCG generator used for drawing: the same seed, config and
	// logits give the same tokens. Every value, including 0, is a fixed seed.
	Seed int64
}

// Validate reports the first invalid field, naming it like the command-line
// flag that sets it.
func (c SamplerConfig) Validate() error {
	switch {
	case math.IsNaN(c.Temperature) || c.Temperature < 0 || math.IsInf(c.Temperature, 0):
		return fmt.Errorf("sampler: temperature must be a finite number >= 0 (0 = greedy), got %v", c.Temperature)
	case c.TopK < 0:
		return fmt.Errorf("sampler: top-k must be >= 0 (0 = off), got %d", c.TopK)
	case math.IsNaN(c.TopP) || c.TopP < 0 || c.TopP > 1:
		return fmt.Errorf("sampler: top-p must be in (0, 1] (0 or 1 = off), got %v", c.TopP)
	case math.IsNaN(c.MinP) || c.MinP < 0 || c.MinP > 1:
		return fmt.Errorf("sampler: min-p must be in [0, 1] (0 = off), got %v", c.MinP)
	case math.IsNaN(c.RepeatPenalty) || c.RepeatPenalty < 0 || math.IsInf(c.RepeatPenalty, 0):
		return fmt.Errorf("sampler: repeat-penalty must be a finite number > 0 (1 = off), got %v", c.RepeatPenalty)
	case c.RepeatLastN < -1:
		return fmt.Errorf("sampler: repeat-last-n must be >= -1 (-1 = whole history, 0 = default %d), got %d", DefaultRepeatLastN, c.RepeatLastN)
	}
	return nil
}

// normalized maps unset and out-of-range values to their neutral setting.
func (c SamplerConfig) normalized() SamplerConfig {
	if !(c.Temperature > 0) || math.IsInf(c.Temperature, 0) {
		c.Temperature = 0
	}
	if c.TopK < 0 {
		c.TopK = 0
	}
	if !(c.TopP > 0 && c.TopP < 1) {
		c.TopP = 1
	}
	if !(c.MinP > 0 && c.MinP <= 1) {
		c.MinP = 0
	}
	if !(c.RepeatPenalty > 0) || math.IsInf(c.RepeatPenalty, 0) {
		c.RepeatPenalty = 1
	}
	if c.RepeatLastN == 0 || c.RepeatLastN < -1 {
		c.RepeatLastN = DefaultRepeatLastN
	}
	return c
}

// cand is a candidate token: its id and a value (a logit or a weight).
type cand struct {
	id int32
	v  float32
}

const (
	// expCutoff: tokens whose temperature-scaled logit is more than this far
	// below the maximum get probability 0. Their total mass is at most
	// vocab*e^-32 (< 2e-9 of the total for a 128K vocabulary).
	expCutoff = -32
	// Weights come from a table of e^(-k/expSteps) for k in [0, expMaxK],
	// corrected by a short polynomial (relative error < 1e-8).
	expSteps = 64
	expMaxK  = -expCutoff * expSteps
	// The top-p histogram groups tokens by k>>bucketShift: buckets of 1/8
	// in scaled-logit units.
	bucketShift = 3
	nBuckets    = expMaxK>>bucketShift + 1
)

// expTab[k] = e^(-k/expSteps).
var expTab = func() (t [expMaxK + 1]float64) {
	for k := range t {
		t[k] = math.Exp(-float64(k) / expSteps)
	}
	return t
}()

// scaledDist returns (m-v)*scale: the distance below the maximum in table
// steps (>= 0 for v <= m; +Inf or NaN for v = -Inf or NaN).
func scaledDist(v, m float32, scale float64) float64 {
	return (float64(m) - float64(v)) * scale
}

// weight returns the unnormalised probability e^((v-m)*invT) of a token
// with logit v when the maximum logit is m, given scale = invT*expSteps, and
// its table index k (for bucketing). ok is false (and the weight 0) when the
// scaled logit is below expCutoff or v is -Inf or NaN.
func weight(v, m float32, scale float64) (w float64, k uint, ok bool) {
	return weightAt(scaledDist(v, m, scale))
}

// weightAt returns e^(-x/expSteps) for a scaled distance x (see weight).
func weightAt(x float64) (w float64, k uint, ok bool) {
	if !(x <= expMaxK) {
		return 0, 0, false
	}
	k = min(uint(x), expMaxK)
	y := (x - float64(k)) * (1.0 / expSteps) // in [0, 1/64): e^-y by Taylor
	return expTab[k] * (1 - y*(1-y*(0.5-y*(1.0/6)))), k, true
}

// Sampler picks tokens from logits according to a SamplerConfig. It keeps
// reusable buffers, so Sample does not allocate once the buffers have grown
// to the vocabulary size. A Sampler is not safe for concurrent use.
type Sampler struct {
	cfg   SamplerConfig
	rng   *rand.Rand
	work  []float32 // penalised copy of the logits
	w     []float32 // per-token weights exp((l-max)/T)
	seen  []uint32  // epoch stamps for "each distinct token once"
	epoch uint32
	cands []cand // top-k heap / kept tokens
	bound []cand // top-p boundary bucket
	mass  [nBuckets]float64
}

// NewSampler returns a Sampler for cfg. cfg should have passed Validate;
// invalid values are treated as the neutral setting (off / greedy).
func NewSampler(cfg SamplerConfig) *Sampler {
	seed := uint64(cfg.Seed)
	return &Sampler{
		cfg: cfg.normalized(),
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

// Config returns the normalised configuration in use.
func (s *Sampler) Config() SamplerConfig { return s.cfg }

// Sample returns the next token id for logits (one value per vocabulary
// entry). history is the sequence so far (prompt and generated tokens); only
// the repetition penalty looks at it. logits is not modified.
//
// NaN logits are never chosen. A +Inf logit wins outright (the lowest such
// id); if no logit is above -Inf, the lowest -Inf id (or 0) is returned.
func (s *Sampler) Sample(logits []float32, history []int) int {
	if len(logits) == 0 {
		return 0
	}
	l := s.penalize(logits, history)
	if s.cfg.Temperature == 0 {
		return argmax(l)
	}
	if s.cfg.TopK > 0 && s.cfg.TopK < len(l) {
		kept, total := s.topK(l, s.cfg.TopK)
		if kept == nil {
			return argmax(l)
		}
		return s.draw(kept, total)
	}
	if s.cfg.TopP < 1 {
		kept, total := s.topP(l)
		if kept == nil {
			return argmax(l)
		}
		return s.draw(kept, total)
	}
	return s.dense(l)
}

// penalize applies the repetition penalty into a copy of the logits, or
// returns logits unchanged when there is nothing to penalise.
func (s *Sampler) penalize(logits []float32, history []int) []float32 {
	p := s.cfg.RepeatPenalty
	if p == 1 || len(history) == 0 {
		return logits
	}
	if n := s.cfg.RepeatLastN; n > 0 && len(history) > n {
		history = history[len(history)-n:]
	}
	s.work = grow(s.work, len(logits))
	copy(s.work, logits)
	if len(s.seen) < len(logits) {
		s.seen = make([]uint32, len(logits))
		s.epoch = 0
	}
	s.epoch++
	if s.epoch == 0 { // wrapped: clear stale stamps
		clear(s.seen)
		s.epoch = 1
	}
	fp := float32(p)
	for _, t := range history {
		if t < 0 || t >= len(logits) || s.seen[t] == s.epoch {
			continue
		}
		s.seen[t] = s.epoch
		if v := s.work[t]; v > 0 {
			s.work[t] = v / fp
		} else {
			s.work[t] = v * fp
		}
	}
	return s.work
}

// argmax returns the index of the largest value, the lowest index on ties
// (like torch.argmax). NaN never wins; if no value is above -Inf, it returns
// the first -Inf, or 0.
func argmax(l []float32) int {
	m := maxLogit(l)
	for i, v := range l {
		if v == m {
			return i
		}
	}
	return 0
}

// maxLogit returns the largest non-NaN value (-Inf if none). Four
// independent maxima keep the loop short of dependency stalls.
func maxLogit(l []float32) float32 {
	ninf := float32(math.Inf(-1))
	m0, m1, m2, m3 := ninf, ninf, ninf, ninf
	i := 0
	for ; i+4 <= len(l); i += 4 {
		q := l[i : i+4 : i+4]
		if q[0] > m0 {
			m0 = q[0]
		}
		if q[1] > m1 {
			m1 = q[1]
		}
		if q[2] > m2 {
			m2 = q[2]
		}
		if q[3] > m3 {
			m3 = q[3]
		}
	}
	for ; i < len(l); i++ {
		if l[i] > m0 {
			m0 = l[i]
		}
	}
	return max(m0, m1, m2, m3)
}

// draw samples one of kept with probability proportional to its weight v.
func (s *Sampler) draw(kept []cand, total float64) int {
	r := s.rng.Float64() * total
	for _, c := range kept {
		r -= float64(c.v)
		if r < 0 {
			return int(c.id)
		}
	}
	// Rounding: return the last token with a non-zero weight.
	for i := len(kept) - 1; i >= 0; i-- {
		if kept[i].v > 0 {
			return int(kept[i].id)
		}
	}
	return int(kept[0].id)
}

// dense samples from the whole vocabulary (no top-k, no top-p), with min-p.
func (s *Sampler) dense(l []float32) int {
	m := maxLogit(l)
	if math.IsInf(float64(m), 0) {
		return argmax(l)
	}
	scale := expSteps / s.cfg.Temperature
	mp := float32(s.cfg.MinP)
	// With min-p, tokens far below the cut need no exp: a distance limit
	// with a margin of one table step leaves the exact test to e < mp.
	xMax := float64(expMaxK)
	if mp > 0 {
		xMax = min(xMax, -math.Log(s.cfg.MinP)*expSteps+1)
	}
	s.w = grow(s.w, len(l))
	w := s.w[:len(l)]
	var total float64
	for i, v := range l {
		x := scaledDist(v, m, scale)
		if !(x <= xMax) {
			w[i] = 0
			continue
		}
		e64, _, _ := weightAt(x)
		e := float32(e64)
		if e < mp {
			e = 0
		}
		w[i] = e
		total += float64(e)
	}
	r := s.rng.Float64() * total
	last := 0
	for i, e := range w {
		if e == 0 {
			continue
		}
		last = i
		r -= float64(e)
		if r < 0 {
			return i
		}
	}
	return last
}

// better orders candidates by value descending, then id ascending.
func better(a, b cand) int {
	switch {
	case a.v > b.v:
		return -1
	case a.v < b.v:
		return 1
	}
	return int(a.id) - int(b.id)
}

// worse reports whether a ranks below b (lower value, or equal value and a
// higher id).
func worse(a, b cand) bool {
	return a.v < b.v || (a.v == b.v && a.id > b.id)
}

// siftDown restores the min-heap (worst at the root) below i.
func siftDown(h []cand, i int) {
	n := len(h)
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if c+1 < n && worse(h[c+1], h[c]) {
			c++
		}
		if !worse(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}

// topK selects the k best tokens with a size-k heap (O(V) compares, no full
// sort), then applies top-p and min-p to that prefix. It returns the kept
// tokens with their weights and the sum of the weights, or nil when the
// maximum is infinite.
func (s *Sampler) topK(l []float32, k int) ([]cand, float64) {
	s.cands = growCands(s.cands, k)
	h := s.cands[:k]
	negInf := float32(math.Inf(-1))
	for i := range k {
		v := l[i]
		if v != v {
			v = negInf
		}
		h[i] = cand{int32(i), v}
	}
	for i := k/2 - 1; i >= 0; i-- {
		siftDown(h, i)
	}
	// Ids are scanned in increasing order, so a later token with a logit
	// equal to the root's ranks below it: strict > is the exact test.
	for i := k; i < len(l); i++ {
		if v := l[i]; v > h[0].v {
			h[0] = cand{int32(i), v}
			siftDown(h, 0)
		}
	}
	slices.SortFunc(h, better)

	m := h[0].v
	if math.IsInf(float64(m), 0) {
		return nil, 0
	}
	scale := expSteps / s.cfg.Temperature
	var z float64
	for i := range h {
		e, _, _ := weight(h[i].v, m, scale)
		h[i].v = float32(e) // from here on v is the weight
		z += float64(h[i].v)
	}
	n := len(h)
	if s.cfg.TopP < 1 {
		target, cum := s.cfg.TopP*z, 0.0
		for i := range h {
			if cum >= target {
				n = i
				break
			}
			cum += float64(h[i].v)
		}
	}
	if s.cfg.MinP > 0 {
		mp := float32(s.cfg.MinP)
		for i := 1; i < n; i++ {
			if h[i].v < mp {
				n = i
				break
			}
		}
	}
	var total float64
	for _, c := range h[:n] {
		total += float64(c.v)
	}
	return h[:n], total
}

// topP applies top-p (and min-p) over the whole vocabulary without a full
// sort: a histogram of the scaled logits finds the bucket where the
// cumulative probability crosses p; tokens in better buckets are all kept,
// and only the boundary bucket is sorted. It returns the kept tokens with
// their weights and the sum of the weights, or nil when the maximum is
// infinite.
func (s *Sampler) topP(l []float32) ([]cand, float64) {
	m := maxLogit(l)
	if math.IsInf(float64(m), 0) {
		return nil, 0
	}
	scale := expSteps / s.cfg.Temperature
	clear(s.mass[:])
	var z float64
	for _, v := range l {
		e, k, _ := weight(v, m, scale) // 0 and k = 0 beyond the cut-off
		e = float64(float32(e))        // weights are float32 everywhere
		z += e
		s.mass[k>>bucketShift] += e
	}
	target := s.cfg.TopP * z
	boundary, before := nBuckets-1, 0.0
	for b := range nBuckets {
		if before+s.mass[b] >= target {
			boundary = b
			break
		}
		before += s.mass[b]
	}

	// Tokens in buckets <= boundary have a scaled distance below
	// (boundary+1)<<bucketShift; a logit threshold one table step lower
	// skips all others with one compare, conservatively.
	lim := float64(m) - float64((boundary+1)<<bucketShift+1)/scale
	thr := float32(lim)
	if float64(thr) > lim {
		thr = math.Nextafter32(thr, float32(math.Inf(-1)))
	}
	mp := float32(s.cfg.MinP)
	kept := s.cands[:0]
	bound := s.bound[:0]
	var total float64
	for i, v := range l {
		if !(v >= thr) {
			continue
		}
		e64, k, ok := weight(v, m, scale)
		if !ok {
			continue
		}
		switch b := int(k >> bucketShift); {
		case b < boundary:
			if e := float32(e64); e >= mp {
				kept = append(kept, cand{int32(i), e})
				total += float64(e)
			}
		case b == boundary:
			bound = append(bound, cand{int32(i), v})
		}
	}
	slices.SortFunc(bound, better)
	cum := before
	for _, c := range bound {
		if cum >= target {
			break
		}
		e64, _, _ := weight(c.v, m, scale)
		e := float32(e64)
		cum += float64(e)
		if e >= mp {
			kept = append(kept, cand{c.id, e})
			total += float64(e)
		}
	}
	s.cands, s.bound = kept, bound
	return kept, total
}

func grow(b []float32, n int) []float32 {
	if cap(b) < n {
		return make([]float32, n)
	}
	return b[:n]
}

func growCands(b []cand, n int) []cand {
	if cap(b) < n {
		return make([]cand, n)
	}
	return b[:n]
}
