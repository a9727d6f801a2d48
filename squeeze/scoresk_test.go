package squeeze

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive
	"github.com/gomlx/gomlx/core/tensors"
)

// emulateScores is the cluster-score kernels' contract (scripts/gpu/pallas_scores.py, make_scores_z and
// make_scores_p, round 11), program by program as graph ops: which embedded config runs, its operands, the sizes
// it reads from prm, the launch, and the layout of its outputs. It reads prm's values, which scoresKernel passes
// as a constant.
func emulateScores(t *testing.T) func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
	return func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
		kind, d := "", 0
		for _, dd := range []int{64, 128} {
			for _, kd := range []string{"z", "p", "pr"} {
				if cfg == scoresConfig(kd, dd) {
					kind, d = kd, dd
				}
			}
		}
		if kind == "" {
			t.Fatalf("cluster-score kernel launched with an unknown config %.60q…", cfg)
		}
		q, c := ops[0], ops[1]
		prmT := ops[len(ops)-2].ConstantValue()
		if prmT == nil {
			t.Fatalf("kernel %s: prm is not a constant", kind)
		}
		prm := tensors.MustCopyFlatData[int32](prmT)
		m, k, nmb, nkb, ms, mp, nkbZ, ks := int(prm[0]), int(prm[1]), int(prm[2]), int(prm[3]), int(prm[4]), int(prm[5]), int(prm[6]), int(prm[7])
		kp := nkb * scoresBK
		h := q.Shape().Dimensions[0] / m
		bf16, f32, i32 := dtypes.BFloat16, dtypes.Float32, dtypes.Int32
		if q.DType() != bf16 || c.DType() != bf16 || q.Shape().Dimensions[1] != d || c.Shape().Dimensions[1] != d ||
			q.Shape().Dimensions[0] != h*m || c.Shape().Dimensions[0] != h*k || mp != nmb*scoresBM || nkbZ != nkb ||
			nmb != (m+scoresBM-1)/scoresBM || nkb != (k+scoresBK-1)/scoresBK {
			t.Errorf("kernel %s (D %d): q %s, centroids %s, prm %v", kind, d, q.Shape(), c.Shape(), prm)
		}
		g := q.Graph()
		scale := Reshape(ops[len(ops)-1]) // [] float32
		qH, cH := Reshape(ConvertDType(q, f32), h, m, d), Reshape(ConvertDType(c, f32), h, k, d)
		// logits of rows (clamped) against centroids (clamped): [H, R, C]
		logits := func(rows, cols int) *Node {
			ri := MinScalar(Iota(g, shapes.Make(i32, rows), 0), m-1)
			ci := MinScalar(Iota(g, shapes.Make(i32, cols), 0), k-1)
			qq := GatherRows(qH, BroadcastToDims(Reshape(ri, 1, rows), h, rows))
			cc := GatherRows(cH, BroadcastToDims(Reshape(ci, 1, cols), h, cols))
			return Mul(Einsum("hrd,hcd->hrc", qq, cc), BroadcastToDims(scale, h, rows, cols))
		}
		switch kind {
		case "z":
			if programs != h*nmb*ks || len(ops) != 5 || len(outs) != 2 || outs[0].Dimensions[0] != programs*scoresBM {
				t.Errorf("kernel Z: %d programs (H %d, nMB %d, KS %d), %d operands, outputs %v", programs, h, nmb, ks, len(ops), outs)
			}
			per := (nkbZ + ks - 1) / ks
			cols := ks * per * scoresBK
			lg := logits(mp, cols) // [H, Mp, cols]
			col := Iota(g, shapes.Make(i32, cols), 0)
			cnt := Reshape(ops[2], h, k)
			cntC := GatherRows(cnt, BroadcastToDims(Reshape(MinScalar(col, k-1), 1, cols), h, cols)) // [H, cols]
			ok := And(BroadcastToDims(Reshape(LessThan(col, Scalar(g, i32, k)), 1, cols), h, cols), GreaterThan(cntC, ZerosLike(cntC)))
			bias := Where(ok, Log(MaxScalar(cntC, 1)), BroadcastToDims(Scalar(g, f32, negInf), h, cols))
			lg = Add(lg, BroadcastToDims(Reshape(bias, h, 1, cols), h, mp, cols))
			lg = Reshape(lg, h, mp, ks, per*scoresBK)
			mx := ReduceAndKeep(lg, ReduceMax, -1)
			sm := ReduceSum(Exp(Sub(lg, mx)), -1) // [H, Mp, KS]
			lay := func(x *Node) *Node {          // [H, Mp, KS] → [H, nMB, KS, BM], flat
				return Reshape(TransposeAllAxes(Reshape(x, h, nmb, scoresBM, ks), 0, 1, 3, 2), programs*scoresBM)
			}
			return []*Node{lay(Reshape(mx, h, mp, ks)), lay(sm)}
		case "p", "pr":
			perM := (nmb + ms - 1) / ms
			rows := ms * perM * scoresBM
			if kind == "pr" {
				rows = nmb * scoresBM
				if programs != h*nmb*ks || len(ops) != 6 || len(outs) != 1 || outs[0].Dimensions[0] != h*nmb*kp {
					t.Errorf("kernel P by row blocks: %d programs (H %d, nMB %d, KS %d), %d operands, outputs %v", programs, h, nmb, ks, len(ops), outs)
				}
			} else if programs != h*nkb*ms || len(ops) != 6 || len(outs) != 1 || outs[0].Dimensions[0] != programs*scoresBK {
				t.Errorf("kernel P: %d programs (H %d, nKB %d, MS %d), %d operands, outputs %v", programs, h, nkb, ms, len(ops), outs)
			}
			mx := Reshape(ops[2], h, nmb, ks, scoresBM)
			sm := Reshape(ops[3], h, nmb, ks, scoresBM)
			// each row's partials: block min(row/BM, nMB-1), lane row%BM
			r := Iota(g, shapes.Make(i32, rows), 0)
			blk := MinScalar(DivScalar(r, scoresBM), nmb-1)
			lane := ModScalar(r, scoresBM)
			part := func(x *Node) *Node { // [H, nMB, KS, BM] → [H, rows, KS]
				xt := Reshape(TransposeAllAxes(x, 0, 1, 3, 2), h, nmb*scoresBM, ks)
				return GatherRows(xt, BroadcastToDims(Reshape(Add(MulScalar(blk, scoresBM), lane), 1, rows), h, rows))
			}
			mxr, smr := part(mx), part(sm)
			z := ReduceAndKeep(mxr, ReduceMax, -1)
			l := ReduceAndKeep(Mul(smr, Exp(Sub(mxr, z))), ReduceSum, -1)
			lz := Add(z, Log(MaxScalar(l, 1e-30))) // [H, rows, 1]
			lg := logits(rows, kp)
			okRow := BroadcastToDims(Reshape(LessThan(r, Scalar(g, i32, m)), 1, rows, 1), h, rows, kp)
			p := Where(okRow, Exp(Sub(lg, BroadcastToDims(lz, h, rows, kp))), ZerosLike(lg))
			if kind == "pr" { // the KS programs of a (head, row block): its rows' sums for every centroid, [H, nMB, Kp]
				return []*Node{Reshape(ReduceSum(Reshape(p, h, nmb, scoresBM, kp), 2), h*nmb*kp)}
			}
			s := ReduceSum(Reshape(p, h, ms, perM*scoresBM, nkb, scoresBK), 2) // [H, MS, nKB, BK]
			return []*Node{Reshape(TransposeAllAxes(s, 0, 2, 1, 3), programs*scoresBK)}
		}
		return nil
	}
}

