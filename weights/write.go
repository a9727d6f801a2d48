package weights

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"unicode/utf8"
)

// WriteTensor is one tensor for Write: Data holds its little-endian elements (see EncodeFloat32).
type WriteTensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// Write writes tensors, in the given order, and metadata (may be nil) as one safetensors file at path.
// The file appears atomically: it is written to a temporary file in the same directory and renamed.
func Write(path string, tensors []WriteTensor, metadata map[string]string) (err error) {
	header, err := encodeHeader(tensors, metadata)
	if err != nil {
		return fmt.Errorf("weights: write %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("weights: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("weights: write %s: %w", path, err)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	var prefix [8]byte
	binary.LittleEndian.PutUint64(prefix[:], uint64(len(header)))
	w.Write(prefix[:])
	w.Write(header)
	for _, t := range tensors {
		w.Write(t.Data)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// encodeHeader validates the tensors and returns the JSON header, padded with spaces to a multiple of
// 8 bytes so that the data section is 8-byte aligned.
func encodeHeader(tensors []WriteTensor, metadata map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // keys sorted
		if err != nil {
			return nil, err
		}
		b.WriteString(`"__metadata__":`)
		b.Write(m)
	}
	seen := make(map[string]bool, len(tensors))
	var offset int64
	for _, t := range tensors {
		switch {
		case t.Name == "":
			return nil, errors.New("empty tensor name")
		case !utf8.ValidString(t.Name):
			return nil, fmt.Errorf("tensor name %q is not valid utf-8", t.Name)
		case t.Name == metadataKey:
			return nil, fmt.Errorf("tensor name %q is reserved", t.Name)
		case seen[t.Name]:
			return nil, fmt.Errorf("duplicate tensor %q", t.Name)
		case t.DType.Size() == 0:
			return nil, fmt.Errorf("tensor %q: unsupported dtype %q", t.Name, t.DType)
		}
		seen[t.Name] = true
		numel := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return nil, fmt.Errorf("tensor %q: bad shape %v", t.Name, t.Shape)
			}
			numel *= int64(d)
		}
		if want := numel * int64(t.DType.Size()); int64(len(t.Data)) != want {
			return nil, fmt.Errorf("tensor %q: shape %v of %s needs %d bytes, got %d",
				t.Name, t.Shape, t.DType, want, len(t.Data))
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(t.Name)
		b.Write(name)
		b.WriteString(`:{"dtype":`)
		b.WriteString(strconv.Quote(string(t.DType)))
		b.WriteString(`,"shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(d))
		}
		end := offset + int64(len(t.Data))
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, offset, end)
		offset = end
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > MaxHeaderSize {
		return nil, fmt.Errorf("header of %d bytes exceeds the limit of %d", b.Len(), MaxHeaderSize)
	}
	return slices.Clip(b.Bytes()), nil
}
