package llama

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/gomlx/core/tensors"
)

// TestClusterHeadBatches: a layer clustered one KV head per call (clusterBytes too small for both of the
// bundled model's KV heads) gives the same index, bit for bit, as all heads in one call — centroids, counts,
// labels, cluster order, the remainder's means, and a hierarchical index's packed levels — and so the same
// decode logits. headBatch picks the largest divisor of the heads that fits.
func TestClusterHeadBatches(t *testing.T) {
	for _, tc := range []struct{ heads, capacity, k, bytes, want int }{
		{32, 32768, 1638, 8 << 30, 32}, {8, 131072, 6554, 8 << 30, 2}, {8, 131072, 6554, 1, 1}, {6, 100, 10, 4 * 100 * 10 * 3, 3},
	} {
		saved := clusterBytes
		clusterBytes = tc.bytes
		if got := headBatch(tc.heads, tc.capacity, tc.k); got != tc.want {
			t.Errorf("headBatch(%d, %d, %d) with %d bytes = %d, want %d", tc.heads, tc.capacity, tc.k, tc.bytes, got, tc.want)
		}
		clusterBytes = saved
	}

	r := testRunner(t, dtypes.Float32, Options{})
	ids, _, p := calibFixture(t, r)
	feed := ids[calibCtx : calibCtx+4]
	snapshot := func() (out [][]byte) {
		sq := p.sq
		for _, ts := range [][]*tensors.Tensor{sq.centroids, sq.counts, sq.labels, sq.starts, sq.order, sq.means} {
			for _, tt := range ts {
				tt.ConstBytes(func(b []byte) { out = append(out, slices.Clone(b)) })
			}
		}
		return out
	}
	for _, opts := range []SqueezeOptions{{Budget: 0.3, Remainder: true}, {Budget: 0.3, Hierarchical: true}} {
		name := fmt.Sprintf("hierarchical=%v", opts.Hierarchical)
		if err := p.Squeeze(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		whole, logits := snapshot(), decodeLogits(t, p, feed)
		saved := clusterBytes
		clusterBytes = 1 // one head per call
		err := p.Squeeze(context.Background(), opts)
		clusterBytes = saved
		if err != nil {
			t.Fatal(err)
		}
		batched := snapshot()
		if len(batched) != len(whole) || len(whole) < 5*r.cfg.NumHiddenLayers {
			t.Fatalf("%s: %d index tensors one head per call, %d at once", name, len(batched), len(whole))
		}
		for i := range whole {
			if !slices.Equal(whole[i], batched[i]) {
				t.Errorf("%s: index tensor %d differs when clustered one head per call", name, i)
			}
		}
		for i, row := range decodeLogits(t, p, feed) {
			if d := maxDiff(row, logits[i]); d != 0 {
				t.Errorf("%s: position %d: logits differ by %g", name, i, d)
			}
		}
	}
}
