package xla

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/go-xla/stablehlo"
	xlashapes "github.com/gomlx/go-xla/types/shapes"
	"github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"
	"github.com/gomlx/gomlx/support/exceptions"
)

// tritonConfig is a Triton-style backend_config: an MLIR dictionary attribute, as jax's Pallas
// lowering emits for "__gpu$xla.gpu.triton" (here with a stand-in kernel IR).
var tritonConfig = `{debug = false, grid_x = 32 : i32, grid_y = 1 : i32, grid_z = 1 : i32, ir = ` +
	stablehlo.QuoteMLIRString("tt.func @k(%arg0: !tt.ptr<f16>) {\n  tt.return\n}") +
	`, name = "k", num_stages = 2 : i32, num_warps = 4 : i32}`

// TestCustomCallRawText: stablehlo.CustomCallRaw (sqllm patch 4 of go-xla) prints an API version 4
// custom call with the dictionary backend_config verbatim, row-major layouts and two results, with
// no PJRT plugin needed.
func TestCustomCallRawText(t *testing.T) {
	b := stablehlo.New("triton_test")
	fn := b.Main()
	q, err := fn.NamedInput("q", xlashapes.Make(dtypes.Float16, 4, 128, 64))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := fn.NamedInput("idx", xlashapes.Make(dtypes.Int32, 4, 16))
	if err != nil {
		t.Fatal(err)
	}
	outs, err := stablehlo.CustomCallRaw("__gpu$xla.gpu.triton", 4, tritonConfig,
		[]*stablehlo.Value{q, idx}, [][]int{nil, nil},
		[]xlashapes.Shape{xlashapes.Make(dtypes.Float16, 4, 64), xlashapes.Make(dtypes.Float32, 4)},
		[][]int{nil, nil})
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) != 2 {
		t.Fatalf("%d outputs, want 2", len(outs))
	}
	if err := fn.Return(outs...); err != nil {
		t.Fatal(err)
	}
	program, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	text := string(program)
	t.Logf("program:\n%s", text)
	want := `    %0, %1 = "stablehlo.custom_call"(%q, %idx) {
      api_version = 4 : i32,
      backend_config = ` + tritonConfig + `,
      call_target_name = "__gpu$xla.gpu.triton",
      operand_layouts = [dense<[2, 1, 0]> : tensor<3xindex>, dense<[1, 0]> : tensor<2xindex>],
      result_layouts = [dense<[1, 0]> : tensor<2xindex>, dense<0> : tensor<1xindex>]
    } : (tensor<4x128x64xf16>, tensor<4x16xi32>) -> (tensor<4x64xf16>, tensor<4xf32>)
`
	if !strings.Contains(text, want) {
		t.Errorf("program lacks the custom call\n%s\nwant it to contain\n%s", text, want)
	}
	// The kernel IR is an MLIR string literal (its newlines escaped as \n).
	if !strings.Contains(text, `ir = "tt.func @k(%arg0: !tt.ptr<f16>) {\n  tt.return\n}"`) {
		t.Errorf("the kernel IR is not escaped as MLIR wants:\n%s", text)
	}
}

// TestCustomCallRawChecks: the backend_config kind must match the API version, and layout counts
// the operand and result counts.
func TestCustomCallRawChecks(t *testing.T) {
	b := stablehlo.New("checks")
	fn := b.Main()
	x, err := fn.NamedInput("x", xlashapes.Make(dtypes.Float32, 8))
	if err != nil {
		t.Fatal(err)
	}
	out := []xlashapes.Shape{xlashapes.Make(dtypes.Float32, 8)}
	for _, tc := range []struct {
		name    string
		api     int
		config  string
		layouts [][]int
		wantErr string
	}{
		{"string config for api 4", 4, `"json"`, nil, "dictionary"},
		{"dictionary config for api 2", 2, `{a = 1 : i32}`, nil, "string"},
		{"api version 5", 5, "", nil, "out of range"},
		{"two layouts for one operand", 4, "", [][]int{nil, nil}, "operand layouts"},
		{"layout of the wrong rank", 4, "", [][]int{{1, 0}}, "layout"},
	} {
		if _, err := stablehlo.CustomCallRaw("t", tc.api, tc.config, []*stablehlo.Value{x}, tc.layouts,
			out, nil); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.wantErr)
		}
	}
	// A string config with API version 2 and no layouts is fine.
	if _, err := stablehlo.CustomCallRaw("t", 2, `"cfg"`, []*stablehlo.Value{x}, nil, out, nil); err != nil {
		t.Error(err)
	}
}

