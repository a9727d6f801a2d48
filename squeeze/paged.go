package squeeze

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/support/exceptions"
)

// The paged sparse read: on a GPU, a decode step's kept keys are attended by one fused Triton kernel that
// reads the kept rows straight from the cache through the index list (vLLM's paged-attention pattern), with
// an online softmax, instead of XLA's gathers (which write the gathered rows out and read them back) and two
// products. Each KV head's list is split over several programs whose partials are merged by log-sum-exp.
//
// The kernels are written in jax's Pallas (scripts/gpu/pallas_squeeze2.py, make_paged_dyn) and lowered by
// jax 0.11.2 to Triton IR, which the XLA of the same jax's CUDA PJRT plugin compiles: kernels/paged_g{M}_d{D}
// .cfg.gz hold the custom call's backend_config (the IR as MLIR bytecode) for M = 1..8 query rows per KV head
// (a decode step's query heads per KV head), head dims 64 and 128, bfloat16 keys and values, 32-row tiles,
// 4 warps. Their IR depends on nothing else: the number of programs is the launch grid, and the tiles per
// program, the splits per head and the scale are inputs. Regenerate them with
// `ROUND=3 EXPORT_ONLY=1 python3 scripts/gpu/pallas_squeeze2.py` on the GPU machine (kernels/README.md).
//
// Measured (H200, 2026-11-27, pallas_squeeze2.py round 3, LLaMA-2-7B shape, 10% budget): 39.8 µs a layer
// at 32K against 163.6 for dense attention over every key (4.11×), 89.7 against 579.8 at 128K (6.46×);
// XLA's gathers and products over the same list took 85.4 and 240.5 µs.

//go:embed kernels/paged_*.cfg.gz kernels/pagedseg_*.cfg.gz kernels/merge_*.cfg.gz kernels/select_*.cfg.gz kernels/scores_*.cfg.gz
var kernelFS embed.FS

// PagedMaxQueries is the most query rows per KV head (a decode step's group of query heads) that the
// embedded paged kernels take.
const PagedMaxQueries = 8

const (
	pagedRows  = 32 // rows per tile of the embedded kernels (R)
	tritonCall = "__gpu$xla.gpu.triton"
)

// pagedSplits is the most programs per KV head (NS) of the paged kernel: measured best at 32K and 128K (7B and
// 8B shapes) among 8, 16, 32 and 64 in Pallas round 3; in the attention benchmark's squeezed decode step 64 and 128
// were not faster (H200, session 11). A multiple of selectSlots/pagedRows, so that pagedLayout can always align.
// The attention benchmark's -attnbench.splits sets it for measuring others.
var pagedSplits = 32

// SetPagedSplits sets the paged kernel's most programs per KV head (a positive multiple of 8) and returns the
// previous value; for benchmarks.
func SetPagedSplits(ns int) int {
	if ns <= 0 || ns%(selectSlots/pagedRows) != 0 {
		exceptions.Panicf("squeeze: paged splits %d: want a positive multiple of %d", ns, selectSlots/pagedRows)
	}
	old := pagedSplits
	pagedSplits = ns
	return old
}

// PagedMode says when KernelAuto attends a step's kept keys with the paged kernel (Paged).
type PagedMode int

const (
	// PagedAuto: for steps of at most PagedAutoMaxQueries query rows per KV head (a decode step), on a backend
	// that passed ProbePaged.
	PagedAuto PagedMode = iota
	PagedOff            // never
	PagedOn             // for steps of at most PagedMaxQueries query rows per KV head, wherever there is a kernel
)

// Paged is KernelAuto's use of the paged kernel; the engine sets it from SQLLM_SQUEEZE_PAGED (1: PagedOn, 0:
// PagedOff, unset: PagedAuto).
//
// Measured on an H200 (BENCHMARKS.md, sessions 8, 9 and 13), the attention benchmark's decode with command buffers,
// µs a layer with the paged kernel against XLA's gathers: LLaMA-2-7B shape (one query row per KV head) 116 against
// 156 at 32K and 233 against 402 at 128K; the engine's whole decode step at 32K 7.21 against 8.13 ms (session 8)
// and 7.33 against 8.19 and 8.49 (session 9). LLaMA-3-8B shape (four rows per KV head): with session 8's kernel
// 76.5 against 68.3 at 32K and 207 against 190 at 128K, slower, so PagedAuto took one row only until session 13.
// Since then the kernels for 2-8 rows prefetch their next blocks (Pallas round 14's pf2, 1.4× faster than
// session 8's at 4 rows in Pallas, the same run): with ten calls a repetition 49.0 against 44.8 at 32K and 81.4
// against 92.9 at 128K; the engine's decode at 8B 32K 5.62 and 5.96 against 6.39 and 6.34 ms a token, at 8B
// 130,000 tokens 6.92 against 7.59 (one process each).
var Paged PagedMode

