package prefixcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func fuzzEntry() (Key, Meta, [][]byte) {
	meta := Meta{
		ModelFingerprint:     "fuzz-model",
		TokenizerFingerprint: "fuzz-tok",
		DType:                "bf16",
		Shapes:               [][]int{{2, 3}, {4}},
		BlobDTypes:           []string{"f32", "bf16"},
		Tokens:               []int{1, 2, 3},
	}
	blobs := [][]byte{[]byte("0123456789abcdefghijklmn"), []byte("ABCDEFGH")}
	return MakeKey(meta.ModelFingerprint, meta.DType, meta.Tokens), meta, blobs
}

// FuzzRead: whatever bytes are in the entry's file, Read returns valid blobs or an ErrCorrupt /
// ErrMismatch error (after which the file is gone), and never panics or over-allocates.
func FuzzRead(f *testing.F) {
	k, meta, blobs := fuzzEntry()
	d, err := OpenDisk(filepath.Join(f.TempDir(), "seed"))
	if err != nil {
		f.Fatal(err)
	}
	if err := d.Write(k, meta, blobs); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(d.Path(k))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(good[:40])
	f.Add([]byte{})
	f.Add([]byte(magic))
	flipped := bytes.Clone(good)
	flipped[len(flipped)-5] ^= 1
	f.Add(flipped)
	huge := bytes.Clone(good)
	binary.LittleEndian.PutUint32(huge[12:], 0xfffffff0)
	f.Add(huge)

	dir := filepath.Join(f.TempDir(), "fuzz")
	fd, err := OpenDisk(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		path := fd.Path(k)
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := fd.Read(k, meta)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMismatch) {
				t.Fatalf("unexpected kind of error: %v", err)
			}
			if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("bad file not removed after %v", err)
			}
			return
		}
		if len(got) != len(blobs) {
			t.Fatalf("%d blobs, want %d", len(got), len(blobs))
		}
		for i := range got {
			if len(got[i]) != len(blobs[i]) {
				t.Fatalf("blob %d: %d bytes, want %d", i, len(got[i]), len(blobs[i]))
			}
		}
		_ = os.Remove(path)
	})
}
