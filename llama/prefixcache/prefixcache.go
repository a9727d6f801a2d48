// Package prefixcache stores the KV cache of long, fixed prompt prefixes so that they are computed
// once and reused by many requests (like vLLM automatic prefix caching or SGLang's radix cache).
//
// The package knows nothing about devices or tensors: the engine turns its KV tensors into byte blobs
// (and back), and this package keeps them
//   - in memory, in a Memory: an LRU with reference counts, a byte budget and single-flight
//     computation per key, and
//   - on disk, in a Disk: one self-describing, checksummed file per key, written atomically and
//     validated completely before any of it is trusted.
//
// A Key is a hash of (model fingerprint, dtype, prefix tokens). The hash is only an index: a Disk entry
// also stores its full Meta (including the tokens), and Read compares it with what the caller expects,
// so a hash collision, a stale file from another model, or a damaged file can never be returned as a
// valid cache.
package prefixcache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
)

// Key identifies a prefix: a SHA-256 over (model fingerprint, dtype, token ids). See MakeKey.
type Key [32]byte

// MakeKey returns the Key of the prefix tokens for a model (identified by its fingerprint) and a KV
// dtype. The encoding is unambiguous: every string is length-prefixed and every token is a fixed-size
// little-endian int64, under a domain-separation tag.
func MakeKey(modelFingerprint, dtype string, tokens []int) Key {
	h := sha256.New()
	var buf [8]byte
	writeString := func(s string) {
		binary.LittleEndian.PutUint64(buf[:], uint64(len(s)))
		h.Write(buf[:])
		h.Write([]byte(s))
	}
	writeString("sqllm/prefixcache/key/v1")
	writeString(modelFingerprint)
	writeString(dtype)
	binary.LittleEndian.PutUint64(buf[:], uint64(len(tokens)))
	h.Write(buf[:])
	// Hash the tokens in batches to keep the per-call overhead of h.Write low for long prefixes.
	batch := make([]byte, 0, 8*512)
	for _, t := range tokens {
		batch = binary.LittleEndian.AppendUint64(batch, uint64(int64(t)))
		if len(batch) == cap(batch) {
			h.Write(batch)
			batch = batch[:0]
		}
	}
	h.Write(batch)
	var k Key
	h.Sum(k[:0])
	return k
}

// String returns the key in lower-case hex (64 characters); it is also the entry's file name on disk.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// Errors returned by Disk.Read. Test with errors.Is: the returned errors wrap them and name the file
// and the problem.
var (
	// ErrMiss: there is no entry for the key.
	ErrMiss = errors.New("prefixcache: no entry")
	// ErrCorrupt: the entry's file is damaged (truncated, bad checksum, bad header, ...). The file has
	// been removed; recompute and Write it again.
	ErrCorrupt = errors.New("prefixcache: corrupt entry")
	// ErrMismatch: the entry is valid but was made for something else than what the caller expects
	// (another model, tokenizer, dtype, shapes, tokens, or file format version). The file has been
	// removed; recompute and Write it again.
	ErrMismatch = errors.New("prefixcache: mismatched entry")
)

// entryError is an error about one file: "prefixcache: <path>: <msg>[: <cause>]". It unwraps to its
// kind (ErrCorrupt or ErrMismatch) and to its cause, if any.
type entryError struct {
	path  string
	kind  error
	msg   string
	cause error
}

func (e *entryError) Error() string {
	s := "prefixcache: " + e.path + ": " + e.msg
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s
}

func (e *entryError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}