// withScoresKernels installs the emulated cluster-score kernels for a test.
func withScoresKernels(t *testing.T, mode SelectMode) {
	saveCall, saveAvail, saveMode := scoresCall, pagedAvailable, ScoresKernels
	t.Cleanup(func() { scoresCall, pagedAvailable, ScoresKernels = saveCall, saveAvail, saveMode })
	scoresCall, pagedAvailable, ScoresKernels = emulateScores(t), func(*Graph) bool { return true }, mode
}

// TestScoresKernel: the cluster-score kernels (emulated) give ClusterScores: ragged row and centroid counts, empty
// clusters, one split and many, head dims 64 and 128, logits up to about ±40.
func TestScoresKernel(t *testing.T) {
	withScoresKernels(t, SelectOn)
	defer func(v bool) { ScoresPByBlocks = v }(ScoresPByBlocks)
	rng := rand.New(rand.NewPCG(31, 32))
	for _, c := range []struct {
		h, m, k, d int
		blocks     bool // ScoresPByBlocks: kernel P by centroid blocks runs, else P by row blocks (over Z's splits where ks > 1)
		ks         int  // Z's centroid splits
	}{{3, 70, 50, 128, false, 1}, {2, 512, 1638, 128, false, 13}, {4, 100, 333, 64, false, 3}, {1, 64, 64, 128, false, 1},
		{2, 130, 900, 64, false, 8}, {133, 64, 129, 64, false, 1}, {3, 70, 50, 128, true, 1}, {2, 512, 1638, 128, true, 13}} {
		ScoresPByBlocks = c.blocks
		t.Run(fmt.Sprintf("H%d_M%d_K%d_D%d_blocks%v", c.h, c.m, c.k, c.d, c.blocks), func(t *testing.T) {
			emu, launched := scoresCall, []string{}
			defer func() { scoresCall = emu }()
			scoresCall = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
				for _, kd := range []string{"z", "p", "pr"} {
					if cfg == scoresConfig(kd, c.d) {
						launched = append(launched, kd)
					}
				}
				return emu(cfg, programs, ops, outs)
			}
			q, cent := randn(rng, 2, c.h, c.m, c.d), randn(rng, 1, c.h, c.k, c.d)
			counts := make([]float32, c.h*c.k)
			for i := range counts {
				if rng.IntN(9) != 0 {
					counts[i] = float32(1 + rng.IntN(40))
				}
			}
			nt := tensors.FromFlatDataAndDimensions(counts, c.h, c.k)
			out := MustExecOnceN(testBackend(), func(q, cent, counts *Node) []*Node {
				bf := dtypes.BFloat16
				qb, cb := ConvertDType(q, bf), ConvertDType(cent, bf)
				if !useScoresKernels(qb, cb, SelectAuto) {
					t.Errorf("useScoresKernels false for bfloat16 inputs of %d rows under SelectOn", c.m)
				}
				if useScoresKernels(qb, cb, SelectOff) || useScoresKernels(ConvertDType(qb, dtypes.Float32), cb, SelectOn) ||
					useScoresKernels(Slice(qb, AxisRange(), AxisRange(0, ScoresMinQueries-1)), cb, SelectOn) {
					t.Errorf("useScoresKernels true for SelectOff, float32 queries or fewer than %d rows", ScoresMinQueries)
				}
				return []*Node{scoresKernel(qb, cb, counts, Scale(c.d)), ClusterScores(qb, cb, counts, Scale(c.d))}
			}, q, cent, nt)
			got, want := flat(out[0]), flat(out[1])
			allFinite(t, "scores", got)
			top := 0.0
			for _, w := range want {
				top = math.Max(top, float64(w))
			}
			if diff := maxAbsDiff(got, want); diff > 1e-5*top {
				t.Errorf("scores differ from ClusterScores by %.2e (largest score %.2e)", diff, top)
			}
			if want := map[bool]string{true: "[z p]", false: "[z pr]"}[c.blocks]; fmt.Sprint(launched) != want {
				t.Errorf("kernels launched %v, want %s", launched, want)
			}
			if ks, _ := scoresSplits(c.h, (c.m+scoresBM-1)/scoresBM, (c.k+scoresBK-1)/scoresBK); ks != c.ks {
				t.Errorf("Z runs %d centroid splits, want %d", ks, c.ks)
			}
			for i, n := range counts {
				if n == 0 && got[i] != 0 {
					t.Fatalf("empty cluster %d scored %g", i, got[i])
				}
			}
			for hh := range c.h {
				sum := 0.0
				for j := range c.k {
					sum += float64(got[hh*c.k+j]) * float64(counts[hh*c.k+j])
				}
				if math.Abs(sum-1) > 1e-4 {
					t.Errorf("head %d: Σ N·score = %.6f, want 1", hh, sum)
				}
			}
		})
	}
}