// PagedAutoMaxQueries is the most query rows per KV head for which PagedAuto takes the paged kernel.
const PagedAutoMaxQueries = PagedMaxQueries

// pagedProbed holds ProbePaged's result per backend (compute.Backend → bool).
var pagedProbed sync.Map

// ProbePaged compiles and runs a small case through the paged kernel on b, once per backend, and says whether
// it ran and agreed with SparseAttention. An XLA plugin that cannot read the embedded kernels (another jax's
// bytecode) fails here, so PagedAuto falls back to XLA's gathers instead of failing a step's compilation. On a
// backend without the kernel (the pure-Go one) it is false at once.
func ProbePaged(b compute.Backend) bool { return probeOnce(&pagedProbed, b, probePaged) }

// probeOnce is probe(b), run once per backend: its result is kept in m (compute.Backend → bool).
func probeOnce(m *sync.Map, b compute.Backend, probe func(compute.Backend) bool) bool {
	if v, ok := m.Load(b); ok {
		return v.(bool)
	}
	ok := probe(b)
	m.Store(b, ok)
	return ok
}

// probed says whether b has passed the probe whose results m keeps (false when it has not run).
func probed(m *sync.Map, b compute.Backend) bool {
	v, ok := m.Load(b)
	return ok && v.(bool)
}

// probePaged runs one query row per KV head and four (grouped queries): since session 13 the kernels for 2-8 rows
// are another Pallas kernel than the one for a single row (pallas_paged.py's pf2, their blocks prefetched).
func probePaged(b compute.Backend) bool {
	return runPagedProbe(b, func(pd probeData, q *Node, m int) *Node {
		p, done := SparseAttentionPaged(q, pd.keys, pd.values, pd.idx, pd.valid, 0.125)
		if !done {
			return nil
		}
		return partialDiff(p, SparseAttention(q, pd.keys, pd.values, pd.idx, pd.valid, 0.125))
	})
}

// probeData are the inputs of the paged kernels' probes on one graph: keys and values [2, 96, 64] bf16, a list of 40
// rows a head (the second head's last 9 slots empty), and a dynamic segment dk, dv [2, 45, 64] bf16.
type probeData struct {
	keys, values, dk, dv, idx, valid *Node
	s                                int // rows a head of keys
}

// runPagedProbe runs compare (the kernel's partial against its reference: their largest difference; nil where
// there is no kernel) for one and four query rows a KV head on b, and says whether it ran and every difference is
// below 1e-2.
func runPagedProbe(b compute.Backend, compare func(pd probeData, q *Node, m int) *Node) (ok bool) {
	const h, s, d, n, t = 2, 96, 64, 40, 45
	err := exceptions.TryCatch[error](func() {
		out := MustExecOnceN(b, func(g *Graph) []*Node {
			if !pagedAvailable(g) {
				return []*Node{Const(g, float32(-1))}
			}
			wave := func(dims []int, f float64, trig func(*Node) *Node) *Node {
				x := Add(Iota(g, shapes.Make(dtypes.Float32, dims...), 1), Iota(g, shapes.Make(dtypes.Float32, dims...), 2))
				return ConvertDType(trig(MulScalar(x, f)), dtypes.BFloat16)
			}
			pd := probeData{keys: wave([]int{h, s, d}, 0.37, Cos), values: wave([]int{h, s, d}, 0.11, Sin),
				dk: wave([]int{h, t, d}, 0.23, Cos), dv: wave([]int{h, t, d}, 0.07, Cos), s: s,
				idx:   ModScalar(MulScalar(Iota(g, shapes.Make(dtypes.Int32, h, n), 1), 7), s),
				valid: LessThan(Iota(g, shapes.Make(dtypes.Int32, h, n), 1), Const(g, [][]int32{{n}, {n - 9}}))}
			diff := Scalar(g, dtypes.Float32, 0)
			for _, m := range []int{1, 4} {
				qi := Add(Iota(g, shapes.Make(dtypes.Float32, h, m, d), 2), MulScalar(Iota(g, shapes.Make(dtypes.Float32, h, m, d), 1), 3))
				dm := compare(pd, Cos(MulScalar(qi, 0.5)), m)
				if dm == nil {
					return []*Node{Const(g, float32(-1))}
				}
				diff = Max(diff, dm)
			}
			return []*Node{diff}
		})
		diff := out[0].Value().(float32)
		ok = diff >= 0 && diff < 1e-2
	})
	return err == nil && ok
}

