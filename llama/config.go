// Package llama implements the LLaMA family of decoder-only transformers (LLaMA 1/2/3/3.x, Mistral,
// Qwen2-style, TinyLlama, SmolLM) as GoMLX graph functions, and a Runner that executes them with a KV
// cache on any GoMLX backend (the pure-Go CPU backend or XLA through a PJRT plugin).
//
// The three pieces are kept apart, as in llama2.c:
//   - Config: the blueprint, built from a Hugging Face config.json and validated.
//   - Weights: device tensors, loaded by one name-mapping table with strict shape checks.
//   - Sequence: the running state (KV cache) of one sequence, which goes into and out of every
//     compiled step (no hidden cursor inside the graph).
package llama

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/squeezeai/sqllm/weights"
)

// ErrUnsupported is wrapped by errors about architectures or settings this engine does not implement.
var ErrUnsupported = errors.New("unsupported model")

// SupportedModelTypes lists the config.json `model_type` values this package runs.
var SupportedModelTypes = []string{"llama", "mistral", "qwen2"}

// Config is the typed, validated blueprint of a LLaMA-family model. Field names follow the
// Hugging Face config.json names in Go case.
type Config struct {
	ModelType             string
	HiddenSize            int // hidden
	IntermediateSize      int // MLP width
	NumHiddenLayers       int
	NumAttentionHeads     int // numHeads
	NumKeyValueHeads      int // numKVHeads (grouped-query attention when < NumAttentionHeads)
	HeadDim               int // headDim
	VocabSize             int // vocab
	MaxPositionEmbeddings int // the context limit of a Sequence
	RMSNormEps            float64
	TieWordEmbeddings     bool // lm_head shares model.embed_tokens.weight
	AttentionBias         bool // q/k/v projections have biases (Qwen2, or attention_bias=true)
	AttentionOutBias      bool // o_proj has a bias (LLaMA's attention_bias=true; not Qwen2)
	MLPBias               bool
	SlidingWindow         int // 0: full attention; else a key is seen only by queries less than this many positions ahead
	RoPE                  RoPE
	BOSTokenIDs           []int
	EOSTokenIDs           []int
}

// RoPE describes rotary position embeddings and their scaling.
type RoPE struct {
	Theta          float64
	Type           string // default, linear, dynamic, llama3
	Factor         float64
	LowFreqFactor  float64 // llama3
	HighFreqFactor float64 // llama3
	// OriginalMaxPositionEmbeddings is the pre-scaling context (llama3, dynamic); 0 = MaxPositionEmbeddings.
	OriginalMaxPositionEmbeddings int
}

