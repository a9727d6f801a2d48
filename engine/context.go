package engine

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/squeezeai/sqllm/llama"
	"github.com/squeezeai/sqllm/llama/prefixcache"
	"github.com/squeezeai/sqllm/model"
)

// CacheSource says where a fixed context's KV cache came from.
type CacheSource string

const (
	FromMemory   CacheSource = "memory hit"
	FromDisk     CacheSource = "disk hit"
	FromComputed CacheSource = "computed"
)

// Context is a fixed context (a document, a code base, a manual) prefilled once: any number of requests
// continue it, each from the pristine prefix. It holds a reference on the cached prefix until Close.
// A Context may be used by several goroutines at once; Close waits for its calls in progress.
type Context struct {
	m       *Model
	prefix  *llama.Prefix
	release func()
	life    gate
	// Source is where the prefix came from; Duration how long getting it took (tokenization included).
	Source   CacheSource
	Duration time.Duration
	// Tokens is the number of context tokens.
	Tokens int
	// Note reports a cache problem that was handled (e.g. a damaged disk entry that was recomputed).
	Note string
	// WriteDuration is the time spent writing a newly computed prefix to the disk cache.
	WriteDuration time.Duration
}

// cacheState is a Model's prefix cache: in memory (ref-counted, LRU under a byte budget) and on disk.
type cacheState struct {
	mem       *prefixcache.Memory[*llama.Prefix]
	disk      *prefixcache.Disk // nil: no disk cache
	modelFP   string
	tokFP     string
	noCaching bool
}

func (m *Model) initCache(opts Options) error {
	budget := opts.MemoryCacheBytes
	if budget == 0 {
		budget = 2 << 30
	}
	m.cache = &cacheState{noCaching: opts.NoCache}
	m.cache.mem = prefixcache.NewMemory[*llama.Prefix](budget, func(_ prefixcache.Key, p *llama.Prefix) { p.Free() })
	if opts.NoCache {
		return nil
	}
	var err error
	if m.cache.modelFP, err = modelFingerprint(m.Dir, opts.RandomWeights); err != nil {
		return err
	}
	if m.cache.tokFP, err = fileFingerprint(filepath.Join(m.Dir, "tokenizer.json"), -1); err != nil {
		return err
	}
	if opts.CacheDir != "-" {
		dir := opts.CacheDir
		if dir == "" {
			dir = prefixcache.DefaultDir()
		}
		if m.cache.disk, err = prefixcache.OpenDisk(dir); err != nil {
			return fmt.Errorf("prefix cache directory %s: %w", dir, err)
		}
	}
	return nil
}

// PurgeMemoryCache frees every cached prefix that no Context holds (the disk cache is kept).
func (m *Model) PurgeMemoryCache() {
	if m != nil && m.cache != nil {
		m.cache.mem.Purge()
	}
}

// CacheDir is the disk cache directory in use ("" when there is none).
func (m *Model) CacheDir() string {
	if m == nil || m.cache == nil || m.cache.disk == nil {
		return ""
	}
	return m.cache.disk.Dir()
}

// NewContext prefills a fixed context: text is tokenized with the tokenizer's special tokens (BOS), and the
// KV cache comes from memory, from disk, or is computed (and then stored in both).
func (m *Model) NewContext(ctx context.Context, text string) (c *Context, err error) {
	defer recoverTo(&err)
	if err := m.enter(); err != nil {
		return nil, err
	}
	defer m.exit()
	return m.newContext(ctx, m.Tokenizer.Encode(text, true), m.squeeze)
}

// NewContextTokens is NewContext for token ids.
func (m *Model) NewContextTokens(ctx context.Context, tokens []int) (c *Context, err error) {
	if m == nil {
		return nil, ErrClosed
	}
	return m.NewContextSqueezed(ctx, tokens, m.squeeze)
}