// partialDiff is the largest difference between two partials' outputs and log-sum-exps.
func partialDiff(p, want Partial) *Node {
	return Max(ReduceAllMax(Abs(Sub(p.Out, want.Out))), ReduceAllMax(Abs(Sub(p.LSE, want.LSE))))
}

var (
	pagedMu   sync.Mutex
	pagedCfgs = map[string]string{}
	gridX     = regexp.MustCompile(`grid_x = \d+ : i32`)
)

// pagedConfig returns the embedded backend_config of the kernel for m query rows and head dim d ("" if
// there is none).
func pagedConfig(m, d int) string {
	return kernelConfig(fmt.Sprintf("kernels/paged_g%d_d%d.cfg.gz", m, d))
}

// KernelDir, where set, is a directory whose uncompressed configs (an embedded config's file name without ".gz")
// replace the embedded ones of that name, or add kernels that are not embedded: for measuring a kernel on the GPU
// machine before it is embedded. The engine sets it from SQLLM_KERNEL_DIR; it must be set before the first step.
var KernelDir string

// kernelConfig returns the backend_config of a kernel, from KernelDir or embedded ("" if there is none or it has no
// launch grid).
func kernelConfig(name string) string {
	pagedMu.Lock()
	defer pagedMu.Unlock()
	if cfg, ok := pagedCfgs[name]; ok {
		return cfg
	}
	cfg := ""
	if KernelDir != "" {
		file := filepath.Join(KernelDir, strings.TrimSuffix(path.Base(name), ".gz"))
		if b, err := os.ReadFile(file); err == nil {
			if gridX.Match(b) {
				pagedCfgs[name] = string(b)
				return string(b)
			}
			fmt.Fprintf(os.Stderr, "squeeze: ignoring %s: not a Triton call's backend_config (no grid_x); the embedded one, if any, is used\n", file)
		}
	}
	if z, err := kernelFS.ReadFile(name); err == nil {
		if r, err := gzip.NewReader(bytes.NewReader(z)); err == nil {
			if b, err := io.ReadAll(r); err == nil && gridX.Match(b) {
				cfg = string(b)
			}
		}
	}
	pagedCfgs[name] = cfg
	return cfg
}

// tritonLaunch emits an embedded Triton kernel's call (config cfg) over the given number of programs.
func tritonLaunch(cfg string, programs int, operands []*Node, outputs []shapes.Shape) []*Node {
	return BackendCustomCall(tritonCall, 4, pagedBackendConfig(cfg, programs), operands, outputs)
}

// pagedCall emits the kernel call; tests replace it with a graph emulation of the kernel (the pure-Go
// backend cannot run Triton).
var pagedCall = tritonLaunch

// kernelsWanted says whether a step graph on g takes a family of embedded kernels under mode (SelectAuto: the
// family's package setting def; under SelectAuto the backend must have passed the family's probe already, its
// results in probes) on a backend that can run them. The caller checks that there is a config.
func kernelsWanted(g *Graph, mode, def SelectMode, probes *sync.Map) bool {
	if mode == SelectAuto {
		mode = def
	}
	switch mode {
	case SelectOff:
		return false
	case SelectAuto:
		if !probed(probes, g.Backend()) {
			return false
		}
	}
	return pagedAvailable(g)
}

