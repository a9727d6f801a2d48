package llama

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/gomlx/compute/dtypes"
	"github.com/gomlx/compute/dtypes/bfloat16"
	"github.com/gomlx/gomlx/core/tensors"
)

// Storage of a prefix's squeeze index, in compact dtypes, as blobs for the prefix cache: per layer
//
//	centroids [numKVHeads, K, headDim]   bf16 (the index rounds them to bf16 when it clusters, so the
//	                                     stored index is bit for bit the computed one; they load in
//	                                     the model's centroidDType: bfloat16 or float32)
//	counts    [numKVHeads, K]            i32
//	labels    [numKVHeads, clustered]    i16 when K ≤ 32767, else i32
//
// and for a hierarchical index (the fine level grouped by coarse cluster: the non-empty fine clusters
// first, each coarse cluster's children contiguous, see squeeze.KMeansHierarchical) two more:
//
//	coarse centroids [numKVHeads, K1, headDim]  bf16 (rounded when clustered, as the fine ones)
//	children         [numKVHeads, K1]           i32: fine clusters per coarse cluster
//
// (the coarse clusters' counts are their children's keys, recomputed on load), then one params blob [4] f64: the calibrated threshold, the fraction of the clustered keys the
// calibration queries kept (both 0 in fixed-budget mode), and the options' sparsity and budget (checked on
// load); in the attention-mass mode [4 + layers]: the threshold is the mass target, and each layer's
// kept-list size follows. Everything else (clustered keys, window, K, budget, the static kept-list size) follows from the
// options, the number of tokens and the KV capacity. A flat index's blobs never load as a hierarchical one
// or the reverse: their numbers of blobs differ, and so do the options in the geometry.

// squeezeFormat names the layout above; it is part of SqueezeLayout's geometry, so a change of layout
// makes older entries mismatch (and be recomputed) instead of being misread.
const squeezeFormat = "sqidx/1"

// SqueezeLayout describes the stored index of a prefix of nTokens context tokens squeezed with opts: the
// shape and dtype (prefixcache's names) of each blob, and a geometry string that identifies the index
// (options, capacity, K, clustered keys, window, format) for cache keys and checks. It fails where
// Squeeze would (bad options, too short a context).
func (r *Runner) SqueezeLayout(nTokens int, opts SqueezeOptions) (shapes [][]int, blobDTypes []string, geometry string, err error) {
	if opts, err = opts.Normalized(); err != nil {
		return nil, nil, "", err
	}
	rows := nTokens - 1
	idx, err := newSqueezeIndex(opts, rows, r.ctxCapacity(max(rows, 1)))
	if err != nil {
		return nil, nil, "", err
	}
	shapes, blobDTypes = r.squeezeLayout(idx)
	return shapes, blobDTypes, idx.geometry(), nil
}

func (idx *squeezeIndex) geometry() string {
	g := fmt.Sprintf("%s %s capacity=%d k=%d clustered=%d window_rows=%d budget=%d max_kept=%d",
		squeezeFormat, idx.opts, idx.capacity, idx.k, idx.clustered, idx.window, idx.budget, idx.maxKept)
	if idx.k1 > 0 {
		g += fmt.Sprintf(" k1=%d slots=%d", idx.k1, idx.slots)
	}
	return g
}

// blobsPerLayer is the number of blobs of each layer in the stored layout.
func (idx *squeezeIndex) blobsPerLayer() int {
	if idx.k1 > 0 {
		return 5
	}
	return 3
}

// labelDType is the storage dtype of the labels of an index of k centroids.
func labelDType(k int) string {
	if k <= math.MaxInt16 {
		return "i16"
	}
	return "i32"
}