// NewConfig builds and validates a Config from a parsed Hugging Face config.json.
func NewConfig(hf *weights.Config) (*Config, error) {
	if hf == nil {
		return nil, errors.New("llama: nil config")
	}
	mt := strings.ToLower(hf.ModelType)
	if !slices.Contains(SupportedModelTypes, mt) {
		return nil, fmt.Errorf("llama: %w: model_type %q (supported: %s)", ErrUnsupported, hf.ModelType,
			strings.Join(SupportedModelTypes, ", "))
	}
	c := &Config{
		ModelType:             mt,
		HiddenSize:            hf.HiddenSize,
		IntermediateSize:      hf.IntermediateSize,
		NumHiddenLayers:       hf.NumHiddenLayers,
		NumAttentionHeads:     hf.NumAttentionHeads,
		NumKeyValueHeads:      hf.NumKeyValueHeads,
		HeadDim:               hf.HeadDim,
		VocabSize:             hf.VocabSize,
		MaxPositionEmbeddings: hf.MaxPositionEmbeddings,
		RMSNormEps:            hf.RMSNormEps,
		TieWordEmbeddings:     hf.TieWordEmbeddings,
		AttentionBias:         hf.AttentionBias,
		AttentionOutBias:      hf.AttentionBias,
		MLPBias:               hf.MLPBias,
		BOSTokenIDs:           hf.BOSTokenIDs,
		EOSTokenIDs:           hf.EOSTokenIDs,
		RoPE: RoPE{
			Theta:                         hf.RoPE.Theta,
			Type:                          strings.ToLower(hf.RoPE.Type),
			Factor:                        hf.RoPE.Factor,
			LowFreqFactor:                 hf.RoPE.LowFreqFactor,
			HighFreqFactor:                hf.RoPE.HighFreqFactor,
			OriginalMaxPositionEmbeddings: hf.RoPE.OriginalMaxPositionEmbeddings,
		},
	}
	switch mt {
	case "qwen2":
		// Qwen2Attention: q/k/v projections always carry a bias, o_proj never does.
		c.AttentionBias, c.AttentionOutBias = true, false
		if useSW := hf.Raw["use_sliding_window"]; len(useSW) > 0 && string(useSW) == "true" {
			return nil, fmt.Errorf("llama: %w: qwen2 with use_sliding_window=true", ErrUnsupported)
		}
	case "mistral":
		c.SlidingWindow = hf.SlidingWindow
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.RoPE.Theta == 0 {
		c.RoPE.Theta = 10000
	}
	if c.RoPE.Type == "" {
		c.RoPE.Type = "default"
	}
	if c.RoPE.OriginalMaxPositionEmbeddings == 0 {
		c.RoPE.OriginalMaxPositionEmbeddings = c.MaxPositionEmbeddings
	}
	if act := strings.ToLower(hf.HiddenAct); act != "" && act != "silu" && act != "swish" {
		return nil, fmt.Errorf("llama: %w: hidden_act %q (only silu)", ErrUnsupported, hf.HiddenAct)
	}
	return c, c.Validate()
}

// Validate checks that the dimensions are positive and consistent.
func (c *Config) Validate() error {
	pos := []struct {
		name string
		v    int
	}{
		{"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize},
		{"num_hidden_layers", c.NumHiddenLayers}, {"num_attention_heads", c.NumAttentionHeads},
		{"num_key_value_heads", c.NumKeyValueHeads}, {"head_dim", c.HeadDim}, {"vocab_size", c.VocabSize},
		{"max_position_embeddings", c.MaxPositionEmbeddings},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("llama: config: %s must be positive, got %d", p.name, p.v)
		}
	}
	if c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		return fmt.Errorf("llama: config: num_attention_heads %d is not a multiple of num_key_value_heads %d",
			c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("llama: config: head_dim %d must be even for RoPE", c.HeadDim)
	}
	if c.RMSNormEps < 0 || math.IsNaN(c.RMSNormEps) {
		return fmt.Errorf("llama: config: rms_norm_eps %g is invalid", c.RMSNormEps)
	}
	if c.RoPE.Theta <= 0 {
		return fmt.Errorf("llama: config: rope_theta %g must be positive", c.RoPE.Theta)
	}
	switch c.RoPE.Type {
	case "default":
	case "linear", "dynamic":
		if c.RoPE.Factor <= 0 {
			return fmt.Errorf("llama: config: rope scaling %q needs a positive factor, got %g", c.RoPE.Type, c.RoPE.Factor)
		}
	case "llama3":
		r := c.RoPE
		if r.Factor <= 0 || r.LowFreqFactor <= 0 || r.HighFreqFactor <= r.LowFreqFactor || r.OriginalMaxPositionEmbeddings <= 0 {
			return fmt.Errorf("llama: config: rope scaling llama3 needs factor > 0, 0 < low_freq_factor < high_freq_factor "+
				"and original_max_position_embeddings > 0; got factor %g, low %g, high %g, original %d",
				r.Factor, r.LowFreqFactor, r.HighFreqFactor, r.OriginalMaxPositionEmbeddings)
		}
	default:
		return fmt.Errorf("llama: %w: rope scaling type %q (supported: default, linear, dynamic, llama3)",
			ErrUnsupported, c.RoPE.Type)
	}
	if c.SlidingWindow < 0 {
		return fmt.Errorf("llama: config: sliding_window %d is negative", c.SlidingWindow)
	}
	return nil
}

// GroupSize is the number of query heads that share one KV head.
func (c *Config) GroupSize() int { return c.NumAttentionHeads / c.NumKeyValueHeads }

// NumParams is the number of weights of the model (tied embeddings counted once).
func (c *Config) NumParams() int64 {
	h, i, hd := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.HeadDim)
	q, kv := int64(c.NumAttentionHeads)*hd, int64(c.NumKeyValueHeads)*hd
	layer := h*q + 2*h*kv + q*h + 3*h*i + 2*h
	if c.AttentionBias {
		layer += q + 2*kv
	}
	if c.AttentionOutBias {
		layer += h
	}
	if c.MLPBias {
		layer += 2*i + h
	}
	n := int64(c.NumHiddenLayers)*layer + int64(c.VocabSize)*h + h
	if !c.TieWordEmbeddings {
		n += int64(c.VocabSize) * h
	}
	return n
}

// InvFreq returns the RoPE inverse frequencies [headDim/2] for a forward pass whose largest position is
// maxPos (only the "dynamic" type depends on it), following transformers' rope initialisation functions
// (float32 arithmetic, as there).
func (c *Config) InvFreq(maxPos int) []float32 {
	d := c.HeadDim
	base := c.RoPE.Theta
	r := c.RoPE
	if r.Type == "dynamic" {
		// transformers' dynamic NTK: the base grows once the sequence exceeds the original context.
		seqLen := float64(maxPos + 1)
		orig := float64(r.OriginalMaxPositionEmbeddings)
		if seqLen > orig {
			base = base * math.Pow(r.Factor*seqLen/orig-(r.Factor-1), float64(d)/float64(d-2))
		}
	}
	inv := make([]float32, d/2)
	for i := range inv {
		exp := float32(2*i) / float32(d)
		inv[i] = float32(1.0 / float32(math.Pow(base, float64(exp))))
	}
	switch r.Type {
	case "linear":
		for i := range inv {
			inv[i] = inv[i] / float32(r.Factor)
		}
	case "llama3":
		orig := float64(r.OriginalMaxPositionEmbeddings)
		lowWavelen := orig / r.LowFreqFactor
		highWavelen := orig / r.HighFreqFactor
		for i, f := range inv {
			wavelen := 2 * math.Pi / float64(f)
			switch {
			case wavelen < highWavelen:
				// High frequency: unchanged.
			case wavelen > lowWavelen:
				inv[i] = f / float32(r.Factor)
			default:
				smooth := (orig/wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
				inv[i] = float32((1-smooth)*float64(f)/r.Factor + smooth*float64(f))
			}
		}
	}
	return inv
}