// kernelsFor is kernelsWanted for steps on backend b before any graph is built: false under SelectOff or on the
// pure-Go backend, true under SelectOn, else the family's probe (run once per backend).
func kernelsFor(b compute.Backend, def SelectMode, probe func(compute.Backend) bool) bool {
	if def == SelectOff || b.String() == "go" {
		return false
	}
	return def == SelectOn || probe(b)
}

// pagedBackendConfig is an embedded config launching the given number of programs.
func pagedBackendConfig(cfg string, programs int) string {
	return gridX.ReplaceAllString(cfg, "grid_x = "+strconv.Itoa(programs)+" : i32")
}

// pagedAvailable says whether g's backend can run the paged kernel (tests replace it too).
var pagedAvailable = func(g *Graph) bool {
	return g.Backend().String() != "go" && HasCustomCall(g)
}

// pagedKernel is the backend_config of the paged kernel for queries q [H, M, D] over keys and values
// [H, S, D], or "" where there is none (the pure-Go backend, keys or values not bfloat16, M >
// PagedMaxQueries, a head dim other than 64 or 128).
func pagedKernel(q, keys, values *Node) string {
	m, d := q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	bf16 := dtypes.BFloat16
	if m > PagedMaxQueries || keys.DType() != bf16 || values.DType() != bf16 || !pagedAvailable(q.Graph()) {
		return ""
	}
	return pagedConfig(m, d)
}

// UsesPaged says whether AttendKept (and AttendSelected) with this kernel choice runs the paged kernel for
// queries q [H, M, D] over keys and values [H, S, D].
func UsesPaged(q, keys, values *Node, kernel Kernel) bool {
	return (kernel == KernelPaged || (kernel == KernelAuto && autoPaged(q))) && pagedKernel(q, keys, values) != ""
}

// PagedFor says whether KernelAuto takes the paged kernel for a step of m query rows per KV head, head dim d,
// keys and values of the given dtype, on backend b (under PagedAuto it runs ProbePaged once).
func PagedFor(b compute.Backend, m, d int, dtype dtypes.DType) bool {
	if dtype != dtypes.BFloat16 || m > PagedMaxQueries || pagedConfig(m, d) == "" || b.String() == "go" {
		return false
	}
	return pagedWanted(m, func() bool { return ProbePaged(b) })
}

// autoPaged says whether KernelAuto takes the paged kernel for queries q [H, M, D] (Paged); under PagedAuto the
// backend must have passed ProbePaged already (graphs are not compiled while one is built).
func autoPaged(q *Node) bool {
	return pagedWanted(q.Shape().Dimensions[1], func() bool { return probed(&pagedProbed, q.Graph().Backend()) })
}

// pagedWanted is Paged's answer for m query rows per KV head; probed reports the backend's ProbePaged result.
func pagedWanted(m int, probed func() bool) bool {
	switch Paged {
	case PagedOn:
		return m <= PagedMaxQueries
	case PagedAuto:
		return m <= PagedAutoMaxQueries && probed()
	}
	return false
}

// SparseAttentionPaged is SparseAttention through the fused paged kernel: q [H, M, D] attends to the rows
// idx [H, B] (valid [H, B]) of keys and values [H, S, D]. ok is false where there is no kernel for the
// inputs (the pure-Go backend, keys or values not bfloat16, M > PagedMaxQueries, a head dim other than 64 or
// 128): use SparseAttention then.
func SparseAttentionPaged(q, keys, values, idx, valid *Node, scale float64) (p Partial, ok bool) {
	s := keys.Shape().Dimensions[1]
	cfg := pagedKernel(q, keys, values)
	if cfg == "" {
		return p, false
	}
	gidx, ns, iters := pagedGlobalList(idx, valid, s)
	return pagedList(q, keys, values, gidx, ns, iters, scale, cfg), true
}