func (r *Runner) squeezeLayout(idx *squeezeIndex) (shapes [][]int, blobDTypes []string) {
	c := r.cfg
	for range c.NumHiddenLayers {
		shapes = append(shapes, []int{c.NumKeyValueHeads, idx.k, c.HeadDim}, []int{c.NumKeyValueHeads, idx.k},
			[]int{c.NumKeyValueHeads, idx.clustered})
		blobDTypes = append(blobDTypes, "bf16", "i32", labelDType(idx.k))
		if idx.k1 > 0 {
			shapes = append(shapes, []int{c.NumKeyValueHeads, idx.k1, c.HeadDim}, []int{c.NumKeyValueHeads, idx.k1})
			blobDTypes = append(blobDTypes, "bf16", "i32")
		}
	}
	params := 4
	if idx.opts.Mass {
		params += c.NumHiddenLayers // the attention-mass mode's kept-list size per layer
	}
	return append(shapes, []int{params}), append(blobDTypes, "f64")
}

// SqueezeBlobs exports the prefix's squeeze index for storage (see SqueezeLayout for the layout).
func (p *Prefix) SqueezeBlobs() ([][]byte, error) {
	sq := p.sq
	if sq == nil {
		return nil, errors.New("llama: the prefix has no squeeze index")
	}
	c := p.r.cfg
	kvh, hd, k, k1 := c.NumKeyValueHeads, c.HeadDim, sq.k, sq.k1
	bf16 := func(bits []uint16) []byte {
		b := make([]byte, 0, 2*len(bits))
		for _, x := range bits {
			b = binary.LittleEndian.AppendUint16(b, x)
		}
		return b
	}
	i32 := func(x []float32) []byte {
		b := make([]byte, 0, 4*len(x))
		for _, n := range x {
			b = binary.LittleEndian.AppendUint32(b, uint32(int32(n)))
		}
		return b
	}
	var blobs [][]byte
	for l := range c.NumHiddenLayers {
		cent, err := centroidBits(l, sq.centroids[l])
		if err != nil {
			return nil, err
		}
		counts, err := tensors.CopyFlatData[float32](sq.counts[l])
		if err != nil {
			return nil, fmt.Errorf("llama: reading the squeeze index: %w", err)
		}
		var coarse []uint16
		var children []float32
		if k1 > 0 { // packed: see unpackIndex
			coarse, cent = headCols(cent, kvh, k+k1, k, k+k1, hd), headCols(cent, kvh, k+k1, 0, k, hd)
			children, counts = headCols(counts, kvh, k+2*k1, k+k1, k+2*k1, 1), headCols(counts, kvh, k+2*k1, 0, k, 1)
		}
		b := bf16(cent)
		cb := i32(counts)
		labels, err := tensors.CopyFlatData[int32](sq.labels[l])
		if err != nil {
			return nil, fmt.Errorf("llama: reading the squeeze index: %w", err)
		}
		capacity := sq.labels[l].Shape().Dimensions[1]
		wide := labelDType(sq.k) == "i32"
		lb := make([]byte, 0, 4*c.NumKeyValueHeads*sq.clustered)
		for h := range c.NumKeyValueHeads {
			for _, x := range labels[h*capacity : h*capacity+sq.clustered] {
				if wide {
					lb = binary.LittleEndian.AppendUint32(lb, uint32(x))
				} else {
					lb = binary.LittleEndian.AppendUint16(lb, uint16(int16(x)))
				}
			}
		}
		blobs = append(blobs, b, cb, lb)
		if k1 > 0 {
			blobs = append(blobs, bf16(coarse), i32(children))
		}
	}
	var params []byte
	for _, x := range []float64{float64(sq.threshold), sq.calibratedKept, sq.opts.Sparsity, sq.opts.Budget} {
		params = binary.LittleEndian.AppendUint64(params, math.Float64bits(x))
	}
	for _, n := range sq.layerKept {
		params = binary.LittleEndian.AppendUint64(params, math.Float64bits(float64(n)))
	}
	return append(blobs, params), nil
}

