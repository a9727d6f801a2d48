package llama

import (
	"context"
	"fmt"
	"testing"

	"github.com/gomlx/compute/dtypes"
)

// TestRemainderDecode: SqueezeOptions.Remainder (the dropped clusters attended through their centroids
// and mean values). On the calibration fixture, for each selection (global threshold, attention mass and
// the hierarchical index, at sparsity 0.7 and 0.9) decoding with the remainder is closer to dense (KL of the next-token
// distribution) than the same selection without it; with every key kept it equals dense attention; the
// index round-trips through storage (the means recomputed from the loaded labels give the same logits).
// The same over a hierarchical index (its unscored fine clusters attended through their coarse centroids,
// squeeze.HierarchicalMeanSums), which round-trips too.
func TestRemainderDecode(t *testing.T) {
	r := testRunner(t, dtypes.Float32, Options{})
	ids, dense, p := calibFixture(t, r)
	want, feed := dense[calibCtx:], ids[calibCtx:]
	decode := func() (agree int, worst, kl float64) { return closeness(want, decodeLogits(t, p, feed)) }
	for _, sel := range []string{"threshold", "mass", "hierarchical"} {
		mass, hier := sel == "mass", sel == "hierarchical"
		for _, sparsity := range []float64{0.7, 0.9} {
			name := fmt.Sprintf("sparsity %.1f %s", sparsity, sel)
			opts := SqueezeOptions{Sparsity: sparsity, Mass: mass, Hierarchical: hier}
			if err := p.Squeeze(context.Background(), opts); err != nil {
				t.Fatal(err)
			}
			agree0, _, kl0 := decode()
			opts.Remainder = true
			if err := p.Squeeze(context.Background(), opts); err != nil {
				t.Fatal(err)
			}
			if len(p.sq.means) != r.cfg.NumHiddenLayers || hier != (len(p.sq.meanSums) == r.cfg.NumHiddenLayers) {
				t.Fatalf("%s: %d layers of means, %d of mean sums", name, len(p.sq.means), len(p.sq.meanSums))
			}
			agree, worst, kl := decode()
			t.Logf("%s: KL from dense %.4f → %.4f with the remainder, top-1 agrees at %d → %d of %d (relative logit error %.2e)",
				name, kl0, kl, agree0, agree, len(feed), worst)
			if !(kl < kl0) {
				t.Errorf("%s: the remainder does not bring decoding closer to dense: KL %.4f, without it %.4f", name, kl, kl0)
			}
			if mass || sparsity != 0.9 {
				continue
			}
			// Storage: an index loaded from its blobs recomputes the same means (and a hierarchical one's mean
			// sums) and gives the same logits.
			blobs, err := p.SqueezeBlobs()
			if err != nil {
				t.Fatal(err)
			}
			q := reloadedPrefix(t, r, p, ids[:calibCtx], opts, blobs)
			if len(q.sq.means) != r.cfg.NumHiddenLayers || hier != (len(q.sq.meanSums) == r.cfg.NumHiddenLayers) {
				t.Fatalf("%s: loaded index: %d layers of means, %d of mean sums", name, len(q.sq.means), len(q.sq.meanSums))
			}
			checkLoadedIndex(t, p, q, blobs, feed[:4])
			q.Free()
			if hier {
				continue
			}
			// Every key kept: a threshold below every score, lists holding all keys.
			p.sq.threshold = -1
			p.sq.maxKept = bucket64(p.sq.capacity) + bucket64(100)
			p.sq.budget = p.sq.maxKept - p.sq.window
			if _, worst, _ := decode(); worst > 1e-4 {
				t.Errorf("every key kept, with the remainder: logits differ from dense by %.2e", worst)
			}
		}
	}
}