// pagedGlobalList is the paged kernel's list for the rows idx [H, B] (valid [H, B]) of keys with s rows a head:
// gidx [H·bp] int32, global row numbers into the keys seen as [H·s, D], -1 in empty slots, laid out for
// pagedLayout's ns programs a head of iters tiles each.
func pagedGlobalList(idx, valid *Node, s int) (gidx *Node, ns, iters int) {
	g := idx.Graph()
	h, b := idx.Shape().Dimensions[0], idx.Shape().Dimensions[1]
	ns, iters, bp := pagedLayout(b, pagedRows)
	i32 := dtypes.Int32
	base := MulScalar(Iota(g, shapes.Make(i32, h, b), 0), s)
	gidx = Where(valid, Add(ConvertDType(idx, i32), base), Scalar(g, i32, -1))
	if bp > b {
		gidx = Concatenate([]*Node{gidx, BroadcastToDims(Scalar(g, i32, -1), h, bp-b)}, 1)
	}
	return Reshape(gidx, h*bp), ns, iters
}

// pagedLayout is the paged kernel's launch for lists of b > 0 slots a head: ns programs a head (splits), iters
// tiles of pagedRows slots a program, bp = ns·iters·pagedRows slots a head, a multiple of align (a multiple of
// pagedRows that divides pagedSplits·pagedRows). iters is the fewest that pagedSplits programs need; ns the fewest
// programs that then hold b slots in a multiple of align, so the list carries less than a program's tiles of padding
// where the alignment allows it.
//
// Until session 15 ns was rounded up to a multiple of align/pagedRows: the 3,392-slot lists of a 32K context (10%
// budget and the window) ran as 32 programs of 4 tiles, 17.8% of the slots padding, which the kernels still walk; now
// 28 programs of 4 tiles (5.4%). Measured on an H200 (session 15, call 10; attention benchmark, decode, ten calls a
// repetition, four processes alternating, µs a layer): LLaMA-2-7B 32K 34.8 / 35.0 against 40.6 / 42.3 (dense 146.3 /
// 143.9 / 149.9 / 150.9; 38.2 / 41.5 in call 12's processes), LLaMA-3-8B 32K 33.3 / 36.4 against 44.8 / 38.5. In
// CUPTI timelines the paged kernel took 21.7 against 23.6 µs at 7B (call 10) and 17.7 at 8B (call 10) against
// 26.6-27.0 with the former layout (calls 6 and 9). The engine's decode gained less: 5.58 against 5.64 ms a token (7B
// 32K), 5.44 against 5.50 (8B 32K; call 11). 128K lists keep their layout (32 programs of 13 tiles).
func pagedLayout(b, align int) (ns, iters, bp int) {
	b = max(b, 1)
	iters = (b + pagedSplits*pagedRows - 1) / (pagedSplits * pagedRows)
	tile := iters * pagedRows
	ns = (b + tile - 1) / tile
	for ns < pagedSplits && ns*tile%align != 0 {
		ns++
	}
	return ns, iters, ns * tile
}

// pagedList runs the paged kernel (config cfg) over the list gidx [H·bp] (pagedLayout's ns, iters; global
// rows h·S + row into keys and values [H, S, D], -1 empty) for queries q [H, M, D].
func pagedList(q, keys, values, gidx *Node, ns, iters int, scale float64, cfg string) Partial {
	g := q.Graph()
	h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	s := keys.Shape().Dimensions[1]
	programs := h * ns
	outs := pagedCall(cfg, programs, []*Node{
		ConvertDType(q, dtypes.BFloat16), gidx, Reshape(keys, h*s, d), Reshape(values, h*s, d),
		Const(g, []int32{int32(iters), int32(ns)}), Const(g, []float32{float32(scale)}),
	}, []shapes.Shape{shapes.Make(dtypes.Float32, programs, m, d), shapes.Make(dtypes.Float32, programs, m)})
	return mergeSplits(Reshape(outs[0], h, ns, m, d), Reshape(outs[1], h, ns, m))
}