// TestAttendSelectedScores: a user input's squeezed attention with the cluster-score kernels (emulated) keeps the
// same keys and gives the same output as with XLA's scores; decode steps, a remainder index and a hierarchical
// index do not call them.
func TestAttendSelectedScores(t *testing.T) {
	const h, s, d, k, clustered, window = 2, 400, 64, 24, 380, 12
	rng := rand.New(rand.NewPCG(33, 34))
	keys, vals := randn(rng, 1, h, s, d), randn(rng, 1, h, s, d)
	for _, c := range []struct {
		name      string
		m         int
		remainder bool
		hier      bool
		calls     int
	}{{"input", 80, false, false, 2}, {"decode", 1, false, false, 0}, {"input-remainder", 80, true, false, 0}, {"input-hier", 70, false, true, 0}} {
		t.Run(c.name, func(t *testing.T) {
			q := randn(rng, 2, h, c.m, d)
			run := func(mode SelectMode) []*tensors.Tensor {
				withScoresKernels(t, mode)
				calls := 0
				emu := scoresCall
				scoresCall = func(cfg string, programs int, ops []*Node, outs []shapes.Shape) []*Node {
					calls++
					return emu(cfg, programs, ops, outs)
				}
				out := MustExecOnceN(testBackend(), func(q, keys, vals *Node) []*Node {
					g := q.Graph()
					bf := dtypes.BFloat16
					kb, vb := ConvertDType(keys, bf), ConvertDType(vals, bf)
					ix := attendTestIndex(kb, vb, clustered, window, k, c.hier, c.remainder)
					ix.Centroids = ConvertDType(ix.Centroids, bf) // as the engine keeps a bfloat16 model's
					if c.hier {
						ix.CoarseCentroids = ConvertDType(ix.CoarseCentroids, bf)
					}
					qb := ConvertDType(q, bf)
					idx, valid, kept := Select(qb, ix, Scale(d))
					p := Attend(qb, kb, vb, Partial{}, ix, Scale(d), KernelEinsum)
					return []*Node{p.Out, p.LSE, kept, Where(valid, ConvertDType(idx, dtypes.Int32), Scalar(g, dtypes.Int32, -1))}
				}, q, keys, vals)
				// Select and Attend each score once.
				if want := map[bool]int{true: 2 * c.calls, false: 0}[mode == SelectOn]; calls != want {
					t.Errorf("ScoresKernels=%v: %d cluster-score kernel calls, want %d", mode, calls, want)
				}
				return out
			}
			xla, kern := run(SelectOff), run(SelectOn)
			allFinite(t, "output", flat(kern[0]))
			if diff := maxAbsDiff(flat(xla[0]), flat(kern[0])); diff > 1e-5 {
				t.Errorf("output differs from XLA's scores by %.2e", diff)
			}
			if a, b := flatI32(xla[2]), flatI32(kern[2]); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("kept %v, with XLA's scores %v", b, a)
			}
			if a, b := flatI32(xla[3]), flatI32(kern[3]); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("the kept lists differ")
			}
		})
	}
}

