package llama

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/core/tensors"
)

// Prefix is the KV cache of a fixed context, computed once and shared read-only by any number of
// sequences (the setting of prefix caching and Squeezed Attention). As in vLLM and SGLang, the last
// context token is not in the cache: every sequence started from the prefix feeds it first, so that its
// logits come out of the same step as the user input's (and an empty user input works).
type Prefix struct {
	r      *Runner
	kv     *kvTensors // [numKVHeads, capacity, headDim] per layer; rows [0, len(tokens)-1) valid
	tokens []int      // all context tokens, the last one included
	sq     *squeezeIndex
}

// Prefill computes the prefix of a fixed context of at least one token.
func (r *Runner) Prefill(ctx context.Context, tokens []int) (*Prefix, error) {
	if len(tokens) == 0 {
		return nil, errors.New("llama: empty fixed context")
	}
	if len(tokens) > r.maxLen {
		return nil, fmt.Errorf("llama: fixed context of %d tokens exceeds the model's context %d", len(tokens), r.maxLen)
	}
	p := &Prefix{r: r, tokens: slices.Clone(tokens)}
	if len(tokens) == 1 {
		p.kv = r.newKV(r.ctxCapacity(1))
		return p, nil
	}
	seq := r.NewSequence()
	if _, err := seq.Append(ctx, tokens[:len(tokens)-1]); err != nil {
		seq.Close()
		return nil, err
	}
	if seq.dynLen != 0 {
		seq.Close()
		return nil, errors.New("llama: internal error: prefill left tokens in the dynamic segment")
	}
	p.kv, seq.ctx = seq.ctx, nil // take ownership of the context buffers
	seq.Close()
	return p, nil
}

// Tokens returns the context's token ids.
func (p *Prefix) Tokens() []int { return slices.Clone(p.tokens) }

// Len is the number of context tokens.
func (p *Prefix) Len() int { return len(p.tokens) }

// Bytes is the device memory the prefix holds.
func (p *Prefix) Bytes() int64 {
	if p.kv == nil || len(p.kv.k) == 0 {
		return 0
	}
	var n int64
	for _, t := range append(slices.Clone(p.kv.k), p.kv.v...) {
		n += int64(t.Shape().Memory())
	}
	return n
}

// PrefixBytes is the size of the KV cache of a prefix of n context tokens on the device (Prefix.Bytes of
// the prefix Prefill returns for them), before any squeeze index.
func (r *Runner) PrefixBytes(n int) int64 {
	c := r.cfg
	rows := r.ctxCapacity(max(n-1, 1))
	return 2 * int64(c.NumHiddenLayers) * int64(c.NumKeyValueHeads*rows*c.HeadDim) * int64(r.weights.DType.Size())
}

// Free releases the device buffers. Sequences started from the prefix must be closed first.
func (p *Prefix) Free() {
	p.dropSqueeze()
	p.kv.finalize()
	p.kv = nil
}

// NewSequence starts a sequence that continues the fixed context: it holds the prefix read-only and its
// first Append is preceded by the context's last token.
func (p *Prefix) NewSequence() *Sequence {
	return &Sequence{r: p.r, ctx: p.kv, ctxLen: len(p.tokens) - 1, shared: true, sq: p.sq,
		pending: p.tokens[len(p.tokens)-1 : len(p.tokens) : len(p.tokens)]} // no spare capacity to append into
}

// cachedRows is the number of tokens whose keys and values are stored.
func (p *Prefix) cachedRows() int { return len(p.tokens) - 1 }

// Blobs exports the cache for storage: the keys of every layer, then the values of every layer, each
// [numKVHeads, rows, headDim] of the cached rows in the compute dtype's bytes. BlobShapes gives their
// shapes. It holds the whole cache on the host; Blob reads one at a time (prefixcache.Disk.WriteFrom).
func (p *Prefix) Blobs() ([][]byte, error) {
	blobs := make([][]byte, p.NumBlobs())
	for i := range blobs {
		b, err := p.Blob(i)
		if err != nil {
			return nil, err
		}
		blobs[i] = b
	}
	return blobs, nil
}

// NumBlobs is the number of Blobs: two per layer.
func (p *Prefix) NumBlobs() int { return 2 * p.r.cfg.NumHiddenLayers }