// mergeSplits merges the partials o [H, NS, M, D], lse [H, NS, M] of a head's splits by log-sum-exp (as
// Merge, over NS at once): Out [H, M, D], LSE [H, M, 1]; -1e30 (negInf) where no split saw a key (the kernel
// writes -Inf for a split that saw none).
func mergeSplits(o, lse *Node) Partial {
	g := o.Graph()
	f32 := dtypes.Float32
	h, ns, m, d := o.Shape().Dimensions[0], o.Shape().Dimensions[1], o.Shape().Dimensions[2], o.Shape().Dimensions[3]
	mx := ReduceAndKeep(lse, ReduceMax, 1) // [H, 1, M]
	mx = Where(GreaterThan(mx, Scalar(g, f32, -1e30)), mx, ZerosLike(mx))
	w := Exp(Sub(lse, BroadcastToDims(mx, h, ns, m)))                                  // [H, NS, M]; 0 for a split that saw nothing
	sw := ReduceSum(w, 1)                                                              // [H, M]
	out := ReduceSum(Mul(BroadcastToDims(Reshape(w, h, ns, m, 1), h, ns, m, d), o), 1) // [H, M, D]
	out = Div(out, BroadcastToDims(Reshape(MaxScalar(sw, 1e-30), h, m, 1), h, m, d))
	l := Where(GreaterThan(sw, ZerosLike(sw)), Add(Reshape(mx, h, m), Log(MaxScalar(sw, 1e-30))), Scalar(g, f32, negInf))
	return Partial{Out: out, LSE: Reshape(l, h, m, 1)}
}

// The paged kernel with the dynamic segment (kernels/pagedseg_g{M}_d{D}.cfg.gz): a decode step's attention over the
// dynamic segment (the user input and the generated tokens) runs as more programs of the paged kernel's launch
// instead of XLA's dense attention and a merge (about six kernels a layer, 11-13 µs at the LLaMA-2-7B and
// LLaMA-3-8B shapes in session 14's CUPTI timeline of the attention benchmark, H200). Programs [0, H·NS) are the
// paged kernel's, unchanged; program H·NS + h·NSD + j attends head h's query rows to its dynamic rows
// [j·dit·R, (j+1)·dit·R) ∩ [0, T), each row with its own mask row; every program writes its partial and the
// NS + NSD splits of a head are merged by the merge kernel (mergeConfig; XLA's mergeSplits without one).
// Operands: the paged kernel's q, gidx, keys, values, then dk, dv [H·T, D] bf16, mask [M·T] int32 (1: attended),
// prm [iters, NS, NSD, dit, T, H] int32, scale [1] float32; outputs o [P, M, D], lse [P, M] float32,
// P = H·(NS + NSD). Pallas round 19 (make_paged_seg in
// scripts/gpu/pallas_finish.py): the paged kernel's body (make_paged_dyn's for one row, pf2 for 2-8) behind
// pl.when, 32-row tiles, 4 warps, the same stages as the paged kernels.
//
// Measured on an H200 (session 14; BENCHMARKS.md): in the attention benchmark's decode (command buffers, ten calls a
// repetition, µs a layer, the dynamic segment in XLA's graph against in the launch) LLaMA-2-7B shape 62.2 against
// 49.0 at 32K and 129.2 against 116.5 at 128K, LLaMA-3-8B shape 54.9 against 42.2 at 32K and 88.2 against 86.7 at
// 128K; the engine's decode at 32K 6.16 against 5.72 ms a token (7B) and 5.61 against 5.55 (8B), one process each.
// In Pallas (jax's timing, no command buffers) the 8B shape was slower at 128K (87.9-89.1 against 78.3 µs), which
// the attention benchmark did not reproduce.

// PagedSegAutoMaxQueries is the most query rows per KV head for which PagedSeg's PagedAuto runs the dynamic segment
// inside the paged kernel's launch: all that the paged kernel takes.
const PagedSegAutoMaxQueries = PagedMaxQueries

// PagedSeg says when a step that reads its kept keys through the paged kernel (UsesPaged) attends the dynamic
// segment in the same launch (AttendSelectedDyn): PagedAuto for up to PagedSegAutoMaxQueries query rows per KV head
// on a backend that passed ProbePagedSeg, PagedOn wherever there is a kernel, PagedOff never. The engine sets it from
// SQLLM_SQUEEZE_PAGEDSEG (1, 0, unset).
var PagedSeg PagedMode

// pagedSegProbed holds ProbePagedSeg's result per backend (compute.Backend → bool).
var pagedSegProbed sync.Map

// ProbePagedSeg compiles and runs a small case through the paged kernel with the dynamic segment on b, once per
// backend, and says whether it ran and agreed with SparseAttention merged with DenseAttention (one and four query
// rows a KV head). False at once on a backend without the kernel.
func ProbePagedSeg(b compute.Backend) bool { return probeOnce(&pagedSegProbed, b, probePagedSeg) }