// TestProbeScores: the probe passes with the emulated kernels only: not without custom calls, not with a kernel
// that drops a centroid block or mislays its partials, not with one that fails to run.
func TestProbeScores(t *testing.T) {
	withScoresKernels(t, SelectAuto)
	defer scoresProbed.Delete(testBackend())
	checkProbe(t, probeScores, &scoresCall, scoresCall, map[string]func(ops, r []*Node) []*Node{
		"whose P's last block is zero": func(_, r []*Node) []*Node {
			if len(r) != 1 {
				return r
			}
			n := r[0].Shape().Dimensions[0]
			return []*Node{Where(GreaterOrEqual(Iota(r[0].Graph(), shapes.Make(dtypes.Int32, n), 0), Scalar(r[0].Graph(), dtypes.Int32, n-scoresBK)), ZerosLike(r[0]), r[0])}
		},
		"whose Z's sums are halved": func(_, r []*Node) []*Node {
			if len(r) != 2 {
				return r
			}
			return []*Node{r[0], MulScalar(r[1], 0.5)}
		},
	})
}

// TestScoresKernelConfigs: both kernels are embedded for head dims 64 and 128 (none for others), with a launch
// grid that scoresKernel rewrites; the splits cover every block, P's give about scoresTarget programs and Z's the
// most within scoresZWave.
func TestScoresKernelConfigs(t *testing.T) {
	for _, d := range []int{64, 128} {
		z, p, pr := scoresConfigs(d)
		if z == "" || p == "" || pr == "" || z == p || p == pr || z == pr {
			t.Fatalf("D %d: configs missing or equal", d)
		}
		for _, cfg := range []string{z, p, pr} {
			if got := pagedBackendConfig(cfg, 777); !strings.Contains(got, "grid_x = 777 : i32") || strings.Count(got, "grid_x") != 1 {
				t.Errorf("D %d: launch config %.60q…", d, got)
			}
		}
	}
	if z, p, pr := scoresConfigs(96); z != "" || p != "" || pr != "" {
		t.Errorf("a cluster-score kernel for head dim 96")
	}
	for _, c := range []struct{ h, nmb, nkb int }{{32, 8, 13}, {8, 32, 13}, {32, 8, 52}, {1, 1, 1}, {3, 2, 1}, {64, 16, 200}} {
		ks, ms := scoresSplits(c.h, c.nmb, c.nkb)
		if ks < 1 || ks > c.nkb || ms < 1 || ms > c.nmb {
			t.Errorf("scoresSplits(%d, %d, %d) = %d, %d", c.h, c.nmb, c.nkb, ks, ms)
		}
		if ms < c.nmb && c.h*c.nkb*ms < scoresTarget {
			t.Errorf("scoresSplits(%d, %d, %d) = %d, %d: fewer P programs than %d", c.h, c.nmb, c.nkb, ks, ms, scoresTarget)
		}
		// Z: one wave of programs, as many splits as it holds.
		if (ks > 1 && c.h*c.nmb*ks > scoresZWave) || (ks < c.nkb && c.h*c.nmb*(ks+1) <= scoresZWave) {
			t.Errorf("scoresSplits(%d, %d, %d) = %d, %d: Z's programs not the most within %d", c.h, c.nmb, c.nkb, ks, ms, scoresZWave)
		}
	}
}