// NewContextSqueezed is NewContextTokens with explicit Squeezed Attention options (nil: dense),
// overriding Options.Squeeze for this context.
func (m *Model) NewContextSqueezed(ctx context.Context, tokens []int, sq *llama.SqueezeOptions) (c *Context, err error) {
	defer recoverTo(&err)
	if err := m.enter(); err != nil {
		return nil, err
	}
	defer m.exit()
	return m.newContext(ctx, tokens, sq)
}

func (m *Model) newContext(ctx context.Context, tokens []int, sq *llama.SqueezeOptions) (c *Context, err error) {
	start := time.Now()
	if len(tokens) == 0 {
		return nil, errors.New("engine: the fixed context is empty")
	}
	if sq, err = normalizeSqueeze(sq); err != nil {
		return nil, err
	}
	if len(tokens) >= m.Runner.MaxLen() {
		return nil, fmt.Errorf("engine: %w: the fixed context has %d tokens, the model's context is %d",
			model.ErrContextTooLong, len(tokens), m.Runner.MaxLen())
	}
	c = &Context{m: m, Tokens: len(tokens)}
	if m.cache.noCaching {
		if c.prefix, err = m.Runner.Prefill(ctx, tokens); err != nil {
			return nil, err
		}
		if sq != nil {
			if err := c.prefix.Squeeze(ctx, *sq); err != nil {
				c.prefix.Free()
				return nil, err
			}
		}
		c.release = c.prefix.Free
		c.Source, c.Duration = FromComputed, time.Since(start)
		return c, nil
	}
	key := prefixcache.MakeKey(m.cache.modelFP, m.DType(), tokens)
	// The computation may outlive this call (when ctx is cancelled while another caller waits for the
	// same prefix): it must not touch c, only these, which are read only once it has returned here.
	// In memory, a squeezed prefix (KV + index) is a different entry from a dense one; on disk they share
	// the KV entry, and the squeeze index has an entry of its own (see loadSqueezeIndex).
	memKey := key
	if sq != nil {
		memKey = prefixcache.MakeKey(fmt.Sprintf("%s|squeeze %s", m.cache.modelFP, sq), m.DType(), tokens)
	}
	source, note, indexComputed := FromMemory, "", false
	p, release, _, err := m.cache.mem.GetOrCompute(ctx, memKey, func(ctx context.Context) (*llama.Prefix, int64, error) {
		// The computation may outlive a caller that gave up: it registers itself so that Close waits.
		if err := m.enter(); err != nil {
			return nil, 0, err
		}
		defer m.exit()
		// Evict now what inserting this prefix will evict, so that its computation has their memory.
		m.cache.mem.MakeRoom(m.Runner.PrefixBytes(len(tokens)))
		p, src, why, werr := m.loadOrComputePrefix(ctx, key, tokens)
		if werr != nil {
			return nil, 0, werr
		}
		computed := false
		if sq != nil {
			loaded := false
			if src == FromDisk {
				var inote string
				loaded, inote = m.loadSqueezeIndex(p, tokens, *sq)
				why = joinNotes(why, inote)
			}
			if !loaded {
				if werr := p.Squeeze(ctx, *sq); werr != nil {
					p.Free()
					return nil, 0, werr
				}
				computed = true
			}
		}
		source, note, indexComputed = src, why, computed
		return p, p.Bytes(), nil
	})
	if err != nil {
		return nil, err
	}
	c.prefix, c.release, c.Note = p, release, note
	c.Source, c.Duration = source, time.Since(start)
	if m.cache.disk != nil && (source == FromComputed || indexComputed) {
		t0 := time.Now()
		if source == FromComputed {
			if werr := m.writePrefix(key, p); werr != nil {
				c.Note = joinNotes(c.Note, fmt.Sprintf("could not write the prefix cache entry: %v", werr))
			}
		}
		if indexComputed {
			if werr := m.writeSqueezeIndex(tokens, *sq, p); werr != nil {
				c.Note = joinNotes(c.Note, fmt.Sprintf("could not write the squeeze index: %v", werr))
			}
		}
		c.WriteDuration = time.Since(t0)
	}
	return c, nil
}