// headCols cuts columns [from, to) of each head's rows of width w out of a packed [kvh, w, inner] array.
func headCols[T any](x []T, kvh, w, from, to, inner int) []T {
	out := make([]T, 0, kvh*(to-from)*inner)
	for h := range kvh {
		out = append(out, x[(h*w+from)*inner:(h*w+to)*inner]...)
	}
	return out
}

// centroidBits reads layer l's centroid tensor (bfloat16, or float32 holding bfloat16 values:
// centroidDType) as bfloat16 bit patterns.
func centroidBits(l int, t *tensors.Tensor) ([]uint16, error) {
	if t.DType() == dtypes.BFloat16 {
		x, err := tensors.CopyFlatData[bfloat16.BFloat16](t)
		if err != nil {
			return nil, fmt.Errorf("llama: reading the squeeze index: %w", err)
		}
		bits := make([]uint16, len(x))
		for i, v := range x {
			bits[i] = v.Bits()
		}
		return bits, nil
	}
	x, err := tensors.CopyFlatData[float32](t)
	if err != nil {
		return nil, fmt.Errorf("llama: reading the squeeze index: %w", err)
	}
	bits := make([]uint16, len(x))
	for i, v := range x {
		b := math.Float32bits(v)
		if b&0xffff != 0 {
			return nil, fmt.Errorf("llama: internal error: layer %d centroid value %d (%g) is not a bfloat16", l, i, v)
		}
		bits[i] = uint16(b >> 16)
	}
	return bits, nil
}

// centroidTensor makes a layer's centroid tensor [kvh, a, hd] of dtype dt (centroidDType) from values that
// are bfloat16 values (read from storage): exact in either dtype.
func centroidTensor(x []float32, dt dtypes.DType, kvh, a, hd int) *tensors.Tensor {
	if dt != dtypes.BFloat16 {
		return tensors.FromFlatDataAndDimensions(x, kvh, a, hd)
	}
	b := make([]bfloat16.BFloat16, len(x))
	for i, v := range x {
		b[i] = bfloat16.FromBits(uint16(math.Float32bits(v) >> 16))
	}
	return tensors.FromFlatDataAndDimensions(b, kvh, a, hd)
}

