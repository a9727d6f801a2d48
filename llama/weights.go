package llama

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/dtypes/bfloat16"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/tensors"
	"github.com/squeezeai/sqllm/weights"
)

// The one table that maps Hugging Face tensor names to this package's weights. Shapes are in HF's
// [out, in] layout for projections.
type weightSpec struct {
	name  string // HF name; %d is the layer index
	shape []int
}

// layerWeightSpecs lists the weights of one decoder layer, in the order the graph receives them.
func layerWeightSpecs(c *Config) []weightSpec {
	h, i := c.HiddenSize, c.IntermediateSize
	q, kv := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	specs := []weightSpec{
		{"model.layers.%d.input_layernorm.weight", []int{h}},
		{"model.layers.%d.self_attn.q_proj.weight", []int{q, h}},
		{"model.layers.%d.self_attn.k_proj.weight", []int{kv, h}},
		{"model.layers.%d.self_attn.v_proj.weight", []int{kv, h}},
		{"model.layers.%d.self_attn.o_proj.weight", []int{h, q}},
		{"model.layers.%d.post_attention_layernorm.weight", []int{h}},
		{"model.layers.%d.mlp.gate_proj.weight", []int{i, h}},
		{"model.layers.%d.mlp.up_proj.weight", []int{i, h}},
		{"model.layers.%d.mlp.down_proj.weight", []int{h, i}},
	}
	if c.AttentionBias {
		specs = append(specs,
			weightSpec{"model.layers.%d.self_attn.q_proj.bias", []int{q}},
			weightSpec{"model.layers.%d.self_attn.k_proj.bias", []int{kv}},
			weightSpec{"model.layers.%d.self_attn.v_proj.bias", []int{kv}})
	}
	if c.AttentionOutBias {
		specs = append(specs, weightSpec{"model.layers.%d.self_attn.o_proj.bias", []int{h}})
	}
	if c.MLPBias {
		specs = append(specs,
			weightSpec{"model.layers.%d.mlp.gate_proj.bias", []int{i}},
			weightSpec{"model.layers.%d.mlp.up_proj.bias", []int{i}},
			weightSpec{"model.layers.%d.mlp.down_proj.bias", []int{h}})
	}
	return specs
}

// globalWeightSpecs lists the weights outside the layers: embeddings, final norm, lm_head.
func globalWeightSpecs(c *Config) []weightSpec {
	specs := []weightSpec{
		{"model.embed_tokens.weight", []int{c.VocabSize, c.HiddenSize}},
		{"model.norm.weight", []int{c.HiddenSize}},
	}
	if !c.TieWordEmbeddings {
		specs = append(specs, weightSpec{"lm_head.weight", []int{c.VocabSize, c.HiddenSize}})
	}
	return specs
}

// WeightNames returns every tensor name (and shape) the model expects, in graph-input order:
// global weights first, then the layers.
func (c *Config) WeightNames() ([]string, [][]int) {
	var names []string
	var dims [][]int
	for _, s := range globalWeightSpecs(c) {
		names = append(names, s.name)
		dims = append(dims, s.shape)
	}
	for l := range c.NumHiddenLayers {
		for _, s := range layerWeightSpecs(c) {
			names = append(names, fmt.Sprintf(s.name, l))
			dims = append(dims, s.shape)
		}
	}
	return names, dims
}

// ignoredTensor reports checkpoint tensors that are legitimately present but unused.
func (c *Config) ignoredTensor(name string) bool {
	if strings.HasSuffix(name, "rotary_emb.inv_freq") {
		return true
	}
	// Some tied checkpoints still store lm_head.weight; it equals the embeddings.
	return c.TieWordEmbeddings && name == "lm_head.weight"
}

// Weights are the model's tensors in graph-input order, in the compute dtype.
type Weights struct {
	DType   dtypes.DType
	Tensors []*tensors.Tensor
}

// LoadWeights reads every expected tensor from the checkpoint, checking names and shapes strictly, and
// converts it to dtype (Float32 or BFloat16).
func LoadWeights(c *Config, ckpt *weights.Checkpoint, dtype dtypes.DType) (*Weights, error) {
	names, dims := c.WeightNames()
	expected := make(map[string][]int, len(names))
	for i, n := range names {
		expected[n] = dims[i]
	}
	if err := ckpt.CheckShapes(expected, c.ignoredTensor); err != nil {
		return nil, err
	}
	w := &Weights{DType: dtype, Tensors: make([]*tensors.Tensor, len(names))}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			w.Tensors[i], errs[i] = loadTensor(ckpt, name, dims[i], dtype)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return w, nil
}

func loadTensor(ckpt *weights.Checkpoint, name string, dims []int, dtype dtypes.DType) (*tensors.Tensor, error) {
	switch dtype {
	case dtypes.Float32:
		v, err := ckpt.Float32(name)
		if err != nil {
			return nil, err
		}
		return tensors.FromFlatDataAndDimensions(v, dims...), nil
	case dtypes.BFloat16:
		bits, err := ckpt.BFloat16(name)
		if err != nil {
			return nil, err
		}
		t := tensors.FromShape(shapes.Make(dtypes.BFloat16, dims...))
		copyBF16Bits(t, bits)
		return t, nil
	default:
		return nil, fmt.Errorf("llama: unsupported compute dtype %s", dtype)
	}
}

// RandomWeights makes weights of the right shapes without a checkpoint (for benchmarking real shapes):
// projections ~ N(0, 0.02²) as transformers initialises them, norms at 1.
func RandomWeights(c *Config, dtype dtypes.DType, seed uint64) (*Weights, error) {
	names, dims := c.WeightNames()
	w := &Weights{DType: dtype, Tensors: make([]*tensors.Tensor, len(names))}
	for i, name := range names {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		n := 1
		for _, d := range dims[i] {
			n *= d
		}
		v := make([]float32, n)
		switch {
		case strings.HasSuffix(name, "norm.weight"):
			for j := range v {
				v[j] = 1
			}
		case strings.HasSuffix(name, ".bias"):
		default:
			for j := range v {
				v[j] = float32(rng.NormFloat64() * 0.02)
			}
		}
		switch dtype {
		case dtypes.Float32:
			w.Tensors[i] = tensors.FromFlatDataAndDimensions(v, dims[i]...)
		case dtypes.BFloat16:
			bits := make([]uint16, n)
			for j, f := range v {
				bits[j] = bf16Bits(f)
			}
			t := tensors.FromShape(shapes.Make(dtypes.BFloat16, dims[i]...))
			copyBF16Bits(t, bits)
			w.Tensors[i] = t
		default:
			return nil, fmt.Errorf("llama: unsupported compute dtype %s", dtype)
		}
	}
	return w, nil
}

// bf16Bits rounds a float32 to bfloat16 (nearest even), keeping NaN a NaN.
func bf16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// copyBF16Bits copies bfloat16 bit patterns into a BFloat16 tensor.
func copyBF16Bits(t *tensors.Tensor, bits []uint16) {
	t.MustMutableFlatData(func(flat any) {
		dst := flat.([]bfloat16.BFloat16)
		for i, b := range bits {
			dst[i] = bfloat16.BFloat16(b)
		}
	})
}
