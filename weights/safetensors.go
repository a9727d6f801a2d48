package weights

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"slices"
	"strings"
	"unicode/utf8"
)

// The safetensors layout: an 8-byte little-endian header length N, N bytes of JSON header, then the data
// section. The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
// relative to the data section, plus an optional "__metadata__" object of strings.

// MaxHeaderSize is the largest safetensors JSON header accepted (the reference implementation's limit).
const MaxHeaderSize = 100_000_000

const metadataKey = "__metadata__"

// headerTensor is one validated header entry.
type headerTensor struct {
	name       string
	dtype      DType
	shape      []int
	begin, end int64 // relative to the data section
}

// shard is one open safetensors file.
type shard struct {
	path     string
	mapping  []byte // the whole file, read-only
	data     []byte // the data section, a slice of mapping
	tensors  []headerTensor
	metadata map[string]string
}

// openShard reads and validates the header of the safetensors file at path, then maps the file.
// Errors carry no "weights: path:" prefix; the caller adds it.
func openShard(path string) (*shard, error) {
	f, err := os.Open(path)
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		return nil, fmt.Errorf("%s: %w", pe.Op, pe.Err) // the caller names the path
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("file too short for a safetensors header (size %d)", size)
	}
	var prefix [8]byte
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, 8), prefix[:]); err != nil {
		return nil, fmt.Errorf("read header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(prefix[:])
	if err := checkHeaderLength(n, size); err != nil {
		return nil, err
	}
	header := make([]byte, n)
	if _, err := io.ReadFull(io.NewSectionReader(f, 8, int64(n)), header); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	tensors, metadata, err := parseHeader(header, size)
	if err != nil {
		return nil, err
	}
	m, err := mapFile(f, size)
	if err != nil {
		return nil, err
	}
	return &shard{path: path, mapping: m, data: m[8+n:], tensors: tensors, metadata: metadata}, nil
}

func (s *shard) close() error {
	m := s.mapping
	s.mapping, s.data = nil, nil
	return unmapFile(m)
}

func checkHeaderLength(n uint64, fileSize int64) error {
	switch {
	case n < 2:
		return fmt.Errorf("header length %d is too small for a json object", n)
	case n > MaxHeaderSize:
		return fmt.Errorf("header length %d exceeds the limit of %d bytes", n, MaxHeaderSize)
	case n > uint64(fileSize-8):
		return fmt.Errorf("header length %d larger than the file allows (size %d)", n, fileSize)
	}
	return nil
}

// parseHeader validates a safetensors JSON header for a file of fileSize bytes whose header is len(header)
// bytes long: every tensor's dtype, shape and offsets, and that no two tensors overlap.
func parseHeader(header []byte, fileSize int64) ([]headerTensor, map[string]string, error) {
	dataStart := 8 + int64(len(header))
	dataLen := fileSize - dataStart
	if !utf8.Valid(header) {
		return nil, nil, errors.New("header is not valid utf-8")
	}
	members, err := objectMembers(header)
	if err != nil {
		return nil, nil, fmt.Errorf("header is not valid json: %w", err)
	}
	var metadata map[string]string
	tensors := make([]headerTensor, 0, len(members))
	for _, m := range members {
		if m.key == metadataKey {
			if err := json.Unmarshal(m.value, &metadata); err != nil {
				return nil, nil, errors.New("__metadata__ is not an object of strings")
			}
			continue
		}
		t, err := parseTensorEntry(m.key, m.value)
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", m.key, err)
		}
		if t.end > dataLen {
			return nil, nil, fmt.Errorf("tensor %q: data [%d, %d) beyond end of file (size %d)",
				t.name, dataStart+t.begin, dataStart+t.end, fileSize)
		}
		tensors = append(tensors, t)
	}
	// No two tensors may share a byte (empty tensors occupy none).
	byOffset := make([]*headerTensor, 0, len(tensors))
	for i := range tensors {
		if tensors[i].end > tensors[i].begin {
			byOffset = append(byOffset, &tensors[i])
		}
	}
	slices.SortFunc(byOffset, func(a, b *headerTensor) int {
		return cmp.Or(cmp.Compare(a.begin, b.begin), strings.Compare(a.name, b.name))
	})
	for i := 1; i < len(byOffset); i++ {
		a, b := byOffset[i-1], byOffset[i]
		if b.begin < a.end {
			return nil, nil, fmt.Errorf("tensors %q [%d, %d) and %q [%d, %d) overlap",
				a.name, a.begin, a.end, b.name, b.begin, b.end)
		}
	}
	return tensors, metadata, nil
}

