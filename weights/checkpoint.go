package weights

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/squeezeai/sqllm/internal/limitread"
)

// File names of a Hugging Face checkpoint directory.
const (
	IndexFileName  = "model.safetensors.index.json"
	SingleFileName = "model.safetensors"
)

// Errors callers may test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrClosed   = errors.New("weights: checkpoint is closed")
)

// Checkpoint is an open set of safetensors files (one, or the shards of an index) whose tensors are
// memory-mapped. Reading methods may be called concurrently; Close must not run concurrently with them.
type Checkpoint struct {
	shards   []*shard
	tensors  map[string]*tensorEntry
	names    []string // sorted
	metadata map[string]string
	closed   bool
}

type tensorEntry struct {
	info       TensorInfo
	shard      *shard
	begin, end int64 // in shard.data
}

// Open opens a checkpoint directory (see OpenDir), a model.safetensors.index.json file, or a single
// safetensors file.
func Open(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	switch {
	case st.IsDir():
		return OpenDir(path)
	case strings.HasSuffix(path, ".index.json"):
		return OpenIndex(path)
	}
	return OpenFile(path)
}

// OpenDir opens a model directory: model.safetensors.index.json if present, else model.safetensors, else the
// directory's only *.safetensors file (several without an index are an error).
func OpenDir(dir string) (*Checkpoint, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("weights: %s: not a directory", dir)
	}
	if p := filepath.Join(dir, IndexFileName); exists(p) {
		return OpenIndex(p)
	}
	if p := filepath.Join(dir, SingleFileName); exists(p) {
		return OpenFile(p)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if err != nil {
		return nil, fmt.Errorf("weights: %s: %w", dir, err)
	}
	switch len(files) {
	case 0:
		return nil, fmt.Errorf("weights: %s: no %s, %s or other *.safetensors file", dir, IndexFileName, SingleFileName)
	case 1:
		return OpenFile(files[0])
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	return nil, fmt.Errorf("weights: %s: several safetensors files (%s) and no %s to say which to use",
		dir, strings.Join(files, ", "), IndexFileName)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// OpenFile opens one safetensors file.
func OpenFile(path string) (*Checkpoint, error) {
	s, err := openShard(path)
	if err != nil {
		return nil, fmt.Errorf("weights: %s: %w", path, err)
	}
	c := &Checkpoint{shards: []*shard{s}, tensors: make(map[string]*tensorEntry, len(s.tensors))}
	for i := range s.tensors {
		c.add(s, &s.tensors[i])
	}
	c.finish()
	return c, nil
}

// OpenIndex opens the shards listed in the weight_map of a model.safetensors.index.json file. Shard names
// must be plain file names in the index's directory, and every tensor must be in the shard the index
// names. Tensors present in a shard but absent from the index are ignored, as by transformers.
func OpenIndex(indexPath string) (*Checkpoint, error) {
	wrap := func(err error) error { return fmt.Errorf("weights: %s: %w", indexPath, err) }
	st, err := os.Stat(indexPath)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	if st.Size() > MaxHeaderSize {
		return nil, wrap(fmt.Errorf("index file too large (%d bytes)", st.Size()))
	}
	data, err := limitread.File(indexPath, MaxHeaderSize) // also bounds a device or pipe, whose size is 0
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	weightMap, err := parseIndex(data)
	if err != nil {
		return nil, wrap(err)
	}

	// Group tensors by shard, shards in sorted order.
	byShard := map[string][]string{}
	for _, m := range weightMap {
		byShard[m.shard] = append(byShard[m.shard], m.tensor)
	}
	shardNames := make([]string, 0, len(byShard))
	for name := range byShard {
		shardNames = append(shardNames, name)
	}
	slices.Sort(shardNames)

	dir := filepath.Dir(indexPath)
	c := &Checkpoint{tensors: make(map[string]*tensorEntry, len(weightMap))}
	for _, shardName := range shardNames {
		tensors := byShard[shardName]
		path := filepath.Join(dir, shardName)
		s, err := openShard(path)
		if err != nil {
			c.Close()
			if errors.Is(err, fs.ErrNotExist) {
				return nil, wrap(fmt.Errorf("shard %q (holding tensor %q) does not exist", shardName, tensors[0]))
			}
			return nil, fmt.Errorf("weights: %s: %w", path, err)
		}
		c.shards = append(c.shards, s)
		inShard := make(map[string]*headerTensor, len(s.tensors))
		for i := range s.tensors {
			inShard[s.tensors[i].name] = &s.tensors[i]
		}
		for _, name := range tensors {
			t, ok := inShard[name]
			if !ok {
				c.Close()
				return nil, fmt.Errorf("weights: %s: tensor %q listed in %s is not in this file",
					path, name, filepath.Base(indexPath))
			}
			c.add(s, t)
		}
	}
	c.finish()
	return c, nil
}

type indexEntry struct{ tensor, shard string }

// parseIndex returns the weight_map of an index file, validated, in document order.
func parseIndex(data []byte) ([]indexEntry, error) {
	top, err := objectMembers(data)
	if err != nil {
		return nil, fmt.Errorf("not a valid index file: %w", err)
	}
	var raw json.RawMessage
	for _, m := range top {
		if m.key == "weight_map" {
			raw = m.value
		}
	}
	if raw == nil {
		return nil, errors.New("index file has no weight_map")
	}
	members, err := objectMembers(raw)
	if err != nil {
		return nil, fmt.Errorf("bad weight_map: %w", err)
	}
	if len(members) == 0 {
		return nil, errors.New("weight_map is empty")
	}
	entries := make([]indexEntry, 0, len(members))
	for _, m := range members {
		var shard string
		if err := json.Unmarshal(m.value, &shard); err != nil {
			return nil, fmt.Errorf("weight_map: tensor %q: shard %s is not a string", m.key, abbreviate(m.value))
		}
		if m.key == "" {
			return nil, errors.New("weight_map: empty tensor name")
		}
		if !isPlainFileName(shard) {
			return nil, fmt.Errorf("weight_map: tensor %q: shard %q: index file points outside the directory",
				m.key, shard)
		}
		entries = append(entries, indexEntry{m.key, shard})
	}
	return entries, nil
}

// isPlainFileName reports whether name names a file directly inside a directory: not empty, not "." or
// "..", no path separator of any OS, not absolute, no volume name.
func isPlainFileName(name string) bool {
	return name != "" && name != "." && name != ".." &&
		!strings.ContainsAny(name, `/\`+"\x00") &&
		!filepath.IsAbs(name) && filepath.VolumeName(name) == ""
}

func (c *Checkpoint) add(s *shard, t *headerTensor) {
	c.tensors[t.name] = &tensorEntry{
		info:  TensorInfo{Name: t.name, DType: t.dtype, Shape: t.shape, File: s.path},
		shard: s, begin: t.begin, end: t.end,
	}
}

func (c *Checkpoint) finish() {
	c.names = make([]string, 0, len(c.tensors))
	for name := range c.tensors {
		c.names = append(c.names, name)
	}
	slices.Sort(c.names)
	for _, s := range c.shards {
		for k, v := range s.metadata {
			if c.metadata == nil {
				c.metadata = map[string]string{}
			}
			if _, ok := c.metadata[k]; !ok {
				c.metadata[k] = v
			}
		}
	}
}

// Names returns the names of all tensors, sorted.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Files returns the paths of the safetensors files the checkpoint maps.
func (c *Checkpoint) Files() []string {
	files := make([]string, len(c.shards))
	for i, s := range c.shards {
		files[i] = s.path
	}
	return files
}

// Metadata returns the "__metadata__" entries of the files (the first file's value wins a conflict).
func (c *Checkpoint) Metadata() map[string]string {
	m := make(map[string]string, len(c.metadata))
	for k, v := range c.metadata {
		m[k] = v
	}
	return m
}

// Info describes the named tensor.
func (c *Checkpoint) Info(name string) (TensorInfo, bool) {
	e, ok := c.tensors[name]
	if !ok {
		return TensorInfo{}, false
	}
	info := e.info
	info.Shape = slices.Clone(info.Shape)
	return info, true
}

func (c *Checkpoint) lookup(name string) (*tensorEntry, error) {
	if c.closed {
		return nil, ErrClosed
	}
	e, ok := c.tensors[name]
	if !ok {
		return nil, fmt.Errorf("weights: tensor %q: %w", name, ErrNotFound)
	}
	return e, nil
}

// Raw returns the named tensor's little-endian bytes. They are the memory-mapped file: read-only (writing
// faults) and valid only until Close.
func (c *Checkpoint) Raw(name string) ([]byte, TensorInfo, error) {
	e, err := c.lookup(name)
	if err != nil {
		return nil, TensorInfo{}, err
	}
	info := e.info
	info.Shape = slices.Clone(info.Shape)
	return e.shard.data[e.begin:e.end:e.end], info, nil
}

// Float32 returns a new copy of the named tensor converted to float32 (from F32, F16, BF16 or F64).
func (c *Checkpoint) Float32(name string) ([]float32, error) {
	e, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if !e.info.DType.IsFloat() {
		return nil, fmt.Errorf("weights: %s: tensor %q: cannot convert %s to float32", e.shard.path, name, e.info.DType)
	}
	return DecodeFloat32(e.shard.data[e.begin:e.end], e.info.DType)
}

// BFloat16 returns a new copy of the named tensor as bfloat16 bit patterns: BF16 copied, F32, F16 and F64
// rounded to nearest even.
func (c *Checkpoint) BFloat16(name string) ([]uint16, error) {
	e, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if !e.info.DType.IsFloat() {
		return nil, fmt.Errorf("weights: %s: tensor %q: cannot convert %s to bfloat16", e.shard.path, name, e.info.DType)
	}
	return DecodeBFloat16(e.shard.data[e.begin:e.end], e.info.DType)
}

// Close unmaps the files. Slices returned by Raw must not be used afterwards; Float32 and BFloat16
// results are copies and stay valid.
func (c *Checkpoint) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, s := range c.shards {
		if err := s.close(); err != nil {
			errs = append(errs, fmt.Errorf("weights: %s: %w", s.path, err))
		}
	}
	return errors.Join(errs...)
}

// ShapeMismatch is one tensor whose shape differs from the expected one.
type ShapeMismatch struct {
	Name      string
	Got, Want []int
}

// MismatchError lists how a checkpoint differs from the tensors a model expects. Each list is sorted.
type MismatchError struct {
	Missing    []string
	Unexpected []string
	Misshaped  []ShapeMismatch
}

// maxListed is how many entries of each kind MismatchError.Error spells out.
const maxListed = 10

func (e *MismatchError) Error() string {
	var parts []string
	list := func(prefix string, names []string) {
		if len(names) == 0 {
			return
		}
		s := prefix + " " + strings.Join(names[:min(len(names), maxListed)], ", ")
		if len(names) > maxListed {
			s += fmt.Sprintf(" and %d more", len(names)-maxListed)
		}
		parts = append(parts, s)
	}
	list("missing", e.Missing)
	list("unexpected", e.Unexpected)
	for i, m := range e.Misshaped {
		if i == maxListed {
			parts = append(parts, fmt.Sprintf("%d more mis-shaped", len(e.Misshaped)-maxListed))
			break
		}
		parts = append(parts, fmt.Sprintf("%s has shape %v, want %v", m.Name, m.Got, m.Want))
	}
	return "weights: checkpoint does not match the model: " + strings.Join(parts, "; ")
}

// CheckShapes compares the checkpoint's tensors with the names and shapes a model expects. A tensor the
// model does not expect is tolerated when ignore (which may be nil) returns true for its name, e.g. for
// rotary_emb.inv_freq buffers. Any difference is returned as one *MismatchError.
func (c *Checkpoint) CheckShapes(expected map[string][]int, ignore func(name string) bool) error {
	e := &MismatchError{}
	for name, want := range expected {
		t, ok := c.tensors[name]
		switch {
		case !ok:
			e.Missing = append(e.Missing, name)
		case !slices.Equal(t.info.Shape, want):
			e.Misshaped = append(e.Misshaped, ShapeMismatch{name, slices.Clone(t.info.Shape), slices.Clone(want)})
		}
	}
	for _, name := range c.names {
		if _, ok := expected[name]; !ok && (ignore == nil || !ignore(name)) {
			e.Unexpected = append(e.Unexpected, name)
		}
	}
	if len(e.Missing)+len(e.Unexpected)+len(e.Misshaped) == 0 {
		return nil
	}
	slices.Sort(e.Missing)
	slices.SortFunc(e.Misshaped, func(a, b ShapeMismatch) int { return strings.Compare(a.Name, b.Name) })
	return e
}
