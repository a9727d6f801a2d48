package llama

// Diagnostics of the Squeezed Attention selection on real items (benchmarks that print tables; they
// need the tinycode_lcc data, which the repository does not carry).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/graph"
	. "github.com/gomlx/gomlx/core/graph"
	"github.com/gomlx/gomlx/core/tensors"

	"github.com/squeezeai/sqllm/tokenizer"
)

func diagQueries(t testing.TB, p *Prefix) [][]float32 {
	r := p.r
	c := r.cfg
	L := c.NumHiddenLayers
	nw := len(r.weights.Tensors)
	e, err := graph.NewExec(r.backend, func(g *Graph, in []*Node) []*Node {
		w := unpackWeights(c, in[:nw])
		invFreq, packed := in[nw], in[nw+1]
		rest := in[nw+2:]
		ctxK, ctxV := rest[:L], rest[L:2*L]
		n := packed.Shape().Dimensions[0] - 1
		tokens := Slice(packed, AxisRange(0, n))
		clustered := Reshape(Slice(packed, AxisRange(n, n+1)))
		queries, _ := windowForward(c, w, tokens, clustered, invFreq, ctxK, ctxV)
		for i := range queries {
			queries[i] = ConvertDType(queries[i], dtypes.Float32)
		}
		return queries
	})
	if err != nil {
		t.Fatal(err)
	}
	idx := p.sq
	rows := p.cachedRows()
	packed := []int32{}
	for _, tk := range p.tokens[idx.clustered:rows] {
		packed = append(packed, int32(tk))
	}
	packed = append(packed, int32(idx.clustered))
	invFreq, err := r.invFreq(rows - 1)
	if err != nil {
		t.Fatal(err)
	}
	args := []any{}
	for _, x := range r.weights.Tensors {
		args = append(args, x)
	}
	args = append(args, invFreq, packed)
	for _, x := range p.kv.k {
		args = append(args, x)
	}
	for _, x := range p.kv.v {
		args = append(args, x)
	}
	out, err := e.Call(args...)
	if err != nil {
		t.Fatal(err)
	}
	var qs [][]float32
	for _, o := range out {
		q, _ := tensors.CopyFlatData[float32](o)
		qs = append(qs, q)
	}
	return qs
}

