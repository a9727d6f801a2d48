package weights

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// FuzzIndex: whatever model.safetensors.index.json holds, OpenIndex (and OpenDir) either fail or open
// only files inside the index's directory, and every tensor of the result can be read in full.
//
// The fuzzed index lies in <root>/model beside two shards (a.safetensors: "a", "a.extra";
// b.safetensors: "b") and below <root>/outside.safetensors ("x") and <root>/model/sub/c.safetensors
// ("c"), which an index must never reach. Seeds: testdata/fuzz/FuzzIndex.
func FuzzIndex(f *testing.F) {
	root := f.TempDir()
	dir := filepath.Join(root, "model")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		f.Fatal(err)
	}
	for _, s := range []struct {
		path  string
		names []string
	}{
		{filepath.Join(dir, "a.safetensors"), []string{"a", "a.extra"}},
		{filepath.Join(dir, "b.safetensors"), []string{"b"}},
		{filepath.Join(dir, "sub", "c.safetensors"), []string{"c"}},
		{filepath.Join(root, "outside.safetensors"), []string{"x"}},
	} {
		var ts []WriteTensor
		for _, n := range s.names {
			ts = append(ts, WriteTensor{Name: n, DType: F32, Shape: []int{2}, Data: make([]byte, 8)})
		}
		if err := Write(s.path, ts, nil); err != nil {
			f.Fatal(err)
		}
	}
	index := filepath.Join(dir, IndexFileName)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(index, data, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, open := range []func() (*Checkpoint, error){
			func() (*Checkpoint, error) { return OpenIndex(index) },
			func() (*Checkpoint, error) { return OpenDir(dir) },
		} {
			c, err := open()
			if err != nil {
				if c != nil {
					t.Fatal("a checkpoint and an error")
				}
				continue
			}
			for _, file := range c.Files() {
				if filepath.Dir(file) != dir {
					t.Fatalf("the index opened %s, outside %s", file, dir)
				}
			}
			for _, name := range c.Names() {
				if !slices.Contains([]string{"a", "a.extra", "b"}, name) {
					t.Fatalf("tensor %q is not in the directory's shards", name)
				}
				raw, info, err := c.Raw(name)
				if err != nil || len(raw) != info.NumBytes() || len(raw) != 8 {
					t.Fatalf("%s: %d bytes, %v", name, len(raw), err)
				}
				if _, err := c.Float32(name); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
