package llama

// The projection benchmark of issue 7: how fast XLA runs the weight products of a step — the part of a
// decode step that reads every weight once — in the layouts the engine could use. Every variant chains a
// whole model's layers (norm → q/k/v → o → residual → norm → gate/up → SwiGLU → down → residual; no
// attention: the keys and values only feed a scalar that reaches the next layer) in one executable over
// the weights of a real shape (random values made on the device), so the time divided into the weight
// bytes is the bandwidth the products reach. Variants:
//
//   - split:  q, k, v, gate, up as separate products over Hugging Face's [out, in] matrices (the engine
//     until now);
//   - fused:  q|k|v and gate|up concatenated along out, one product each (fewer, larger kernels);
//   - inout:  the split products over [in, out] (transposed) matrices.
//
// It runs only when asked (on the GPU machine after sourcing scripts/gpu/xla-env.sh):
//
//	bin/llama.test -test.run '^TestProjectionBench$' -test.v -projbench gpu [-projbench.rows 1,80]
//
// -projbench tiny runs the bundled model's shape on the CPU (a smoke test of the graphs).

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/weights"
)

var (
	pbMode     = flag.String("projbench", "", `run TestProjectionBench: "gpu" (LLaMA-2-7B and LLaMA-3-8B shapes) or "tiny" (the bundled model on the CPU); empty: skip`)
	pbRows     = flag.String("projbench.rows", "1,80", "comma list of step rows (1: a decode step; 80: a 65-token user input's bucket)")
	pbReps     = flag.Int("projbench.reps", 10, "timed calls of each executable (the median is reported)")
	pbConfigs  = flag.String("projbench.configs", "../scripts/gpu/configs/llama-2-7b,../scripts/gpu/configs/llama-3-8b", "config.json directories of the gpu shapes")
	pbVariants = flag.String("projbench.variants", "split,fused,inout", "comma list of variants")
)

// pbLayer is one layer's matrices as a variant's graph takes them.
type pbLayer struct {
	inNorm, postNorm *tensors.Tensor
	mats             []*tensors.Tensor
}

// prepareLayers turns the engine's weights into a variant's layout on the device: split keeps q, k, v,
// o, gate, up, down; fused concatenates q|k|v and gate|up; inout transposes every matrix.
func prepareLayers(t *testing.T, be compute.Backend, w *Weights, c *Config, variant string) []pbLayer {
	t.Helper()
	nGlobal := len(globalWeightSpecs(c))
	nLayer := len(layerWeightSpecs(c))
	var layers []pbLayer
	for l := range c.NumHiddenLayers {
		lw := w.Tensors[nGlobal+l*nLayer : nGlobal+(l+1)*nLayer] // inNorm, q, k, v, o, postNorm, gate, up, down
		layer := pbLayer{inNorm: lw[0], postNorm: lw[5]}
		mats := []*tensors.Tensor{lw[1], lw[2], lw[3], lw[4], lw[6], lw[7], lw[8]}
		switch variant {
		case "split":
			layer.mats = mats
		case "fused", "inout":
			e, err := graph.NewExec(be, func(in []*Node) []*Node {
				if variant == "fused" {
					return []*Node{Concatenate(in[:3], 0), in[3], Concatenate(in[4:6], 0), in[6]}
				}
				var out []*Node
				for _, m := range in {
					out = append(out, Transpose(m, 0, 1))
				}
				return out
			})
			if err != nil {
				t.Fatal(err)
			}
			args := make([]any, len(mats))
			for i, m := range mats {
				args[i] = m
			}
			if layer.mats, err = e.Call(args...); err != nil {
				t.Fatal(err)
			}
			e.Finalize()
		default:
			t.Fatalf("unknown variant %q", variant)
		}
		layers = append(layers, layer)
	}
	return layers
}

// projChain is the variant's chain of layers over x [rows, hidden].
func projChain(c *Config, variant string, x *Node, layers [][]*Node) *Node {
	q, kv := c.NumAttentionHeads*c.HeadDim, c.NumKeyValueHeads*c.HeadDim
	lin := func(x, w *Node) *Node {
		if variant == "inout" {
			return einsum("ni,io->no", x, w)
		}
		return einsum("ni,oi->no", x, w)
	}
	mix := func(q, k, v *Node) *Node { // the keys and values reach the output through a scalar
		s := Add(ReduceAllSum(ConvertDType(k, dtypes.Float32)), ReduceAllSum(ConvertDType(v, dtypes.Float32)))
		return Add(q, ConvertDType(MulScalar(s, 1e-6), q.DType()))
	}
	for _, w := range layers { // inNorm, postNorm, then the matrices
		h := rmsNorm(x, w[0], 1e-5)
		var attn, gate, up *Node
		if variant == "fused" {
			qkv := lin(h, w[2])
			attn = mix(Slice(qkv, AxisRange(), AxisRange(0, q)), Slice(qkv, AxisRange(), AxisRange(q, q+kv)),
				Slice(qkv, AxisRange(), AxisRange(q+kv, q+2*kv)))
			x = Add(x, lin(attn, w[3]))
			gu := lin(rmsNorm(x, w[1], 1e-5), w[4])
			i := gu.Shape().Dimensions[1] / 2
			gate, up = Slice(gu, AxisRange(), AxisRange(0, i)), Slice(gu, AxisRange(), AxisRange(i, 2*i))
			x = Add(x, lin(Mul(silu(gate), up), w[5]))
			continue
		}
		attn = mix(lin(h, w[2]), lin(h, w[3]), lin(h, w[4]))
		x = Add(x, lin(attn, w[5]))
		h = rmsNorm(x, w[1], 1e-5)
		gate, up = lin(h, w[6]), lin(h, w[7])
		x = Add(x, lin(Mul(silu(gate), up), w[8]))
	}
	return x
}