// BenchmarkSqueezeDroppedMass measures, on tinycode_lcc items (SQLLM_LCC: the path of
// shared/evals/tinycode_lcc/dev.jsonl; SQLLM_LCC_ITEMS: item numbers, e.g. 0,1; SQLLM_LCC_SPARSITY, default
// 0.9), for the observation window's tokens each selecting alone as a decode step does: per layer, the
// fraction of the clustered keys the global threshold keeps (one token at a time, and for the window's mean
// scores as a user input selects), the true attention mass over the clustered keys that it drops, the mass
// that the best clusters (and keys) by true mass would drop at the same count, and the mass on token 0.
// It prints a table, and an attention-mass selection sweep; run with -bench SqueezeDroppedMass -benchtime 1x.
func BenchmarkSqueezeDroppedMass(t *testing.B) {
	path, items := lccItems(t)
	sp, _ := strconv.ParseFloat(os.Getenv("SQLLM_LCC_SPARSITY"), 64)
	if sp == 0 {
		sp = 0.9
	}
	tok, rows := lccRows(t, path)
	r := testRunner(t, dtypes.Float32, Options{})
	c := r.cfg
	H, G, D := c.NumKeyValueHeads, c.GroupSize(), c.HeadDim
	scale := 1 / math.Sqrt(float64(D))
	var recs []*diagRec
	var curRec *diagRec
	type acc struct{ kept, drop, oracle, keyOracle, bos, bosKept, avgKept, n float64 }
	tot := make([]acc, c.NumHiddenLayers)
	for _, is := range items {
		i, _ := strconv.Atoi(is)
		ids := tok.Encode(rows[i]["context"].(string), true)
		p, err := r.Prefill(context.Background(), ids)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Squeeze(context.Background(), SqueezeOptions{Sparsity: sp}); err != nil {
			t.Fatal(err)
		}
		sq := p.sq
		qs := diagQueries(t, p)
		S, W := sq.clustered, sq.window
		capa := p.kv.capacity()
		tau := float64(sq.threshold)
		for l := range c.NumHiddenLayers {
			keys, _ := tensors.CopyFlatData[float32](p.kv.k[l])
			labels, _ := tensors.CopyFlatData[int32](sq.labels[l])
			cent, _ := tensors.CopyFlatData[float32](sq.centroids[l])
			counts, _ := tensors.CopyFlatData[float32](sq.counts[l])
			K := sq.k
			a := &tot[l]
			for h := range H {
				// avg-over-window selection (calibration style)
				avgScore := make([]float64, K)
				type tokSel struct{ kept []bool }
				for tt := range W {
					probsMean := make([]float64, S+tt+1)
					score := make([]float64, K)
					for g := range G {
						q := qs[l][(tt*c.NumAttentionHeads+h*G+g)*D:][:D]
						dot := func(v []float32) float64 {
							s := 0.0
							for d := range D {
								s += float64(q[d]) * float64(v[d])
							}
							return s * scale
						}
						z := make([]float64, S+tt+1)
						mx := -1e300
						for s := range z {
							z[s] = dot(keys[(h*capa+s)*D:][:D])
							mx = math.Max(mx, z[s])
						}
						sum := 0.0
						for s := range z {
							z[s] = math.Exp(z[s] - mx)
							sum += z[s]
						}
						for s := range z {
							probsMean[s] += z[s] / sum / float64(G)
						}
						zc := make([]float64, K)
						mc := -1e300
						for k := range K {
							if counts[h*K+k] > 0 {
								zc[k] = dot(cent[(h*K+k)*D:][:D])
								mc = math.Max(mc, zc[k])
							}
						}
						den := 0.0
						for k := range K {
							if counts[h*K+k] > 0 {
								den += float64(counts[h*K+k]) * math.Exp(zc[k]-mc)
							}
						}
						for k := range K {
							if counts[h*K+k] > 0 {
								pc := math.Exp(zc[k]-mc) / den
								score[k] += pc / float64(G)
							}
						}
					}
					{
						rec := diagRec{layer: l, S: S}
						for k := range K {
							if counts[h*K+k] > 0 {
								rec.est = append(rec.est, score[k]*float64(counts[h*K+k]))
								rec.n = append(rec.n, float64(counts[h*K+k]))
								rec.k = append(rec.k, k)
							}
						}
						recs = append(recs, &rec)
						curRec = &rec
					}
					kept := make([]bool, K)
					nk := 0.0
					for k := range K {
						avgScore[k] += score[k] / float64(W)
						if score[k] > tau {
							kept[k] = true
							nk += float64(counts[h*K+k])
						}
					}
					drop, bos := 0.0, probsMean[0]
					cm := make([]float64, K)
					keyp := make([]float64, S)
					for s := range S {
						cm[labels[h*capa+s]] += probsMean[s]
						keyp[s] = probsMean[s]
						if !kept[labels[h*capa+s]] {
							drop += probsMean[s]
						}
					}
					// cluster oracle at same key count
					ord := make([]int, K)
					for k := range ord {
						ord[k] = k
					}
					sort.Slice(ord, func(x, y int) bool { return cm[ord[x]] > cm[ord[y]] })
					got, keptMass := 0.0, 0.0
					for _, k := range ord {
						if got+float64(counts[h*K+k]) > nk {
							break
						}
						got += float64(counts[h*K+k])
						keptMass += cm[k]
					}
					for j, k := range curRec.k {
						curRec.tru = append(curRec.tru, cm[k])
						_ = j
					}
					clMass := 0.0
					for _, x := range cm {
						clMass += x
					}
					sort.Float64s(keyp)
					km := 0.0
					for j := 0; j < int(nk); j++ {
						km += keyp[S-1-j]
					}
					a.kept += nk / float64(S)
					a.drop += drop
					a.oracle += clMass - keptMass
					a.keyOracle += clMass - km
					a.bos += bos
					if kept[labels[h*capa]] {
						a.bosKept++
					}
					a.n++
				}
				nk := 0.0
				for k := range K {
					if avgScore[k] > tau {
						nk += float64(counts[h*K+k])
					}
				}
				a.avgKept += nk / float64(S) * float64(W)
			}
		}
		info, _ := p.SqueezeInfo()
		fmt.Printf("item %d: %d tokens, calibrated kept %.3f tau %.3g\n", i, len(ids), info.CalibratedKept, tau)
		p.Free()
	}
	for _, eps := range []float64{0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03} {
		kept := make([]float64, c.NumHiddenLayers)
		drop := make([]float64, c.NumHiddenLayers)
		cnt := make([]float64, c.NumHiddenLayers)
		for _, rc := range recs {
			ord := make([]int, len(rc.k))
			for j := range ord {
				ord[j] = j
			}
			sort.Slice(ord, func(x, y int) bool { return rc.est[ord[x]]/rc.n[ord[x]] > rc.est[ord[y]]/rc.n[ord[y]] })
			cum, nk, tm, all := 0.0, 0.0, 0.0, 0.0
			for _, j := range rc.tru {
				all += j
			}
			for _, j := range ord {
				if cum >= 1-eps {
					break
				}
				cum += rc.est[j]
				nk += rc.n[j]
				tm += rc.tru[j]
			}
			kept[rc.layer] += nk / float64(rc.S)
			drop[rc.layer] += all - tm
			cnt[rc.layer]++
		}
		tk := 0.0
		line := ""
		for l := range kept {
			tk += kept[l] / cnt[l] / float64(len(kept))
			line += fmt.Sprintf("  L%d %.3f/%.3f", l, kept[l]/cnt[l], drop[l]/cnt[l])
		}
		fmt.Printf("top-p eps %.2f: mean kept %.3f |%s\n", eps, tk, line)
	}
	fmt.Printf("layer  keptFrac(per-token)  keptFrac(window-avg sel)  droppedMass  clusterOracleDropped  keyOracleDropped  bosMass  bosClusterKept\n")
	for l, a := range tot {
		fmt.Printf("%d  %.3f  %.3f  %.3f  %.3f  %.3f  %.3f  %.2f\n", l, a.kept/a.n, a.avgKept/a.n, a.drop/a.n, a.oracle/a.n, a.keyOracle/a.n, a.bos/a.n, a.bosKept/a.n)
	}
}