func probePagedSeg(b compute.Backend) bool {
	return runPagedProbe(b, func(pd probeData, q *Node, m int) *Node {
		g, t := q.Graph(), pd.dk.Shape().Dimensions[1]
		cfg := pagedSegConfig(m, q.Shape().Dimensions[2])
		if cfg == "" {
			return nil
		}
		// Row r sees the dynamic rows below 40 - 3r.
		mask := LessThan(Iota(g, shapes.Make(dtypes.Int32, 1, m, t), 2), SubScalar(MulScalar(Iota(g, shapes.Make(dtypes.Int32, 1, m, t), 1), -3), -40))
		gidx, ns, iters := pagedGlobalList(pd.idx, pd.valid, pd.s)
		p := pagedSegList(ConvertDType(q, dtypes.BFloat16), pd.keys, pd.values, gidx, ns, iters, pd.dk, pd.dv, mask, 0.125, cfg)
		return partialDiff(p, Merge(SparseAttention(q, pd.keys, pd.values, pd.idx, pd.valid, 0.125), DenseAttention(q, pd.dk, pd.dv, mask, 0.125)))
	})
}

// pagedSegConfig returns the embedded backend_config of the paged kernel with the dynamic segment for m query rows
// and head dim d ("" if there is none).
func pagedSegConfig(m, d int) string {
	return kernelConfig(fmt.Sprintf("kernels/pagedseg_g%d_d%d.cfg.gz", m, d))
}

// pagedSegKernel is the config of the paged kernel with the dynamic segment dynK, dynV [H, T, D] for queries q
// [H, M, D] over keys and values [H, S, D] that the paged kernel reads under kernel, when the index's mode (Seg;
// SelectAuto: PagedSeg) takes it; "" otherwise.
func pagedSegKernel(q, keys, values, dynK, dynV *Node, kernel Kernel, mode SelectMode) string {
	m := q.Shape().Dimensions[1]
	bf16 := dtypes.BFloat16
	if !UsesPaged(q, keys, values, kernel) || dynK.DType() != bf16 || dynV.DType() != bf16 ||
		!pagedSegWanted(m, mode, func() bool { return probed(&pagedSegProbed, q.Graph().Backend()) }) {
		return ""
	}
	return pagedSegConfig(m, q.Shape().Dimensions[2])
}

// PagedSegFor says whether steps of m query rows per KV head (head dim d, bfloat16 keys and values) on backend b
// attend their dynamic segment inside the paged kernel's launch (under PagedAuto it runs ProbePagedSeg once), given
// that they read their kept keys through the paged kernel.
func PagedSegFor(b compute.Backend, m, d int) bool {
	if pagedSegConfig(m, d) == "" || b.String() == "go" {
		return false
	}
	return pagedSegWanted(m, SelectAuto, func() bool { return ProbePagedSeg(b) })
}

// pagedSegWanted is the answer of an index's mode (SelectAuto: PagedSeg's) for m query rows per KV head; probed
// reports the backend's ProbePagedSeg result.
func pagedSegWanted(m int, mode SelectMode, probed func() bool) bool {
	switch {
	case mode == SelectOn || mode == SelectAuto && PagedSeg == PagedOn:
		return true
	case mode == SelectAuto && PagedSeg == PagedAuto:
		return m <= PagedSegAutoMaxQueries && probed()
	}
	return false
}

// segSplits is the programs a head for a dynamic segment of t rows (NSD): one per 128 rows, 1 to 16.
func segSplits(t int) int { return min(16, max(1, (t+127)/128)) }

