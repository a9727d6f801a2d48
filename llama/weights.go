package llama

import (
	"fmt"
	"math"
	"strings"
	"sync"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/dtypes/bfloat16"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/graph"
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

// Weights are the model's tensors in Config.WeightNames order, in the compute dtype (NewRunner repacks
// them into its steps' layout).
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

// RandomWeightsOn builds random weights of the config's shapes directly on the backend's device (for
// benchmarks of real shapes without a checkpoint: a 7B model's weights are generated in well under a
// second instead of minutes on the host). Values are a hash of (seed, tensor, element) mapped to a
// uniform distribution with standard deviation 0.02 (the usual initializer's scale); norm weights are 1,
// biases 0. Not the same values as RandomWeights.
func RandomWeightsOn(backend compute.Backend, c *Config, dtype dtypes.DType, seed uint64) (w *Weights, err error) {
	if dtype != dtypes.Float32 && dtype != dtypes.BFloat16 {
		return nil, fmt.Errorf("llama: unsupported compute dtype %s", dtype)
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("llama: random weights on %s: %v", backend.Name(), r)
		}
	}()
	names, dims := c.WeightNames()
	w = &Weights{DType: dtype, Tensors: make([]*tensors.Tensor, len(names))}
	execs := map[string]*graph.Exec{}
	a := 0.02 * math.Sqrt(3) // U(-a, a) has standard deviation 0.02
	for i, name := range names {
		kind := "random"
		switch {
		case strings.HasSuffix(name, "norm.weight"):
			kind = "ones"
		case strings.HasSuffix(name, ".bias"):
			kind = "zeros"
		}
		key := fmt.Sprint(kind, dims[i])
		e, ok := execs[key]
		if !ok {
			shape := shapes.Make(dtypes.Uint32, dims[i]...)
			e, err = graph.NewExec(backend, func(salt *graph.Node) *graph.Node {
				g := salt.Graph()
				switch kind {
				case "ones":
					return graph.Ones(g, shapes.Make(dtype, dims[i]...))
				case "zeros":
					return graph.Zeros(g, shapes.Make(dtype, dims[i]...))
				}
				// Index of each element, then a 32-bit integer hash (murmur3's finaliser) of index·φ + salt.
				idx := graph.Iota(g, shapes.Make(dtypes.Uint32, shape.Size()), 0)
				x := graph.Add(graph.Mul(idx, graph.Scalar(g, dtypes.Uint32, 0x9E3779B1)), salt)
				mix := func(x *graph.Node, shift int, mul uint32) *graph.Node {
					x = graph.BitwiseXor(x, graph.BitwiseShiftRightLogical(x, graph.Scalar(g, dtypes.Uint32, shift)))
					if mul != 0 {
						x = graph.Mul(x, graph.Scalar(g, dtypes.Uint32, mul))
					}
					return x
				}
				x = mix(mix(mix(x, 16, 0x85EBCA6B), 13, 0xC2B2AE35), 16, 0)
				// Top 24 bits → [0, 1) → [-a, a).
				u := graph.MulScalar(graph.ConvertDType(graph.BitwiseShiftRightLogical(x, graph.Scalar(g, dtypes.Uint32, 8)), dtypes.Float32), 1.0/(1<<24))
				v := graph.MulScalar(graph.AddScalar(graph.MulScalar(u, 2), -1), a)
				return graph.Reshape(graph.ConvertDType(v, dtype), dims[i]...)
			})
			if err != nil {
				return nil, err
			}
			execs[key] = e
		}
		salt := uint32(seed*0x9E3779B97F4A7C15>>32) ^ uint32(i)*0x27D4EB2F
		out, err := e.Call(salt)
		if err != nil {
			return nil, fmt.Errorf("llama: random %s: %w", name, err)
		}
		w.Tensors[i] = out[0]
	}
	return w, nil
}