// parseTensorEntry validates one {"dtype", "shape", "data_offsets"} entry on its own.
func parseTensorEntry(name string, value json.RawMessage) (headerTensor, error) {
	t := headerTensor{name: name}
	if name == "" {
		return t, errors.New("empty tensor name")
	}
	members, err := objectMembers(value)
	if err != nil {
		return t, fmt.Errorf("entry is not a json object: %w", err)
	}
	var dtype *string
	var shape, offsets []int64
	for _, m := range members {
		var err error
		switch m.key {
		case "dtype":
			err = json.Unmarshal(m.value, &dtype)
		case "shape":
			err = unmarshalNonNull(m.value, &shape)
		case "data_offsets":
			err = unmarshalNonNull(m.value, &offsets)
		default:
			continue // unknown fields are tolerated, as by the reference implementation's reader
		}
		if err != nil {
			return t, fmt.Errorf("bad %s %s: %w", m.key, abbreviate(m.value), err)
		}
	}
	switch {
	case dtype == nil:
		return t, errors.New("missing dtype")
	case shape == nil:
		return t, errors.New("missing shape")
	case offsets == nil:
		return t, errors.New("missing data_offsets")
	}
	t.dtype = DType(*dtype)
	size := int64(t.dtype.Size())
	if size == 0 {
		return t, fmt.Errorf("unsupported dtype %q", *dtype)
	}
	// Element count, refusing overflow: nothing real comes near 2^62 bytes.
	const limit = math.MaxInt64 / 16
	numel := int64(1)
	t.shape = make([]int, len(shape))
	for i, d := range shape {
		if d < 0 || d > limit || int64(int(d)) != d {
			return t, fmt.Errorf("bad dimension %d in shape %v", d, shape)
		}
		t.shape[i] = int(d)
		if d != 0 && numel > limit/d {
			return t, fmt.Errorf("shape %v is too large", shape)
		}
		numel *= d
	}
	if len(offsets) != 2 {
		return t, fmt.Errorf("data_offsets %v must be [begin, end]", offsets)
	}
	t.begin, t.end = offsets[0], offsets[1]
	if t.begin < 0 || t.end < t.begin {
		return t, fmt.Errorf("bad data_offsets [%d, %d]", t.begin, t.end)
	}
	if want := numel * size; t.end-t.begin != want {
		return t, fmt.Errorf("shape %v of %s needs %d bytes, but data_offsets [%d, %d) hold %d",
			shape, t.dtype, want, t.begin, t.end, t.end-t.begin)
	}
	if int64(int(t.end)) != t.end {
		return t, fmt.Errorf("data_offsets [%d, %d) too large for this platform", t.begin, t.end)
	}
	return t, nil
}

// unmarshalNonNull is json.Unmarshal that treats null as an error rather than leaving v unset.
func unmarshalNonNull(data json.RawMessage, v *[]int64) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return errors.New("null")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return err
	}
	if *v == nil {
		*v = []int64{}
	}
	return nil
}

// member is one key/value pair of a JSON object, in document order.
type member struct {
	key   string
	value json.RawMessage
}

// objectMembers splits a JSON object into its members, rejecting anything else, duplicate keys and
// trailing data.
func objectMembers(data []byte) ([]member, error) {
	var whole json.RawMessage
	if err := json.Unmarshal(data, &whole); err != nil { // full syntax check, with the offset of an error
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(whole))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("want an object, got %s", abbreviate(whole))
	}
	var members []member
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		members = append(members, member{key, v})
	}
	return members, nil
}

// abbreviate returns JSON text for an error message, shortened if long.
func abbreviate(raw []byte) string {
	s := string(bytes.TrimSpace(raw))
	if len(s) > 40 {
		cut := 37
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return s
}