// LoadSqueeze installs a stored squeeze index (SqueezeBlobs' output for the same tokens and options)
// instead of clustering. Everything is checked before it is used: blob sizes, centroids finite, labels
// in [0, K), counts equal to each cluster's number of labels (so they sum to the clustered keys), and the
// calibrated threshold and kept fraction sane; a failed check is an error naming the layer, head and
// value, and the prefix keeps its previous index (if any).
func (p *Prefix) LoadSqueeze(opts SqueezeOptions, blobs [][]byte) (err error) {
	start := time.Now()
	if opts, err = opts.Normalized(); err != nil {
		return err
	}
	if p.kv == nil {
		return errors.New("llama: load squeeze index: the prefix is freed")
	}
	r := p.r
	c := r.cfg
	idx, err := newSqueezeIndex(opts, p.cachedRows(), p.kv.capacity())
	if err != nil {
		return err
	}
	shapesWant, dtypesWant := r.squeezeLayout(idx)
	if len(blobs) != len(shapesWant) {
		return fmt.Errorf("llama: squeeze index has %d blobs, want %d", len(blobs), len(shapesWant))
	}
	for i, shape := range shapesWant {
		n := 1
		for _, d := range shape {
			n *= d
		}
		size := map[string]int{"bf16": 2, "i16": 2, "i32": 4, "f64": 8}[dtypesWant[i]]
		if len(blobs[i]) != n*size {
			return fmt.Errorf("llama: squeeze index blob %d has %d bytes, want %d (%v %s)", i, len(blobs[i]), n*size, shape, dtypesWant[i])
		}
	}
	defer func() {
		if err != nil {
			idx.free()
		}
	}()
	kvh, hd, k, k1, capacity := c.NumKeyValueHeads, c.HeadDim, idx.k, idx.k1, idx.capacity
	per := idx.blobsPerLayer()
	toDevice := func(t *tensors.Tensor) (*tensors.Tensor, error) {
		if err := t.MaterializeOnDevice(r.backend, false, 0); err != nil {
			t.FinalizeAll()
			return nil, fmt.Errorf("llama: loading the squeeze index: %w", err)
		}
		t.FinalizeLocal()
		return t, nil
	}
	for l := range c.NumHiddenLayers {
		cb, nb, lb := blobs[per*l], blobs[per*l+1], blobs[per*l+2]
		readBF16 := func(b []byte, what string) ([]float32, error) {
			x := make([]float32, len(b)/2)
			for i := range x {
				x[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
				if math.IsNaN(float64(x[i])) || math.IsInf(float64(x[i]), 0) {
					return nil, fmt.Errorf("llama: squeeze index layer %d: %s value %d is %g", l, what, i, x[i])
				}
			}
			return x, nil
		}
		cent, err := readBF16(cb, "centroid")
		if err != nil {
			return err
		}
		counts := make([]float32, kvh*k)
		for i := range counts {
			n := int32(binary.LittleEndian.Uint32(nb[4*i:]))
			if n < 0 || int(n) > idx.clustered {
				return fmt.Errorf("llama: squeeze index layer %d head %d: cluster %d has %d keys (%d clustered)", l, i/k, i%k, n, idx.clustered)
			}
			counts[i] = float32(n)
		}
		labels := make([]int32, kvh*capacity) // rows past the clustered keys: 0 (never read)
		seen := make([]int, k)
		for h := range kvh {
			clear(seen)
			for j := range idx.clustered {
				var x int32
				if labelDType(k) == "i32" {
					x = int32(binary.LittleEndian.Uint32(lb[4*(h*idx.clustered+j):]))
				} else {
					x = int32(int16(binary.LittleEndian.Uint16(lb[2*(h*idx.clustered+j):])))
				}
				if x < 0 || int(x) >= k {
					return fmt.Errorf("llama: squeeze index layer %d head %d: key %d has label %d, outside [0, %d)", l, h, j, x, k)
				}
				labels[h*capacity+j] = x
				seen[x]++
			}
			for cl, n := range seen {
				if float32(n) != counts[h*k+cl] {
					return fmt.Errorf("llama: squeeze index layer %d head %d: cluster %d has %d keys but a count of %g",
						l, h, cl, n, counts[h*k+cl])
				}
			}
		}
		if k1 > 0 {
			if cent, counts, err = loadCoarse(l, kvh, k, k1, hd, cent, counts, blobs[per*l+3], blobs[per*l+4], readBF16); err != nil {
				return err
			}
		}
		ct, err := toDevice(centroidTensor(cent, r.centroidDType(), kvh, k+k1, hd))
		if err != nil {
			return err
		}
		idx.centroids = append(idx.centroids, ct)
		nt, err := toDevice(tensors.FromFlatDataAndDimensions(counts, kvh, k+2*k1))
		if err != nil {
			return err
		}
		idx.counts = append(idx.counts, nt)
		lt, err := toDevice(tensors.FromFlatDataAndDimensions(labels, kvh, capacity))
		if err != nil {
			return err
		}
		idx.labels = append(idx.labels, lt)
	}
	if err := r.setClusterOrder(idx); err != nil {
		return err
	}
	if err := p.clusterMeans(idx); err != nil {
		return err
	}
	pb := blobs[per*c.NumHiddenLayers]
	param := func(i int) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(pb[8*i:])) }
	threshold, kept := param(0), param(1)
	if sparsity, budget := param(2), param(3); sparsity != opts.Sparsity || budget != opts.Budget {
		return fmt.Errorf("llama: squeeze index made with sparsity %g and budget %g, want %g and %g",
			sparsity, budget, opts.Sparsity, opts.Budget)
	}
	if opts.Calibrated() {
		// -Inf is a valid threshold (keep every key); +Inf, NaN or a negative probability are not.
		if math.IsNaN(threshold) || math.IsInf(threshold, 1) || (threshold < 0 && !math.IsInf(threshold, -1)) ||
			float64(float32(threshold)) != threshold {
			return fmt.Errorf("llama: squeeze index: calibrated threshold %g is not a probability", threshold)
		}
		if !(kept >= 0 && kept <= 1) {
			return fmt.Errorf("llama: squeeze index: calibrated kept fraction %g outside [0, 1]", kept)
		}
		idx.threshold, idx.calibratedKept = float32(threshold), kept
		if opts.Mass {
			if !(threshold > 0 && threshold <= 1) {
				return fmt.Errorf("llama: squeeze index: attention-mass target %g outside (0, 1]", threshold)
			}
			idx.layerKept = make([]int, c.NumHiddenLayers)
			for l := range idx.layerKept {
				n := param(4 + l)
				if n != math.Trunc(n) || n < float64(bucket64(opts.Window)+64) || n > float64(idx.maxKept) || int(n)%64 != 0 {
					return fmt.Errorf("llama: squeeze index: layer %d kept-list size %g outside [%d, %d] or not a multiple of 64",
						l, n, bucket64(opts.Window)+64, idx.maxKept)
				}
				idx.layerKept[l] = int(n)
			}
		}
	} else if threshold != 0 || kept != 0 {
		return fmt.Errorf("llama: squeeze index: a fixed-budget index with threshold %g and kept fraction %g (want 0, 0)", threshold, kept)
	}
	idx.loaded, idx.loadTime = true, time.Since(start)
	p.dropSqueeze()
	p.sq = idx
	return nil
}