// normalizeSqueeze fills in the defaults of Squeezed Attention options; options that set neither a
// budget nor a sparsity (sparsity 0) mean dense attention: nil.
func normalizeSqueeze(sq *llama.SqueezeOptions) (*llama.SqueezeOptions, error) {
	if sq == nil || (sq.Budget == 0 && sq.Sparsity == 0) {
		return nil, nil
	}
	o, err := sq.Normalized()
	if err != nil {
		return nil, err
	}
	return &o, nil
}

// joinNotes joins non-empty notes with "; ".
func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// squeezeIndexEntry is the disk cache key and expected Meta of the squeeze index of a prefix: its own
// entry, keyed by the model, dtype, tokens and the index's geometry (options, capacity, centroids), in the
// compact dtypes of llama.SqueezeLayout.
func (m *Model) squeezeIndexEntry(tokens []int, opts llama.SqueezeOptions) (prefixcache.Key, prefixcache.Meta, error) {
	shapes, blobDTypes, geometry, err := m.Runner.SqueezeLayout(len(tokens), opts)
	if err != nil {
		return prefixcache.Key{}, prefixcache.Meta{}, err
	}
	key := prefixcache.MakeKey(m.cache.modelFP+"|squeeze index|"+geometry, m.DType(), tokens)
	meta := prefixcache.Meta{ModelFingerprint: m.cache.modelFP, TokenizerFingerprint: m.cache.tokFP,
		DType: m.DType(), Shapes: shapes, BlobDTypes: blobDTypes, Tokens: tokens,
		Extra: map[string]string{"squeeze_index": geometry}}
	return key, meta, nil
}

// loadSqueezeIndex installs the prefix's squeeze index from the disk cache, if there is a valid one. A
// damaged or mismatched entry (checksums, shapes, options, or contents: labels, counts, centroids,
// threshold) is refused, removed and reported in the note; the caller then recomputes the index.
func (m *Model) loadSqueezeIndex(p *llama.Prefix, tokens []int, opts llama.SqueezeOptions) (ok bool, note string) {
	if m.cache.disk == nil {
		return false, ""
	}
	key, meta, err := m.squeezeIndexEntry(tokens, opts)
	if err != nil {
		return false, "" // Squeeze reports it
	}
	blobs, err := m.cache.disk.Read(key, meta)
	switch {
	case errors.Is(err, prefixcache.ErrMiss):
		return false, ""
	case err != nil:
		return false, fmt.Sprintf("squeeze index refused (%v); recomputed", err)
	}
	if err := p.LoadSqueeze(opts, blobs); err != nil {
		_ = m.cache.disk.Remove(key)
		return false, fmt.Sprintf("squeeze index %s refused (%v); recomputed", m.cache.disk.Path(key), err)
	}
	return true, ""
}

func (m *Model) writeSqueezeIndex(tokens []int, opts llama.SqueezeOptions, p *llama.Prefix) error {
	key, meta, err := m.squeezeIndexEntry(tokens, opts)
	if err != nil {
		return err
	}
	blobs, err := p.SqueezeBlobs()
	if err != nil {
		return err
	}
	return m.cache.disk.Write(key, meta, blobs)
}

func (m *Model) meta(tokens []int) prefixcache.Meta {
	shapes := m.Runner.BlobShapes(len(tokens))
	dt := make([]string, len(shapes))
	for i := range dt {
		dt[i] = m.DType()
	}
	return prefixcache.Meta{ModelFingerprint: m.cache.modelFP, TokenizerFingerprint: m.cache.tokFP,
		DType: m.DType(), Shapes: shapes, BlobDTypes: dt, Tokens: tokens}
}