// pagedSegList is pagedList with the dynamic segment dynK, dynV [H, T, D] bf16 (mask [M, T] or [1, M, T] bool:
// the rows each query row sees) in the same launch (config cfg), merged: Out [H, M, D], LSE [H, M, 1].
func pagedSegList(q, keys, values, gidx *Node, ns, iters int, dynK, dynV, mask *Node, scale float64, cfg string) Partial {
	g := q.Graph()
	i32 := dtypes.Int32
	h, m, d := q.Shape().Dimensions[0], q.Shape().Dimensions[1], q.Shape().Dimensions[2]
	s, t := keys.Shape().Dimensions[1], dynK.Shape().Dimensions[1]
	nsd := segSplits(t)
	mi := ConvertDType(Reshape(mask, m, t), i32)
	// dit: tiles a dynamic program, for rows up to the last one any query row sees (the same for every layer of a
	// step: XLA computes it once).
	last := ReduceAllMax(Mul(mi, AddScalar(Iota(g, shapes.Make(i32, m, t), 1), 1)))
	dit := DivScalar(AddScalar(DivScalar(AddScalar(last, pagedRows-1), pagedRows), nsd-1), nsd)
	prm := Concatenate([]*Node{Const(g, []int32{int32(iters), int32(ns), int32(nsd)}), Reshape(dit, 1),
		Const(g, []int32{int32(t), int32(h)})}, 0)
	programs := h * (ns + nsd)
	outs := pagedCall(cfg, programs, []*Node{
		ConvertDType(q, dtypes.BFloat16), gidx, Reshape(keys, h*s, d), Reshape(values, h*s, d),
		Reshape(dynK, h*t, d), Reshape(dynV, h*t, d), Reshape(mi, m*t), prm, Const(g, []float32{float32(scale)}),
	}, []shapes.Shape{shapes.Make(dtypes.Float32, programs, m, d), shapes.Make(dtypes.Float32, programs, m)})
	if mcfg := mergeConfig(m, d); mcfg != "" && !NoMergeKernel {
		mo := pagedCall(mcfg, h*m, []*Node{outs[0], outs[1], Const(g, []int32{int32(ns), int32(nsd), int32(h)})},
			[]shapes.Shape{shapes.Make(dtypes.Float32, h, m, d), shapes.Make(dtypes.Float32, h, m)})
		lse := Where(GreaterThan(mo[1], Scalar(g, dtypes.Float32, negInf)), mo[1], Scalar(g, dtypes.Float32, negInf))
		return Partial{Out: mo[0], LSE: Reshape(lse, h, m, 1)}
	}
	split := func(x *Node, dims ...int) *Node {
		a := Reshape(Slice(x, AxisRange(0, h*ns)), append([]int{h, ns}, dims...)...)
		b := Reshape(Slice(x, AxisRange(h*ns, programs)), append([]int{h, nsd}, dims...)...)
		return Concatenate([]*Node{a, b}, 1)
	}
	return mergeSplits(split(outs[0], m, d), split(outs[1], m))
}

// NoMergeKernel makes pagedSegList merge the splits with XLA's ops (mergeSplits) instead of the merge kernel, for
// measuring what the kernel gains; the engine sets it from SQLLM_SQUEEZE_SEGMERGE=0.
var NoMergeKernel bool

// mergeConfig returns the embedded backend_config of the merge kernel for m query rows and head dim d ("" if there
// is none): kernels/merge_g{M}_d{D}.cfg.gz, Pallas round 21 (make_merge2 in scripts/gpu/pallas_finish.py), one
// program a (KV head, query row), 4 warps, 2 stages. Program h·M + r merges row r of head h over the paged kernel
// with the dynamic segment's partials: the head's NS list programs (rows [h·NS, (h+1)·NS) of o [P, M, D], lse
// [P, M]) and its NSD dynamic programs (rows [H·NS + h·NSD, H·NS + (h+1)·NSD)), 32 at a time. Operands o, lse, prm
// [NS, NSD, H] int32; outputs out [H, M, D], lse [H, M] float32 (-Inf where nothing was seen). It replaces XLA's
// merge (mergeSplits), four kernels a layer (6.9 µs at the LLaMA-2-7B shape, 32K, in session 14's CUPTI timeline).
// Measured (H200, session 14, attention benchmark, ten calls a repetition, two processes, µs a layer, against XLA's
// merge): 47.6 / 47.9 at LLaMA-2-7B 32K, 114.7 / 117.9 at 128K, 84.3 / 86.5 at LLaMA-3-8B 128K, 49.2 / 44.3 at 8B 32K
// (whose dense attention moved from 55.2 to 49.8 between the processes); the engine's decode at 7B 32K 5.67 against
// 5.80 ms a token. A small gain, not beyond the spread between processes everywhere.
func mergeConfig(m, d int) string {
	return kernelConfig(fmt.Sprintf("kernels/merge_g%d_d%d.cfg.gz", m, d))
}
