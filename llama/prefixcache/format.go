package prefixcache

import (
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"strconv"
)

// CurrentFormatVersion is the version of the file format written by Disk.Write. Read treats a file of
// another version as ErrMismatch (it will be recomputed and rewritten).
const CurrentFormatVersion = 1

// File layout (all integers little-endian):
//
//	offset 0   magic "SQLLMKV\x00"                      8 bytes
//	offset 8   format version                            uint32
//	offset 12  header length H                           uint32
//	offset 16  header: H bytes of JSON, exactly
//	           {"header_crc32c":<uint32>,"body":<body>}
//	           where header_crc32c is the CRC-32C of the raw bytes of <body>, and <body> is the JSON
//	           of fileBody (key, Meta, blob lengths, CRC-32C of each blob)
//	offset 16+H the blobs, back to back, in order
//
// The file size is exactly 16 + H + sum(blob lengths), and each blob length is the product of its
// shape times the size of its dtype.
const (
	magic         = "SQLLMKV\x00"
	preambleLen   = 16
	maxHeaderLen  = 64 << 20 // the header (JSON) must be smaller than this
	maxEntryBytes = math.MaxInt64 / 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Meta describes an entry. Write stores it in the entry's header; Read refuses an entry whose Meta does
// not match what the caller expects (see Disk.Read).
type Meta struct {
	// FormatVersion is set by Write (CurrentFormatVersion); ignored in Read's expect.
	FormatVersion int `json:"format_version"`
	// ModelFingerprint is a hash of the model config and weights headers (computed by the caller).
	ModelFingerprint     string `json:"model_fingerprint"`
	TokenizerFingerprint string `json:"tokenizer_fingerprint"`
	// DType is the dtype of the KV cache: "f32" | "bf16".
	DType string `json:"dtype"`
	// Shapes is the shape of each blob's tensor (caller-defined); one per blob.
	Shapes [][]int `json:"shapes"`
	// BlobDTypes is the dtype of each blob (one per blob), one of the names known to DTypeSize. Each
	// blob must hold exactly product(shape) × DTypeSize(dtype) bytes.
	BlobDTypes []string `json:"blob_dtypes"`
	// Tokens are the prefix token ids, stored and compared in full, so that a hash collision can never
	// return a wrong prefix.
	Tokens []int `json:"tokens"`
	// Extra is free-form (e.g. squeeze index parameters). Read requires every key present in the
	// expected Extra to be stored with the same value; stored keys that are not expected are ignored.
	Extra map[string]string `json:"extra,omitempty"`
}

// fileBody is the checksummed part of the header.
type fileBody struct {
	Key      string   `json:"key"`
	Meta     Meta     `json:"meta"`
	BlobLens []int64  `json:"blob_lens"`
	BlobCRCs []uint32 `json:"blob_crc32c"`
}

// fileHeader is how the header is parsed back: Body keeps the exact bytes that HeaderCRC covers.
type fileHeader struct {
	HeaderCRC *uint32         `json:"header_crc32c"`
	Body      json.RawMessage `json:"body"`
}

// encodeHeader returns the header JSON for body.
func encodeHeader(body *fileBody) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return headerBytes(crc32.Checksum(b, castagnoli), b), nil
}

// headerBytes returns the canonical header: {"header_crc32c":<crc>,"body":<body>}.
func headerBytes(crc uint32, body []byte) []byte {
	h := make([]byte, 0, len(body)+48)
	h = append(h, `{"header_crc32c":`...)
	h = strconv.AppendUint(h, uint64(crc), 10)
	h = append(h, `,"body":`...)
	h = append(h, body...)
	h = append(h, '}')
	return h
}

var dtypeSizes = map[string]int64{
	"f64": 8, "float64": 8,
	"f32": 4, "float32": 4,
	"f16": 2, "float16": 2,
	"bf16": 2, "bfloat16": 2,
	"i64": 8, "int64": 8,
	"i32": 4, "int32": 4,
	"i16": 2, "int16": 2,
	"i8": 1, "int8": 1,
	"u64": 8, "uint64": 8,
	"u32": 4, "uint32": 4,
	"u16": 2, "uint16": 2,
	"u8": 1, "uint8": 1,
	"bool": 1,
}