// TestKernelDir: a config in KernelDir replaces the embedded one of its name or adds a kernel that is not embedded;
// a file without a launch grid is ignored.
func TestKernelDir(t *testing.T) {
	dir := t.TempDir()
	names := []string{"kernels/scores_pr_d64.cfg.gz", "kernels/scores_z_d64.cfg.gz", "kernels/extra_d64.cfg.gz"}
	forget := func() {
		pagedMu.Lock()
		defer pagedMu.Unlock()
		for _, n := range names {
			delete(pagedCfgs, n)
		}
	}
	saveDir := KernelDir
	t.Cleanup(func() { KernelDir = saveDir; forget() })
	embeddedZ := kernelConfig(names[1])
	files := map[string]string{"scores_pr_d64.cfg": "{replacement, grid_x = 64 : i32}", "scores_z_d64.cfg": "{no launch grid}",
		"extra_d64.cfg": "{extra, grid_x = 8 : i32}"}
	for f, c := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	KernelDir = dir
	forget()
	if got := kernelConfig(names[0]); got != files["scores_pr_d64.cfg"] {
		t.Errorf("replaced config: got %.60q", got)
	}
	if got := kernelConfig(names[1]); got != embeddedZ || got == "" {
		t.Errorf("a file without a launch grid replaced the embedded config: got %.60q", got)
	}
	if got := kernelConfig(names[2]); got != files["extra_d64.cfg"] {
		t.Errorf("added config: got %.60q", got)
	}
	KernelDir = ""
	forget()
	if got := kernelConfig(names[2]); got != "" {
		t.Errorf("a kernel that is not embedded without KernelDir: got %.60q", got)
	}
}