type diagRec struct {
	layer, S    int
	est, n, tru []float64
	k           []int
}

// lccItems returns the tinycode_lcc file and item numbers the diagnostics read (skips without them).
func lccItems(t testing.TB) (path string, items []string) {
	path = os.Getenv("SQLLM_LCC")
	if path == "" {
		t.Skip("SQLLM_LCC (the path of shared/evals/tinycode_lcc/dev.jsonl) is not set")
	}
	items = strings.Split(os.Getenv("SQLLM_LCC_ITEMS"), ",")
	return path, items
}

// lccRows reads the tinycode_lcc rows and the bundled model's tokenizer.
func lccRows(t testing.TB, path string) (*tokenizer.Tokenizer, []map[string]any) {
	tok, err := tokenizer.Load(bundledModel + "/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<26)
	var rows []map[string]any
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, m)
	}
	return tok, rows
}

// BenchmarkSqueezeAgreement compares the global threshold and the attention-mass selection at sparsities
// 0.7 and 0.9 (with SQLLM_LCC_HIER set, the hierarchical index instead; with SQLLM_LCC_REMAINDER set, each
// with the remainder too) on tinycode_lcc items (SQLLM_LCC, SQLLM_LCC_ITEMS as BenchmarkSqueezeDroppedMass): the answer
// line (up to 24 tokens) is fed after the context one token at a time, and each position's logits are
// compared with a dense forward's: top-1 agreement and KL divergence, running totals after every item.
// Run with -bench SqueezeAgreement -benchtime 1x.
func BenchmarkSqueezeAgreement(t *testing.B) {
	path, items := lccItems(t)
	tok, rows := lccRows(t, path)
	r := testRunner(t, dtypes.Float32, Options{})
	configs := []SqueezeOptions{{Sparsity: 0.7}, {Sparsity: 0.7, Mass: true}, {Sparsity: 0.9}, {Sparsity: 0.9, Mass: true}}
	if os.Getenv("SQLLM_LCC_HIER") != "" { // the hierarchical index instead
		configs = []SqueezeOptions{{Sparsity: 0.7, Hierarchical: true}, {Sparsity: 0.9, Hierarchical: true}}
	}
	if os.Getenv("SQLLM_LCC_REMAINDER") != "" { // each with the remainder too (SqueezeOptions.Remainder)
		for _, o := range slices.Clone(configs) {
			o.Remainder = true
			configs = append(configs, o)
		}
	}
	agree := make([]int, len(configs))
	kl := make([]float64, len(configs))
	total := 0
	for _, is := range items {
		i, _ := strconv.Atoi(is)
		ctxIDs := tok.Encode(rows[i]["context"].(string), true)
		ans := tok.Encode("\n"+rows[i]["answers"].([]any)[0].(string)+"\n", false)
		if len(ans) > 24 {
			ans = ans[:24]
		}
		ids := append(slices.Clone(ctxIDs), ans...)
		seq := r.NewSequence()
		dense, err := seq.AppendAllLogits(context.Background(), ids)
		seq.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := dense[len(ctxIDs):]
		p, err := r.Prefill(context.Background(), ctxIDs)
		if err != nil {
			t.Fatal(err)
		}
		for ci, o := range configs {
			if err := p.Squeeze(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			got := decodeLogits(t, p, ans)
			for j, row := range got {
				if argmax(row) == argmax(want[j]) {
					agree[ci]++
				}
				kl[ci] += klDivergence(want[j], row)
			}
		}
		total += len(ans)
		p.Free()
		line := fmt.Sprintf("after item %d (%d tokens):", i, total)
		for ci, o := range configs {
			line += fmt.Sprintf("  %v/mass=%v/hier=%v/rem=%v agree %.3f KL %.4f", o.Sparsity, o.Mass, o.Hierarchical, o.Remainder,
				float64(agree[ci])/float64(total), kl[ci]/float64(total))
		}
		fmt.Println(line)
	}
}