// loadOrComputePrefix reads the prefix from disk, or computes it. A damaged or mismatched entry is
// refused (the cache removes it) and recomputed; the note says so.
func (m *Model) loadOrComputePrefix(ctx context.Context, key prefixcache.Key, tokens []int) (*llama.Prefix, CacheSource, string, error) {
	var note string
	if m.cache.disk != nil {
		// Blob by blob from the file to the device: the host holds a few layers' keys or values, not the
		// whole cache (68 GB for LLaMA-2-7B at 130,000 tokens).
		p, err := m.Runner.PrefixFromBlobFunc(tokens, func(each func(i int, b []byte) error) error {
			return m.cache.disk.ReadEach(key, m.meta(tokens), each)
		})
		switch {
		case err == nil:
			return p, FromDisk, "", nil
		case errors.Is(err, prefixcache.ErrMiss):
		default:
			note = fmt.Sprintf("disk cache entry refused (%v); recomputed", err)
		}
	}
	p, err := m.Runner.Prefill(ctx, tokens)
	if err != nil {
		return nil, "", "", err
	}
	return p, FromComputed, note, nil
}

// writePrefix writes p's KV cache to the disk cache, one layer's keys or values on the host at a time
// (WriteFrom reads each twice from the device: for the header's checksums, then for the file).
func (m *Model) writePrefix(key prefixcache.Key, p *llama.Prefix) error {
	return m.cache.disk.WriteFrom(key, m.meta(p.Tokens()), p.NumBlobs(), p.Blob)
}

// Close releases the context's reference on its prefix, once the context's calls in progress have
// returned. Closing twice is harmless.
func (c *Context) Close() {
	if c == nil || c.release == nil || !c.life.close() {
		return
	}
	c.release()
	if c.m.life.isClosed() {
		c.m.cache.mem.Purge() // the model's Close could not free a prefix still held
	}
}

// Generate continues the fixed context with req.Prompt (the user input, tokenized without special tokens;
// it may be empty) and samples up to MaxTokens tokens. Every call starts from the pristine prefix.
func (c *Context) Generate(ctx context.Context, req Request) (res Response, err error) {
	defer recoverTo(&err)
	if c == nil || c.release == nil || !c.life.enter() {
		return res, errContextClosed
	}
	defer c.life.exit()
	if err := c.m.enter(); err != nil {
		return res, err
	}
	defer c.m.exit()
	input := req.PromptTokens
	if input == nil {
		input = c.m.Tokenizer.Encode(req.Prompt, false)
	}
	seq := c.prefix.NewSequence()
	defer seq.Close()
	// The pending token is a slice of the prefix's tokens, shared by every request: clip it so that
	// appending the input copies instead of writing into the shared array.
	prompt := append(slices.Clip(seq.TakePending()), input...)
	res, err = c.m.generate(ctx, seq, prompt, req)
	if err == nil {
		if kept, steps, kerr := seq.SqueezeKept(); kerr != nil {
			err = kerr
		} else if steps > 0 {
			res.SqueezeKept = kept
		}
	}
	return res, err
}

// fileFingerprint hashes a file's first limit bytes (all when limit < 0) and its size.
func fileFingerprint(path string, limit int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s:%d:", filepath.Base(path), st.Size())
	var r io.Reader = f
	if limit >= 0 {
		r = io.LimitReader(f, limit)
	}
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// modelFingerprint identifies a checkpoint cheaply: config.json, and every safetensors file's size and
// header (which lists every tensor's name, dtype, shape and offsets).
func modelFingerprint(dir string, random bool) (string, error) {
	h := sha256.New()
	cfg, err := fileFingerprint(filepath.Join(dir, "config.json"), -1)
	if err != nil {
		return "", err
	}
	h.Write([]byte(cfg))
	if random {
		h.Write([]byte("random-weights seed 1"))
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	slices.Sort(files)
	for _, f := range files {
		fp, err := safetensorsFingerprint(f)
		if err != nil {
			return "", err
		}
		h.Write([]byte(fp))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func safetensorsFingerprint(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	var n [8]byte
	_, err = io.ReadFull(f, n[:])
	f.Close()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return fileFingerprint(path, 8+min(int64(binary.LittleEndian.Uint64(n[:])), 100<<20))
}

// Squeeze describes the context's Squeezed Attention index; ok is false when attention is dense.
func (c *Context) Squeeze() (info llama.SqueezeInfo, ok bool) { return c.prefix.SqueezeInfo() }