// DTypeSize returns the size in bytes of one element of a blob dtype ("f32", "bf16", "f16", "f64",
// "i8".."i64", "u8".."u64", "bool", or the long names "float32", "bfloat16", "int32", ...), and false
// for an unknown dtype.
func DTypeSize(dtype string) (int64, bool) {
	n, ok := dtypeSizes[dtype]
	return n, ok
}

// blobSize returns product(shape) × size(dtype), refusing negative dimensions, unknown dtypes and
// overflows.
func blobSize(shape []int, dtype string) (int64, error) {
	size, ok := DTypeSize(dtype)
	if !ok {
		return 0, fmt.Errorf("unknown dtype %q", dtype)
	}
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && size > maxEntryBytes/int64(d) {
			return 0, fmt.Errorf("shape %v × %s is too large", shape, dtype)
		}
		size *= int64(d)
	}
	return size, nil
}

// checkLayout checks that shapes and dtypes describe n blobs and returns their sizes.
func checkLayout(shapes [][]int, dtypes []string, n int) ([]int64, error) {
	if len(shapes) != n {
		return nil, fmt.Errorf("%d shapes for %d blobs", len(shapes), n)
	}
	if len(dtypes) != n {
		return nil, fmt.Errorf("%d blob dtypes for %d blobs", len(dtypes), n)
	}
	sizes := make([]int64, n)
	var total int64
	for i := range n {
		s, err := blobSize(shapes[i], dtypes[i])
		if err != nil {
			return nil, fmt.Errorf("blob %d: %w", i, err)
		}
		if total += s; total > maxEntryBytes {
			return nil, fmt.Errorf("blobs total more than %d bytes", int64(maxEntryBytes))
		}
		sizes[i] = s
	}
	return sizes, nil
}

// compareMeta returns a description of the first difference between the stored Meta and the expected
// one, or "" when they match.
func compareMeta(got, want *Meta) string {
	switch {
	case got.FormatVersion != CurrentFormatVersion:
		return fmt.Sprintf("format version %d, want %d", got.FormatVersion, CurrentFormatVersion)
	case got.ModelFingerprint != want.ModelFingerprint:
		return fmt.Sprintf("made by another model (fingerprint %s, want %s)",
			short(got.ModelFingerprint), short(want.ModelFingerprint))
	case got.TokenizerFingerprint != want.TokenizerFingerprint:
		return fmt.Sprintf("made with another tokenizer (fingerprint %s, want %s)",
			short(got.TokenizerFingerprint), short(want.TokenizerFingerprint))
	case got.DType != want.DType:
		return fmt.Sprintf("dtype %q, want %q", got.DType, want.DType)
	case len(got.Shapes) != len(want.Shapes):
		return fmt.Sprintf("%d blobs, want %d", len(got.Shapes), len(want.Shapes))
	}
	for i := range got.Shapes {
		if !slices.Equal(got.Shapes[i], want.Shapes[i]) {
			return fmt.Sprintf("blob %d has shape %v, want %v", i, got.Shapes[i], want.Shapes[i])
		}
	}
	for i := range got.BlobDTypes {
		if got.BlobDTypes[i] != want.BlobDTypes[i] {
			return fmt.Sprintf("blob %d has dtype %q, want %q", i, got.BlobDTypes[i], want.BlobDTypes[i])
		}
	}
	if !slices.Equal(got.Tokens, want.Tokens) {
		i := 0
		for i < len(got.Tokens) && i < len(want.Tokens) && got.Tokens[i] == want.Tokens[i] {
			i++
		}
		return fmt.Sprintf("prefix tokens differ (%d stored, want %d; first difference at index %d)",
			len(got.Tokens), len(want.Tokens), i)
	}
	keys := make([]string, 0, len(want.Extra))
	for k := range want.Extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if v, ok := got.Extra[k]; !ok || v != want.Extra[k] {
			if !ok {
				return fmt.Sprintf("extra %q missing, want %q", k, short(want.Extra[k]))
			}
			return fmt.Sprintf("extra %q is %q, want %q", k, short(v), short(want.Extra[k]))
		}
	}
	return ""
}

// short abbreviates long fingerprints in messages.
func short(s string) string {
	const n = 16
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
