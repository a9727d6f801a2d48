package llama

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/model"
)

// TestSegmentsMatchOneShot feeds a prompt in many different ways (small prefill chunks, one token at a
// time through the dynamic segment with folds and growth, multi-token dynamic chunks) and checks that
// every position's logits equal those of a single prefill.
func TestSegmentsMatchOneShot(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[1].IDs // 42 tokens
	ref := testRunner(t, dtypes.Float32, Options{})
	seq := ref.NewSequence()
	want, err := seq.AppendAllLogits(context.Background(), ids)
	seq.Close()
	if err != nil {
		t.Fatal(err)
	}

	small := testRunner(t, dtypes.Float32, Options{MaxChunk: 8, DynBlock: 4, CtxGranule: 16})
	splits := map[string][]int{
		"prefill-chunks-then-singles": {11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
		"singles":                     ones(len(ids)),
		"big-dyn-chunk":               {3, 20, 19},
	}
	for name, split := range splits {
		t.Run(name, func(t *testing.T) {
			s := small.NewSequence()
			defer s.Close()
			pos := 0
			for _, n := range split {
				if pos+n > len(ids) {
					n = len(ids) - pos
				}
				got, err := s.AppendAllLogits(context.Background(), ids[pos:pos+n])
				if err != nil {
					t.Fatal(err)
				}
				for i, row := range got {
					if d := maxDiff(row, want[pos+i]); d > 1e-4*maxAbs(want[pos+i]) {
						t.Fatalf("position %d: logits differ by %.2e", pos+i, d)
					}
				}
				pos += n
				if s.Len() != pos {
					t.Fatalf("Len() = %d, want %d", s.Len(), pos)
				}
			}
		})
	}
}

func ones(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

func maxDiff(a, b []float32) float64 {
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// TestBFloat16 checks bf16 compute against transformers' float32 reference: logits within a few percent
// and the same top-1 token almost everywhere.
func TestBFloat16(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	r := testRunner(t, dtypes.BFloat16, Options{})
	gc := cases[1]
	seq := r.NewSequence()
	defer seq.Close()
	all, err := seq.AppendAllLogits(context.Background(), gc.IDs)
	if err != nil {
		t.Fatal(err)
	}
	rel := maxDiff(all[len(all)-1], gc.LastLogits) / maxAbs(gc.LastLogits)
	agree := 0
	for p := range gc.IDs {
		if argmax(all[p]) == gc.Top5IDs[p][0] {
			agree++
		}
	}
	t.Logf("bf16: last-position relative error %.2e; top-1 agrees at %d/%d positions", rel, agree, len(gc.IDs))
	if rel > 5e-2 {
		t.Errorf("bf16 last logits relative error %.2e > 5e-2", rel)
	}
	if agree < len(gc.IDs)*9/10 {
		t.Errorf("bf16 top-1 agrees at only %d/%d positions", agree, len(gc.IDs))
	}
}

func TestAppendErrors(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{MaxLen: 16})
	s := r.NewSequence()
	defer s.Close()
	if _, err := s.Append(context.Background(), make([]int, 17)); !errors.Is(err, model.ErrContextTooLong) {
		t.Errorf("17 tokens into a 16-token context: got %v, want ErrContextTooLong", err)
	}
	if _, err := s.Append(context.Background(), []int{1 << 20}); err == nil {
		t.Error("token id beyond the vocabulary: no error")
	}
	if _, err := s.Append(context.Background(), nil); err == nil {
		t.Error("no tokens: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, []int{1, 2}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v", err)
	}
	if s.Len() != 0 {
		t.Errorf("failed appends changed the sequence: Len() = %d", s.Len())
	}
	// The sequence is still usable.
	if _, err := s.Append(context.Background(), []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Append(context.Background(), []int{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("closed sequence: got %v", err)
	}
}

// TestPackWeights: the runner's packed layout is q|k|v and gate|up concatenated along the output axis
// (their biases too), the projection matrices transposed on backends that take [in, out], every other
// tensor unchanged, and unpackWeights names each packed input as such —
// checked on a config with every optional bias and an untied LM head, where each weight element holds a
// distinct value.
func TestPackWeights(t *testing.T) {
	cfg := &Config{ModelType: "llama", HiddenSize: 8, IntermediateSize: 12, NumHiddenLayers: 2, NumAttentionHeads: 2,
		NumKeyValueHeads: 1, HeadDim: 4, VocabSize: 16, MaxPositionEmbeddings: 32, RMSNormEps: 1e-5,
		AttentionBias: true, AttentionOutBias: true, MLPBias: true}
	names, dims := cfg.WeightNames()
	w := &Weights{DType: dtypes.Float32}
	values := map[string][]float32{}
	for i, name := range names {
		n := 1
		for _, d := range dims[i] {
			n *= d
		}
		v := make([]float32, n)
		for j := range v {
			v[j] = float32(i*1000 + j)
		}
		values[name] = v
		w.Tensors = append(w.Tensors, tensors.FromFlatDataAndDimensions(slices.Clone(v), dims[i]...))
	}
	b := goBackend(t)
	for _, x := range w.Tensors {
		if err := x.MaterializeOnDevice(b, false, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := packWeights(b, cfg, w); err != nil {
		t.Fatal(err)
	}
	e, err := graph.NewExec(b, func(in []*graph.Node) []*graph.Node {
		m := unpackWeights(cfg, in)
		out := []*graph.Node{m.embed, m.norm, m.lmHead}
		for _, l := range m.layers {
			out = append(out, l.inNorm, l.qkv, l.o, l.postNorm, l.gateUp, l.down, l.qkvBias, l.oBias, l.gateUpBias, l.downBias)
		}
		return out
	})
	if err != nil {
		t.Fatal(err)
	}
	args := make([]any, len(w.Tensors))
	for i, x := range w.Tensors {
		args[i] = x
	}
	out, err := e.Call(args...)
	if err != nil {
		t.Fatal(err)
	}
	cat := func(names ...string) []float32 {
		var v []float32
		for _, n := range names {
			v = append(v, values[n]...)
		}
		return v
	}
	// mat is a projection matrix as the backend's steps take it: [out, in], or [in, out] where
	// transposedProjections says so.
	mat := func(v []float32, in int) []float32 {
		if !transposedProjections(b) {
			return v
		}
		out := len(v) / in
		t := make([]float32, len(v))
		for i := range out {
			for j := range in {
				t[j*out+i] = v[i*in+j]
			}
		}
		return t
	}
	h, q := cfg.HiddenSize, cfg.NumAttentionHeads*cfg.HeadDim
	want := [][]float32{values["model.embed_tokens.weight"], values["model.norm.weight"], values["lm_head.weight"]}
	for l := range cfg.NumHiddenLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		want = append(want, values[p+"input_layernorm.weight"],
			mat(cat(p+"self_attn.q_proj.weight", p+"self_attn.k_proj.weight", p+"self_attn.v_proj.weight"), h),
			mat(values[p+"self_attn.o_proj.weight"], q), values[p+"post_attention_layernorm.weight"],
			mat(cat(p+"mlp.gate_proj.weight", p+"mlp.up_proj.weight"), h), mat(values[p+"mlp.down_proj.weight"], cfg.IntermediateSize),
			cat(p+"self_attn.q_proj.bias", p+"self_attn.k_proj.bias", p+"self_attn.v_proj.bias"),
			values[p+"self_attn.o_proj.bias"], cat(p+"mlp.gate_proj.bias", p+"mlp.up_proj.bias"), values[p+"mlp.down_proj.bias"])
	}
	if len(out) != len(want) {
		t.Fatalf("%d outputs, want %d", len(out), len(want))
	}
	for i, o := range out {
		got, err := tensors.CopyFlatData[float32](o)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want[i]) {
			t.Errorf("output %d (%v): got %v..., want %v...", i, o.Shape(), got[:min(4, len(got))], want[i][:min(4, len(want[i]))])
		}
	}
	// The packed q|k|v matrix is [q+2·kv, hidden], gate|up [2·intermediate, hidden] (transposed where the
	// backend takes [in, out]).
	qkvDims, guDims := []int{16, 8}, []int{24, 8}
	if transposedProjections(b) {
		qkvDims, guDims = []int{8, 16}, []int{8, 24}
	}
	if got := out[3+1].Shape().Dimensions; !slices.Equal(got, qkvDims) {
		t.Errorf("q|k|v shape %v, want %v", got, qkvDims)
	}
	if got := out[3+4].Shape().Dimensions; !slices.Equal(got, guDims) {
		t.Errorf("gate|up shape %v, want %v", got, guDims)
	}
}

// TestGraphNames: step executables of at most graphRows rows are named for command buffers (backend/xla
// compiles only computations named with "cudagraph" with them), larger ones are not, squeezed ones too.
func TestGraphNames(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	for kind, e := range r.steps {
		if got := strings.Contains(e.Name(), "cudagraph"); got == kind.large {
			t.Errorf("%+v: executable %q (large=%v)", kind, e.Name(), kind.large)
		}
	}
	for _, large := range []bool{false, true} {
		idx := &squeezeIndex{maxKept: 128}
		e, err := r.stepExecSqueezed(idx, false, false, large, !large)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(e.Name(), "cudagraph"); got == large {
			t.Errorf("squeezed step, large=%v: executable %q", large, e.Name())
		}
	}
}

// TestKVWriteFailure: writeKV writes one layer's keys or values at a time and frees the old buffers as it
// goes. A write that fails before anything was freed leaves the sequence as it was after its last
// complete step, usable; one that fails after closes the sequence, and every later call says why.
func TestKVWriteFailure(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[1].IDs
	r := testRunner(t, dtypes.Float32, Options{MaxChunk: 8, DynBlock: 4, CtxGranule: 16})
	ref := r.NewSequence()
	want, err := ref.AppendAllLogits(context.Background(), ids)
	ref.Close()
	if err != nil {
		t.Fatal(err)
	}
	L := r.Config().NumHiddenLayers
	// failAt makes the n-th buffer write from now on (0-based, counted across writeKV calls) fail.
	failAt := func(n int) {
		calls := 0
		writeKVFault = func(int) error {
			calls++
			if calls == n+1 {
				return errors.New("injected fault")
			}
			return nil
		}
	}
	defer func() { writeKVFault = func(int) error { return nil } }()

	// 20 tokens prefill as chunks of 4, 8, 8: the second chunk's first write (2L writes later) fails.
	s := r.NewSequence()
	defer s.Close()
	failAt(2 * L)
	if _, err := s.AppendAllLogits(context.Background(), ids[:20]); err == nil || errors.Is(err, errKVLost) ||
		!strings.Contains(err.Error(), "layer 0's keys") {
		t.Fatalf("fault before any buffer was freed: got %v", err)
	}
	writeKVFault = func(int) error { return nil }
	if s.Len() != 4 {
		t.Fatalf("after the failed chunk Len() = %d, want the first chunk's 4", s.Len())
	}
	got, err := s.AppendAllLogits(context.Background(), ids[4:])
	if err != nil {
		t.Fatalf("the sequence is not usable after a write that freed nothing: %v", err)
	}
	for i, row := range got {
		if d := maxDiff(row, want[4+i]); d > 1e-4*maxAbs(want[4+i]) {
			t.Fatalf("position %d after the failed write: logits differ by %.2e", 4+i, d)
		}
	}

	// A fault at the second chunk's fourth write: three of the old context's buffers are freed already.
	s2 := r.NewSequence()
	failAt(2*L + 3)
	_, err = s2.AppendAllLogits(context.Background(), ids[:20])
	writeKVFault = func(int) error { return nil }
	if !errors.Is(err, errKVLost) || !strings.Contains(err.Error(), "injected fault") {
		t.Fatalf("fault after buffers were freed: got %v, want errKVLost wrapping the fault", err)
	}
	if _, err := s2.Append(context.Background(), ids[:1]); !errors.Is(err, errKVLost) {
		t.Errorf("a sequence whose cache was lost: got %v, want errKVLost", err)
	}
	if err := s2.Close(); err != nil {
		t.Errorf("Close after the loss: %v", err)
	}

	// A sequence over a shared prefix grows its dynamic segment (by DynBlock rows) with writeKV; a fault after a free loses the sequence but not the prefix, which others go on using.
	p, err := r.Prefill(context.Background(), ids[:20])
	if err != nil {
		t.Fatal(err)
	}
	defer p.Free()
	s3 := p.NewSequence()
	if _, err := s3.Append(context.Background(), append(s3.TakePending(), ids[20:24]...)); err != nil {
		t.Fatal(err)
	}
	for pos := 24; ; pos++ { // single tokens until the next one needs a larger dynamic segment
		if s3.dynLen+1 > s3.dyn.capacity() {
			failAt(3)
			_, err = s3.Append(context.Background(), ids[pos:pos+1])
			writeKVFault = func(int) error { return nil }
			break
		}
		if _, err := s3.Append(context.Background(), ids[pos:pos+1]); err != nil {
			t.Fatal(err)
		}
	}
	if !errors.Is(err, errKVLost) {
		t.Fatalf("fault growing the dynamic segment: got %v, want errKVLost", err)
	}
	s3.Close()
	s4 := p.NewSequence()
	defer s4.Close()
	got, err = s4.AppendAllLogits(context.Background(), append(s4.TakePending(), ids[20:26]...))
	if err != nil {
		t.Fatalf("the prefix after a sequence over it was lost: %v", err)
	}
	for i, row := range got {
		if d := maxDiff(row, want[19+i]); d > 1e-4*maxAbs(want[19+i]) {
			t.Fatalf("the prefix after a lost sequence, position %d: logits differ by %.2e", 19+i, d)
		}
	}
}
