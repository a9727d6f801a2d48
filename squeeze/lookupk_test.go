package squeeze

import (
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/shapes"
	. "github.com/gomlx/gomlx/core/graph" //nolint:revive // graph code reads best with the ops unqualified.
	"github.com/gomlx/gomlx/core/tensors"
)

// TestProbeLookup: the probe passes with the emulated kernels, and fails where the backend has no kernel, where the
// lookup kernel's totals, taken keys (only for four query rows a head) or padded starts are wrong, and where it
// cannot be compiled; LookupAuto then follows the probe's result.
func TestProbeLookup(t *testing.T) {
	withSelectKernels(t, SelectAuto, PagedOff)
	saveLookup := LookupKernel
	t.Cleanup(func() { LookupKernel = saveLookup })
	LookupKernel = SelectAuto
	selectProbed.Store(testBackend(), true)
	defer selectProbed.Delete(testBackend())
	emu := selectCall
	lookupOnly := func(change func(r []*Node) []*Node) func(ops, r []*Node) []*Node {
		return func(ops, r []*Node) []*Node {
			if len(ops) == 5 {
				return change(r)
			}
			return r
		}
	}
	checkProbe(t, probeLookup, &selectCall, emu, map[string]func(ops, r []*Node) []*Node{
		"whose totals are one short": lookupOnly(func(r []*Node) []*Node { return []*Node{r[0], r[1], AddScalar(r[2], -1), r[3]} }),
		"whose padded starts are one off": lookupOnly(func(r []*Node) []*Node {
			return []*Node{r[0], r[1], r[2], AddScalar(r[3], 1)}
		}),
		"wrong for four query rows a head": func(ops, r []*Node) []*Node {
			if len(ops) == 5 && ops[0].Shape().Dimensions[0] > ops[1].Shape().Dimensions[0] {
				return []*Node{r[0], MulScalar(r[1], 2), r[2], r[3]}
			}
			return r
		},
	})
	defer lookupProbed.Delete(testBackend())
	if !ProbeLookup(testBackend()) {
		t.Fatalf("ProbeLookup failed with the emulated kernels")
	}
	// Under SelectAuto the probe's result decides, up to LookupAutoMaxWork rows × padded clusters; SelectOn takes the
	// kernel past it too.
	for _, c := range []struct {
		probed bool
		m, k   int
		mode   SelectMode
		want   bool
	}{{false, 4, 1638, SelectAuto, false}, {true, 4, 1638, SelectAuto, true}, {true, 1, 6554, SelectAuto, true},
		{true, 4, 6554, SelectAuto, false}, {true, 4, 6554, SelectOn, true}, {true, 1, 1638, SelectOff, false}} {
		lookupProbed.Store(testBackend(), c.probed)
		var got bool
		MustExecOnceN(testBackend(), func(x *Node) []*Node {
			g := x.Graph()
			ix := LayerIndex{Centroids: Zeros(g, shapes.Make(dtypes.Float32, 2, c.k, 8)), Lookup: c.mode}
			got = useLookupKernel(Zeros(g, shapes.Make(dtypes.Float32, 2, c.m, 8)), ix)
			return []*Node{x}
		}, tensors.FromValue(int32(1)))
		if got != c.want {
			t.Errorf("probe result %v, %d rows, %d clusters, mode %v: lookup kernel used = %v", c.probed, c.m, c.k, c.mode, got)
		}
	}
}

// TestLookupKernelConfigs: every Kp from 256 to selectMaxKp has an embedded lookup config that launches with any
// grid, distinct from kernel A's; there is none past selectMaxKp.
func TestLookupKernelConfigs(t *testing.T) {
	for kp := 256; kp <= selectMaxKp; kp *= 2 {
		cfg := lookupConfig(kp - 1)
		if cfg == "" {
			t.Fatalf("Kp %d: no embedded lookup config", kp)
		}
		if got := pagedBackendConfig(cfg, 77); !strings.Contains(got, "grid_x = 77 : i32") || strings.Count(got, "grid_x") != 1 {
			t.Errorf("Kp %d: launch config %.60q…", kp, got)
		}
		if a, _ := selectConfigs(kp, false); a == cfg {
			t.Errorf("Kp %d: the lookup config is kernel A's", kp)
		}
	}
	if lookupConfig(selectMaxKp+1) != "" {
		t.Errorf("a lookup config past %d clusters", selectMaxKp)
	}
}