// Blob is Blobs()[i], read from the device alone.
func (p *Prefix) Blob(i int) ([]byte, error) {
	if p.kv == nil {
		return nil, errors.New("llama: prefix is freed")
	}
	if i < 0 || i >= p.NumBlobs() {
		return nil, fmt.Errorf("llama: prefix blob %d of %d", i, p.NumBlobs())
	}
	c := p.r.cfg
	rows := p.cachedRows()
	t := p.kv.k[i%c.NumHiddenLayers]
	if i >= c.NumHiddenLayers {
		t = p.kv.v[i-c.NumHiddenLayers]
	}
	capacity := t.Shape().Dimensions[1]
	elem := t.Shape().DType.Size()
	out := make([]byte, c.NumKeyValueHeads*rows*c.HeadDim*elem)
	err := t.ConstBytes(func(data []byte) {
		rowBytes := c.HeadDim * elem
		for h := range c.NumKeyValueHeads {
			src := data[h*capacity*rowBytes : (h*capacity+rows)*rowBytes]
			copy(out[h*rows*rowBytes:], src)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("llama: reading the KV cache: %w", err)
	}
	// ConstBytes left a host copy of the whole buffer in the tensor: drop it, or the host holds the cache
	// twice (LLaMA-2-7B at 130,000 tokens: 2 × 68 GB, which killed a 128 GB machine in session 12).
	if t.IsOnAnyDevice() {
		t.FinalizeLocal()
	}
	return out, nil
}

// BlobShapes is the shape of each blob of a prefix of n context tokens (see Blobs).
func (r *Runner) BlobShapes(n int) [][]int {
	c := r.cfg
	shapes := make([][]int, 2*c.NumHiddenLayers)
	for i := range shapes {
		shapes[i] = []int{c.NumKeyValueHeads, max(n-1, 0), c.HeadDim}
	}
	return shapes
}

// PrefixFromBlobs rebuilds a prefix of the given context tokens from Blobs' output.
func (r *Runner) PrefixFromBlobs(tokens []int, blobs [][]byte) (*Prefix, error) {
	if len(blobs) != 2*r.cfg.NumHiddenLayers {
		return nil, fmt.Errorf("llama: prefix has %d blobs, want %d", len(blobs), 2*r.cfg.NumHiddenLayers)
	}
	return r.PrefixFromBlobFunc(tokens, func(each func(i int, b []byte) error) error {
		for i, b := range blobs {
			if err := each(i, b); err != nil {
				return err
			}
		}
		return nil
	})
}

// PrefixFromBlobFunc is PrefixFromBlobs with the blobs handed over one at a time: read calls each(i, b)
// for i = 0, 1, ... in order (prefixcache.Disk.ReadEach), and each moves blob i to the device before it
// returns, so that the host never holds more than the blobs read has in flight. An error of read is
// returned as it is (after the buffers made so far are freed).
func (r *Runner) PrefixFromBlobFunc(tokens []int, read func(each func(i int, b []byte) error) error) (*Prefix, error) {
	c := r.cfg
	if len(tokens) == 0 || len(tokens) > r.maxLen {
		return nil, fmt.Errorf("llama: prefix of %d tokens (context %d)", len(tokens), r.maxLen)
	}
	rows := len(tokens) - 1
	capacity := r.ctxCapacity(max(rows, 1))
	dtype := r.weights.DType
	elem := dtype.Size()
	rowBytes := c.HeadDim * elem
	want := c.NumKeyValueHeads * rows * rowBytes
	n := 2 * c.NumHiddenLayers
	kv := &kvTensors{}
	next := 0
	each := func(i int, b []byte) error {
		switch {
		case i != next || i >= n:
			return fmt.Errorf("llama: prefix blob %d handed over after %d of %d", i, next, n)
		case len(b) != want:
			return fmt.Errorf("llama: prefix blob %d has %d bytes, want %d", i, len(b), want)
		}
		t := tensors.FromShape(shapes.Make(dtype, c.NumKeyValueHeads, capacity, c.HeadDim))
		err := t.MutableBytes(func(data []byte) {
			for h := range c.NumKeyValueHeads {
				copy(data[h*capacity*rowBytes:], b[h*rows*rowBytes:(h+1)*rows*rowBytes])
			}
		})
		if err == nil {
			err = t.MaterializeOnDevice(r.backend, false, 0)
		}
		if err != nil {
			t.FinalizeAll()
			return fmt.Errorf("llama: loading prefix: %w", err)
		}
		t.FinalizeLocal()
		if i < c.NumHiddenLayers {
			kv.k = append(kv.k, t)
		} else {
			kv.v = append(kv.v, t)
		}
		next++
		return nil
	}
	if err := read(each); err != nil {
		kv.finalize()
		return nil, err
	}
	if next != n {
		kv.finalize()
		return nil, fmt.Errorf("llama: prefix has %d blobs, want %d", next, n)
	}
	return &Prefix{r: r, kv: kv, tokens: slices.Clone(tokens)}, nil
}