func TestQuoteMLIRString(t *testing.T) {
	for in, want := range map[string]string{
		"":               `""`,
		"abc":            `"abc"`,
		`a"b\c`:          `"a\"b\\c"`,
		"l1\n\tl2":       `"l1\n\tl2"`,
		"\x00\x7f\xff":   `"\00\7F\FF"`,
		"é":              `"\C3\A9"`,
		"%0 = tt.get<1>": `"%0 = tt.get<1>"`,
	} {
		if got := stablehlo.QuoteMLIRString(in); got != want {
			t.Errorf("QuoteMLIRString(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestBackendCustomCallGoBackend: on the pure-Go backend BackendCustomCall fails with an error
// naming the backend (a panic exceptions.TryCatch recovers), and HasCustomCall says so first.
func TestBackendCustomCallGoBackend(t *testing.T) {
	backend, err := NewGo()
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Finalize()
	g := graph.NewGraph(backend, "custom_call_go")
	defer g.Finalize()
	if graph.HasCustomCall(g) {
		t.Fatal("HasCustomCall is true for the pure-Go backend")
	}
	x := graph.Parameter(g, "x", shapes.Make(dtypes.Float32, 8))
	err = exceptions.TryCatch[error](func() {
		graph.BackendCustomCall("__gpu$xla.gpu.triton", 4, tritonConfig, []*graph.Node{x},
			[]shapes.Shape{shapes.Make(dtypes.Float32, 8)})
	})
	if err == nil {
		t.Fatal("BackendCustomCall on the pure-Go backend did not fail")
	}
	t.Logf("error: %v", err)
	for _, s := range []string{"__gpu$xla.gpu.triton", `backend "` + backend.Name() + `"`, "does not support custom calls", "CustomCaller"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
}

// customCallBackend wraps the pure-Go backend so that its functions implement graph.CustomCaller,
// emulating a custom call "sum_prod" (outputs a+b and a*b) with ordinary ops. It tests the graph
// side of BackendCustomCall (node, multi-output split, execution) without a PJRT plugin.
type customCallBackend struct{ compute.Backend }

func (b customCallBackend) Builder(name string) compute.Builder {
	return customCallBuilder{b.Backend.Builder(name)}
}

type customCallBuilder struct{ compute.Builder }

func (b customCallBuilder) Main() compute.Function { return customCallFunction{b.Builder.Main()} }

type customCallFunction struct{ compute.Function }

type customCallRecord struct {
	target, config string
	api            int
}

var lastCustomCall customCallRecord

func (f customCallFunction) CustomCall(target string, apiVersion int, backendConfigAttr string,
	operands []compute.Value, outputShapes []shapes.Shape) ([]compute.Value, error) {
	lastCustomCall = customCallRecord{target, backendConfigAttr, apiVersion}
	sum, err := f.Add(operands[0], operands[1])
	if err != nil {
		return nil, err
	}
	prod, err := f.Mul(operands[0], operands[1])
	if err != nil {
		return nil, err
	}
	return []compute.Value{sum, prod}, nil
}

func TestBackendCustomCallGraph(t *testing.T) {
	goBackend, err := NewGo()
	if err != nil {
		t.Fatal(err)
	}
	defer goBackend.Finalize()
	backend := customCallBackend{goBackend}
	s := shapes.Make(dtypes.Float32, 3)
	exec := graph.MustNewExec(backend, func(a, b *graph.Node) []*graph.Node {
		if !graph.HasCustomCall(a.Graph()) {
			t.Error("HasCustomCall is false for a backend with CustomCall")
		}
		outs := graph.BackendCustomCall("sum_prod", 4, "{k = 1 : i32}", []*graph.Node{a, b},
			[]shapes.Shape{s, s})
		if len(outs) != 2 {
			t.Fatalf("%d outputs, want 2", len(outs))
		}
		if outs[0].Type() != graph.NodeTypeSplitNode {
			t.Errorf("output type %s, want a split of the custom call node", outs[0].Type())
		}
		return []*graph.Node{outs[1], graph.Neg(outs[0])}
	})
	defer exec.Finalize()
	res := exec.MustExec([]float32{1, 2, 3}, []float32{4, 5, 6})
	prod, negSum := tensors.MustCopyFlatData[float32](res[0]), tensors.MustCopyFlatData[float32](res[1])
	if want := []float32{4, 10, 18}; !slices.Equal(prod, want) {
		t.Errorf("product %v, want %v", prod, want)
	}
	if want := []float32{-5, -7, -9}; !slices.Equal(negSum, want) {
		t.Errorf("negated sum %v, want %v", negSum, want)
	}
	if want := (customCallRecord{"sum_prod", "{k = 1 : i32}", 4}); lastCustomCall != want {
		t.Errorf("backend got %+v, want %+v", lastCustomCall, want)
	}
}

// TestTritonCustomCallXLA runs a real Triton kernel through graph.BackendCustomCall on the PJRT CUDA
// plugin. It needs a GPU and $SQLLM_TRITON_BACKEND_CONFIG, the file scripts/gpu/triton_customcall.py writes:
// the backend_config of jax's lowering of a Pallas kernel computing x+y and x*y over f32[1024].
func TestTritonCustomCallXLA(t *testing.T) {
	path := os.Getenv("SQLLM_TRITON_BACKEND_CONFIG")
	if path == "" {
		t.Skip("SQLLM_TRITON_BACKEND_CONFIG not set (see scripts/gpu/triton_customcall.py)")
	}
	config, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := New(Options{Kind: XLA})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Finalize()
	const n = 1024
	s := shapes.Make(dtypes.Float32, n)
	exec := graph.MustNewExec(backend, func(x, y *graph.Node) []*graph.Node {
		if !graph.HasCustomCall(x.Graph()) {
			t.Fatal("HasCustomCall is false on the XLA backend")
		}
		outs := graph.BackendCustomCall("__gpu$xla.gpu.triton", 4, string(config), []*graph.Node{x, y},
			[]shapes.Shape{s, s})
		return []*graph.Node{outs[0], outs[1], graph.Neg(outs[1])}
	})
	defer exec.Finalize()
	xs, ys := make([]float32, n), make([]float32, n)
	for i := range xs {
		xs[i], ys[i] = float32(i), float32(i%7)-3
	}
	res := exec.MustExec(xs, ys)
	sum, prod, neg := tensors.MustCopyFlatData[float32](res[0]), tensors.MustCopyFlatData[float32](res[1]),
		tensors.MustCopyFlatData[float32](res[2])
	for i := range xs {
		if sum[i] != xs[i]+ys[i] || prod[i] != xs[i]*ys[i] || neg[i] != -prod[i] {
			t.Fatalf("[%d]: sum %g, product %g, negated %g; want %g, %g", i, sum[i], prod[i], neg[i],
				xs[i]+ys[i], xs[i]*ys[i])
		}
	}
	t.Logf("%s: the Triton kernel ran through graph.BackendCustomCall (%d outputs checked)", backend.Describe(), n)
}