// loadCoarse checks a stored hierarchical index's coarse level (coarse centroids finite; children ≥ 0,
// covering exactly the non-empty fine clusters, which come first) and packs the layer's fine centroids
// [numKVHeads, K, headDim] and counts [numKVHeads, K] with it as unpackIndex reads them; the coarse
// counts are the sums of their children's.
func loadCoarse(l, kvh, k, k1, hd int, cent, counts []float32, cb, nb []byte,
	readBF16 func([]byte, string) ([]float32, error)) (packedCent, packedCounts []float32, err error) {
	coarse, err := readBF16(cb, "coarse centroid")
	if err != nil {
		return nil, nil, err
	}
	packedCent = make([]float32, 0, kvh*(k+k1)*hd)
	packedCounts = make([]float32, 0, kvh*(k+2*k1))
	for h := range kvh {
		fine := counts[h*k : (h+1)*k]
		nonEmpty := 0
		for _, n := range fine {
			if n > 0 {
				nonEmpty++
			}
		}
		coarseCounts, children := make([]float32, k1), make([]float32, k1)
		first := 0
		for c := range k1 {
			n := int32(binary.LittleEndian.Uint32(nb[4*(h*k1+c):]))
			if n < 0 || first+int(n) > nonEmpty {
				return nil, nil, fmt.Errorf("llama: squeeze index layer %d head %d: coarse cluster %d has %d children (%d non-empty fine clusters, %d taken)",
					l, h, c, n, nonEmpty, first)
			}
			for j := first; j < first+int(n); j++ {
				if fine[j] == 0 {
					return nil, nil, fmt.Errorf("llama: squeeze index layer %d head %d: coarse cluster %d has the empty child %d", l, h, c, j)
				}
				coarseCounts[c] += fine[j]
			}
			children[c] = float32(n)
			first += int(n)
		}
		if first != nonEmpty {
			return nil, nil, fmt.Errorf("llama: squeeze index layer %d head %d: the coarse clusters have %d children, want the %d non-empty fine clusters",
				l, h, first, nonEmpty)
		}
		packedCent = append(append(packedCent, cent[h*k*hd:(h+1)*k*hd]...), coarse[h*k1*hd:(h+1)*k1*hd]...)
		packedCounts = append(append(append(packedCounts, fine...), coarseCounts...), children...)
	}
	return packedCent, packedCounts, nil
}