func TestProjectionBench(t *testing.T) {
	if *pbMode == "" {
		t.Skip("run with -projbench gpu (or tiny)")
	}
	tiny := *pbMode == "tiny"
	kind := xla.XLA
	dirs := strings.Split(*pbConfigs, ",")
	if tiny {
		kind, dirs = xla.Go, []string{"../models/tinycode-llama-16m"}
	}
	be, err := xla.New(xla.Options{Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("backend: %s\n", be.Describe())
	rows, err := abIntList(*pbRows)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		hf, err := weights.ReadConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewConfig(hf)
		if err != nil {
			t.Fatal(err)
		}
		dtype := dtypes.BFloat16
		if tiny {
			dtype = dtypes.Float32
		}
		w, err := RandomWeightsOn(be.Backend, c, dtype, 1)
		if err != nil {
			t.Fatal(err)
		}
		var matBytes float64
		for i, s := range layerWeightSpecs(c) {
			if i != 0 && i != 5 && len(s.shape) == 2 {
				matBytes += float64(s.shape[0] * s.shape[1] * dtype.Size())
			}
		}
		matBytes *= float64(c.NumHiddenLayers)
		fmt.Printf("\n%s: %d layers, %.2f GB of projection weights (%s)\n", dir, c.NumHiddenLayers, matBytes/1e9, dtype)
		var checks []float32
		for _, variant := range strings.Split(*pbVariants, ",") {
			layers := prepareLayers(t, be.Backend, w, c, variant)
			var args []any
			for _, l := range layers {
				args = append(args, l.inNorm, l.postNorm)
				for _, m := range l.mats {
					args = append(args, m)
				}
			}
			per := 2 + len(layers[0].mats)
			for _, n := range rows {
				e, err := graph.NewExec(be.Backend, func(in []*Node) []*Node {
					x0 := Slice(in[0], AxisRange(0, n)) // the first embedding rows
					var ls [][]*Node
					for l := range layers {
						ls = append(ls, in[1+l*per:1+(l+1)*per])
					}
					out := projChain(c, variant, x0, ls)
					return []*Node{ConvertDType(ReduceSum(out, 1), dtypes.Float32)}
				})
				if err != nil {
					t.Fatal(err)
				}
				call := append([]any{w.Tensors[0]}, args...)
				var times []time.Duration
				var check float32
				start := time.Now()
				for rep := range *pbReps + 1 {
					t0 := time.Now()
					out, err := e.Call(call...)
					if err != nil {
						t.Fatalf("%s rows %d: %v", variant, n, err)
					}
					v, err := tensors.CopyFlatData[float32](out[0]) // waits for the device
					if err != nil {
						t.Fatal(err)
					}
					check = v[0]
					out[0].FinalizeAll()
					if rep > 0 {
						times = append(times, time.Since(t0))
					} else {
						fmt.Printf("  compile+first call %.1fs\n", time.Since(start).Seconds())
					}
				}
				e.Finalize()
				slices.Sort(times)
				med := times[len(times)/2]
				fmt.Printf("  %-6s rows %3d: %8.3f ms (best %.3f)  %6.2f TB/s of weights  row0 sum %.4g\n", variant, n,
					ms(med), ms(times[0]), matBytes/med.Seconds()/1e12, check)
				if n == rows[0] {
					checks = append(checks, check)
				}
			}
			if variant != "split" {
				for _, l := range layers {
					for _, m := range l.mats {
						m.FinalizeAll()
					}
				}
			}
		}
		// Every layout computes the same products: the chains agree (bf16 rounding apart).
		for i, v := range checks[1:] {
			if d := v - checks[0]; d*d > 1e-2*(checks[0]*checks[0]+1) {
				t.Errorf("variant %d: row sum %g, split %g", i+1, v, checks[0])
			}
		}
		for _, x := range w.Tensors {
			x.FinalizeAll()
		}
	}
}
