package prefixcache

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testEntry returns a Meta and matching blobs: a K and a V blob per layer, bf16 (ints as bytes),
// plus one f32 blob, filled with a pattern derived from fill.
func testEntry(layers int, fill byte) (Key, Meta, [][]byte) {
	tokens := []int{1, 15043, 29892, 3186, 29991, 0, 32000}
	meta := Meta{
		ModelFingerprint:     "model-fp-0123456789abcdef0123456789abcdef",
		TokenizerFingerprint: "tok-fp-fedcba9876543210",
		DType:                "bf16",
		Tokens:               tokens,
		Extra:                map[string]string{"note": "test"},
	}
	var blobs [][]byte
	add := func(shape []int, dtype string) {
		n, _ := blobSize(shape, dtype)
		b := make([]byte, n)
		for i := range b {
			b[i] = fill + byte(i*7+len(blobs))
		}
		meta.Shapes = append(meta.Shapes, shape)
		meta.BlobDTypes = append(meta.BlobDTypes, dtype)
		blobs = append(blobs, b)
	}
	for range layers {
		add([]int{1, 2, len(tokens), 16}, "bf16") // K
		add([]int{1, 2, len(tokens), 16}, "bf16") // V
	}
	add([]int{3, 5}, "f32")
	return MakeKey(meta.ModelFingerprint, meta.DType, tokens), meta, blobs
}

func openTestDisk(t testing.TB) *Disk {
	t.Helper()
	d, err := OpenDisk(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustWrite(t testing.TB, d *Disk, k Key, meta Meta, blobs [][]byte) {
	t.Helper()
	if err := d.Write(k, meta, blobs); err != nil {
		t.Fatal(err)
	}
}

func equalBlobs(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, bytes.Equal)
}

// dirFiles lists the names in dir.
func dirFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestDiskRoundTrip(t *testing.T) {
	d := openTestDisk(t)
	if fi, err := os.Stat(d.Dir()); err != nil || !fi.IsDir() {
		t.Fatalf("cache directory not created: %v", err)
	}
	k, meta, blobs := testEntry(3, 0)
	if _, err := d.Read(k, meta); !errors.Is(err, ErrMiss) {
		t.Fatalf("Read of absent entry: %v, want ErrMiss", err)
	}
	mustWrite(t, d, k, meta, blobs)
	if names := dirFiles(t, d.Dir()); !slices.Equal(names, []string{k.String() + ".kv"}) {
		t.Fatalf("directory holds %v, want only the entry", names)
	}
	got, err := d.Read(k, meta)
	if err != nil {
		t.Fatal(err)
	}
	if !equalBlobs(got, blobs) {
		t.Fatal("blobs differ after round trip")
	}
	func() { // the same, read by several goroutines (as for big entries)
		defer func(old int64) { parallelReadMin = old }(parallelReadMin)
		parallelReadMin = 0
		if got, err := d.Read(k, meta); err != nil || !equalBlobs(got, blobs) {
			t.Fatalf("parallel read: %v", err)
		}
	}()
	// The expected Extra is a subset check; the expected FormatVersion is ignored.
	expect := meta
	expect.Extra = nil
	expect.FormatVersion = 42
	if _, err := d.Read(k, expect); err != nil {
		t.Fatalf("Read with nil Extra: %v", err)
	}
	// Zero blobs, empty tokens.
	k0 := MakeKey("m", "f32", nil)
	m0 := Meta{ModelFingerprint: "m", DType: "f32"}
	mustWrite(t, d, k0, m0, nil)
	if got, err := d.Read(k0, m0); err != nil || len(got) != 0 {
		t.Fatalf("empty entry: %v, %v", got, err)
	}
	// Overwrite with other content.
	_, _, blobs2 := testEntry(3, 100)
	mustWrite(t, d, k, meta, blobs2)
	if got, err := d.Read(k, meta); err != nil || !equalBlobs(got, blobs2) {
		t.Fatalf("after overwrite: %v", err)
	}
	if err := d.Remove(k); err != nil {
		t.Fatal(err)
	}
	if err := d.Remove(k); err != nil {
		t.Fatalf("Remove of absent entry: %v", err)
	}
	if _, err := d.Read(k, meta); !errors.Is(err, ErrMiss) {
		t.Fatalf("Read after Remove: %v, want ErrMiss", err)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("SQLLM_CACHE_DIR", "/some/where")
	if got := DefaultDir(); got != "/some/where" {
		t.Errorf("DefaultDir() = %q with SQLLM_CACHE_DIR set", got)
	}
	t.Setenv("SQLLM_CACHE_DIR", "")
	got := DefaultDir()
	if base, err := os.UserCacheDir(); err == nil {
		if want := filepath.Join(base, "sqllm", "prefix"); got != want {
			t.Errorf("DefaultDir() = %q, want %q", got, want)
		}
	} else if got == "" {
		t.Error("DefaultDir() is empty")
	}
}

func TestWriteInvalidMeta(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(1, 0)
	cases := map[string]func(m *Meta, b *[][]byte){
		"missing shape":   func(m *Meta, b *[][]byte) { m.Shapes = m.Shapes[1:] },
		"missing dtype":   func(m *Meta, b *[][]byte) { m.BlobDTypes = nil },
		"unknown dtype":   func(m *Meta, b *[][]byte) { m.BlobDTypes[0] = "f7" },
		"wrong size":      func(m *Meta, b *[][]byte) { (*b)[0] = (*b)[0][1:] },
		"negative dim":    func(m *Meta, b *[][]byte) { m.Shapes[0] = []int{-1, 4} },
		"overflowing dim": func(m *Meta, b *[][]byte) { m.Shapes[0] = []int{1 << 62, 1 << 62} },
	}
	for name, mutate := range cases {
		m := meta
		m.Shapes = slices.Clone(meta.Shapes)
		m.BlobDTypes = slices.Clone(meta.BlobDTypes)
		b := slices.Clone(blobs)
		mutate(&m, &b)
		err := d.Write(k, m, b)
		if err == nil || !strings.Contains(err.Error(), "meta does not describe the blobs") {
			t.Errorf("%s: Write error = %v", name, err)
		}
	}
	if names := dirFiles(t, d.Dir()); len(names) != 0 {
		t.Fatalf("files left after failed writes: %v", names)
	}
}

// layout returns the header length of a valid entry file and the offset of each blob.
func layout(t *testing.T, file []byte, blobs [][]byte) (hlen int, offsets []int) {
	t.Helper()
	hlen = int(binary.LittleEndian.Uint32(file[12:16]))
	off := preambleLen + hlen
	for _, b := range blobs {
		offsets = append(offsets, off)
		off += len(b)
	}
	if off != len(file) {
		t.Fatalf("file is %d bytes, layout says %d", len(file), off)
	}
	return hlen, offsets
}

// checkBad writes file at k's path, reads it expecting the sentinel and a message containing want, then
// checks that the file was removed (a second Read misses) and that rewriting recovers.
func checkBad(t *testing.T, d *Disk, k Key, meta Meta, blobs [][]byte, file []byte, sentinel error, want string) {
	t.Helper()
	path := d.Path(k)
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := d.Read(k, meta)
	if !errors.Is(err, sentinel) {
		t.Fatalf("Read = %d blobs, %v; want %v", len(got), err, sentinel)
	}
	if got != nil {
		t.Fatalf("Read returned blobs with an error")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "prefixcache: "+path+": ") || !strings.Contains(msg, want) {
		t.Fatalf("error %q does not name the file and %q", msg, want)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("bad file not removed (%v)", err)
	}
	if _, err := d.Read(k, meta); !errors.Is(err, ErrMiss) {
		t.Fatalf("second Read = %v, want ErrMiss", err)
	}
}

func TestDiskReadCorrupt(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(2, 0)
	mustWrite(t, d, k, meta, blobs)
	good, err := os.ReadFile(d.Path(k))
	if err != nil {
		t.Fatal(err)
	}
	hlen, offsets := layout(t, good, blobs)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }

	t.Run("truncated", func(t *testing.T) {
		cuts := []int{0, 1, 7, 8, 15, 16, 17, preambleLen + hlen/2, preambleLen + hlen - 1, preambleLen + hlen,
			offsets[0] + 1, offsets[1], offsets[2] + 10, len(good) - 1}
		for _, cut := range cuts {
			t.Run(fmt.Sprint(cut), func(t *testing.T) {
				checkBad(t, d, k, meta, blobs, good[:cut], ErrCorrupt, "truncated")
			})
		}
	})
	t.Run("trailing data", func(t *testing.T) {
		checkBad(t, d, k, meta, blobs, append(bytes.Clone(good), 0), ErrCorrupt, "trailing data")
	})
	t.Run("header byte flipped", func(t *testing.T) {
		// Every byte of the header, with two different flips.
		for _, x := range []byte{0x01, 0x20} {
			for i := preambleLen; i < preambleLen+hlen; i++ {
				file := mod(func(b []byte) []byte { b[i] ^= x; return b })
				checkBad(t, d, k, meta, blobs, file, ErrCorrupt, "header")
			}
		}
	})
	t.Run("blob byte flipped", func(t *testing.T) {
		defer func(old int64) { parallelReadMin = old }(parallelReadMin)
		for _, parallel := range []int64{1 << 62, 0} {
			parallelReadMin = parallel // sequential, then parallel reads
			for bi, off := range offsets {
				for _, pos := range []int{off, off + len(blobs[bi])/2, off + len(blobs[bi]) - 1} {
					file := mod(func(b []byte) []byte { b[pos] ^= 0x04; return b })
					checkBad(t, d, k, meta, blobs, file, ErrCorrupt, fmt.Sprintf("blob %d checksum mismatch", bi))
				}
			}
		}
	})
	t.Run("wrong magic", func(t *testing.T) {
		checkBad(t, d, k, meta, blobs, mod(func(b []byte) []byte { b[3] = 'X'; return b }), ErrCorrupt, "bad magic")
		checkBad(t, d, k, meta, blobs, []byte("this is not a cache file at all, just text\n"), ErrCorrupt, "bad magic")
	})
	t.Run("wrong version", func(t *testing.T) {
		file := mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], CurrentFormatVersion+1); return b })
		checkBad(t, d, k, meta, blobs, file, ErrMismatch, fmt.Sprintf("format version %d, want %d", CurrentFormatVersion+1, CurrentFormatVersion))
	})
	t.Run("absurd header length", func(t *testing.T) {
		for _, n := range []uint32{0, 1 << 26, 0xffffffff} {
			file := mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], n); return b })
			checkBad(t, d, k, meta, blobs, file, ErrCorrupt, "absurd header length")
		}
		file := mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], uint32(len(good))); return b })
		checkBad(t, d, k, meta, blobs, file, ErrCorrupt, "exceeds the file size")
		// A header length off by a few bytes: the JSON (or the sizes) no longer line up.
		for _, delta := range []int{-1, 1, 5} {
			file := mod(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[12:], uint32(hlen+delta)); return b })
			checkBad(t, d, k, meta, blobs, file, ErrCorrupt, "header")
		}
	})

	// Well-formed files (valid checksums) with inconsistent contents.
	craft := func(version uint32, body fileBody, blobs [][]byte) []byte {
		h, err := encodeHeader(&body)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		buf.WriteString(magic)
		binary.Write(&buf, binary.LittleEndian, version)
		binary.Write(&buf, binary.LittleEndian, uint32(len(h)))
		buf.Write(h)
		for _, b := range blobs {
			buf.Write(b)
		}
		return buf.Bytes()
	}
	validBody := func() fileBody {
		var body fileBody
		h := good[preambleLen : preambleLen+hlen]
		var hdr fileHeader
		if err := json.Unmarshal(h, &hdr); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(hdr.Body, &body); err != nil {
			t.Fatal(err)
		}
		return body
	}
	if !bytes.Equal(craft(CurrentFormatVersion, validBody(), blobs), good) {
		t.Fatal("craft does not reproduce Write's output")
	}
	t.Run("inconsistent header", func(t *testing.T) {
		cases := []struct {
			name   string
			mutate func(b *fileBody)
			want   string
		}{
			{"other key", func(b *fileBody) { b.Key = MakeKey("x", "y", nil).String() }, "holds the entry of key"},
			{"length vs shape", func(b *fileBody) { b.BlobLens[0]-- }, "blob 0 is"},
			{"missing crc", func(b *fileBody) { b.BlobCRCs = b.BlobCRCs[1:] }, "checksums"},
			{"missing shape", func(b *fileBody) { b.Meta.Shapes = b.Meta.Shapes[1:] }, "meta does not describe the blobs"},
			{"unknown dtype", func(b *fileBody) { b.Meta.BlobDTypes[1] = "q4" }, "unknown dtype"},
			{"huge shape", func(b *fileBody) { b.Meta.Shapes[0] = []int{1 << 40, 1 << 30} }, "too large"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				body := validBody()
				c.mutate(&body)
				checkBad(t, d, k, meta, blobs, craft(CurrentFormatVersion, body, blobs), ErrCorrupt, c.want)
			})
		}
		body := validBody()
		body.Meta.FormatVersion = CurrentFormatVersion + 1
		checkBad(t, d, k, meta, blobs, craft(CurrentFormatVersion, body, blobs), ErrMismatch, "format version")
	})

	// After all this, a recompute + Write + Read works.
	mustWrite(t, d, k, meta, blobs)
	if got, err := d.Read(k, meta); err != nil || !equalBlobs(got, blobs) {
		t.Fatalf("Read after rewrite: %v", err)
	}
}

func TestDiskReadMismatch(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(2, 0)
	clone := func() Meta {
		m := meta
		m.Shapes = nil
		for _, s := range meta.Shapes {
			m.Shapes = append(m.Shapes, slices.Clone(s))
		}
		m.BlobDTypes = slices.Clone(meta.BlobDTypes)
		m.Tokens = slices.Clone(meta.Tokens)
		m.Extra = map[string]string{"note": "test"}
		return m
	}
	cases := []struct {
		name   string
		mutate func(m *Meta)
		want   string
	}{
		{"model", func(m *Meta) { m.ModelFingerprint = "another-model-fingerprint-ffff" },
			"made by another model (fingerprint model-fp-0123456…, want another-model-fi…)"},
		{"tokenizer", func(m *Meta) { m.TokenizerFingerprint = "tok2" }, "made with another tokenizer (fingerprint tok-fp-fedcba987…, want tok2)"},
		{"dtype", func(m *Meta) { m.DType = "f32" }, `dtype "bf16", want "f32"`},
		{"blob count", func(m *Meta) { m.Shapes = m.Shapes[1:]; m.BlobDTypes = m.BlobDTypes[1:] }, "5 blobs, want 4"},
		{"shape", func(m *Meta) { m.Shapes[2][2] = 8 }, "blob 2 has shape [1 2 7 16], want [1 2 8 16]"},
		{"blob dtype", func(m *Meta) { m.BlobDTypes[1] = "f16" }, `blob 1 has dtype "bf16", want "f16"`},
		{"tokens changed", func(m *Meta) { m.Tokens[3] = 1 }, "prefix tokens differ (7 stored, want 7; first difference at index 3)"},
		{"tokens longer", func(m *Meta) { m.Tokens = append(m.Tokens, 5) }, "prefix tokens differ (7 stored, want 8; first difference at index 7)"},
		{"tokens shorter", func(m *Meta) { m.Tokens = m.Tokens[:6] }, "prefix tokens differ (7 stored, want 6; first difference at index 6)"},
		{"extra value", func(m *Meta) { m.Extra["note"] = "other" }, `extra "note" is "test", want "other"`},
		{"extra missing", func(m *Meta) { m.Extra["squeeze"] = "k=64" }, `extra "squeeze" missing`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mustWrite(t, d, k, meta, blobs)
			expect := clone()
			c.mutate(&expect)
			good, _ := os.ReadFile(d.Path(k))
			checkBad(t, d, k, expect, blobs, good, ErrMismatch, c.want)
			// The caller recomputes (here: for its own expected meta) and writes; then reads succeed.
			if c.name != "blob count" && c.name != "shape" && c.name != "blob dtype" {
				mustWrite(t, d, k, expect, blobs)
				if got, err := d.Read(k, expect); err != nil || !equalBlobs(got, blobs) {
					t.Fatalf("Read after rewrite: %v", err)
				}
			}
		})
	}
}

func TestDiskReadInvalidExpect(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(1, 0)
	mustWrite(t, d, k, meta, blobs)
	expect := meta
	expect.BlobDTypes = []string{"nope", "bf16", "f32"}
	_, err := d.Read(k, expect)
	if err == nil || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "invalid expected meta") {
		t.Fatalf("Read with invalid expect: %v", err)
	}
	// A caller bug must not destroy a good entry.
	if _, err := d.Read(k, meta); err != nil {
		t.Fatalf("entry damaged by invalid expect: %v", err)
	}
}

// failingWriter fails with ENOSPC (as a full disk would) once more than limit bytes were written.
type failingWriter struct {
	w       io.Writer
	written int
	limit   int
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.written+len(p) > f.limit {
		n := max(f.limit-f.written, 0)
		n, _ = f.w.Write(p[:n])
		f.written += n
		return n, &fs.PathError{Op: "write", Path: "tmp", Err: syscall.ENOSPC}
	}
	n, err := f.w.Write(p)
	f.written += n
	return n, err
}

func TestDiskWriteError(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(2, 0)
	// Make it big enough to cross the writer's buffer.
	meta.Shapes[0] = []int{1 << 20}
	blobs[0] = make([]byte, 2<<20)
	for _, limit := range []int{0, 100, 1 << 20, 2<<20 + 100} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			d.wrapWriter = func(w io.Writer) io.Writer { return &failingWriter{w: w, limit: limit} }
			err := d.Write(k, meta, blobs)
			d.wrapWriter = nil
			if err == nil {
				t.Fatal("Write succeeded on a full disk")
			}
			msg := err.Error()
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(msg, "disk full") || !strings.Contains(msg, d.Path(k)) {
				t.Fatalf("unclear error: %v", msg)
			}
			if names := dirFiles(t, d.Dir()); len(names) != 0 {
				t.Fatalf("files left after failed write: %v", names)
			}
			if _, err := d.Read(k, meta); !errors.Is(err, ErrMiss) {
				t.Fatalf("Read after failed write: %v", err)
			}
		})
	}
	// A failed overwrite leaves the previous entry intact.
	mustWrite(t, d, k, meta, blobs)
	_, _, blobs2 := testEntry(2, 9)
	blobs2[0] = make([]byte, 2<<20)
	d.wrapWriter = func(w io.Writer) io.Writer { return &failingWriter{w: w, limit: 1 << 20} }
	if err := d.Write(k, meta, blobs2); err == nil {
		t.Fatal("Write succeeded on a full disk")
	}
	d.wrapWriter = nil
	if got, err := d.Read(k, meta); err != nil || !equalBlobs(got, blobs) {
		t.Fatalf("previous entry damaged by failed write: %v", err)
	}
}

func TestDiskWriteReadOnlyDir(t *testing.T) {
	if runtime.GOOS == "windows" || os.Geteuid() == 0 {
		t.Skip("directory permissions are not enforced (windows or root); see TestDiskWriteError")
	}
	d := openTestDisk(t)
	k, meta, blobs := testEntry(1, 0)
	if err := os.Chmod(d.Dir(), 0o555); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(d.Dir(), 0o755)
	err := d.Write(k, meta, blobs)
	if err == nil || !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "creating temp file") {
		t.Fatalf("Write to read-only dir: %v", err)
	}
	if names := dirFiles(t, d.Dir()); len(names) != 0 {
		t.Fatalf("files left: %v", names)
	}
}

func TestOpenDiskRemovesStaleTemps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	d, err := OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, meta, blobs := testEntry(1, 0)
	mustWrite(t, d, k, meta, blobs)
	old := time.Now().Add(-2 * time.Hour)
	files := map[string]bool{ // name -> should survive
		k.String() + ".kv.tmp-123": false, // old temp
		k.String() + ".kv.tmp-456": true,  // fresh temp: maybe a live writer
		"unrelated.txt":            true,
		k.String() + ".kv":         true,
	}
	for name, survive := range files {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if !survive || name == "unrelated.txt" || strings.HasSuffix(name, ".kv") {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := OpenDisk(dir); err != nil {
		t.Fatal(err)
	}
	for name, survive := range files {
		_, err := os.Stat(filepath.Join(dir, name))
		if survive != (err == nil) {
			t.Errorf("%s: survive=%v, stat error %v", name, survive, err)
		}
	}
	if _, err := d.Read(k, meta); err != nil {
		t.Fatalf("entry damaged by cleanup: %v", err)
	}
}

// TestDiskConcurrentWriters: goroutines writing the same key with different content while others read:
// every Read returns one of the complete contents, never a mix.
func TestDiskConcurrentWriters(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobsA := testEntry(4, 'A')
	_, _, blobsB := testEntry(4, 'B')
	// Make the blobs a bit larger so writes take some time.
	for i := range 2 {
		meta.Shapes[i] = []int{256, 1024}
		blobsA[i] = bytes.Repeat([]byte{'A'}, 512<<10)
		blobsB[i] = bytes.Repeat([]byte{'B'}, 512<<10)
	}
	const writes = 15
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for _, blobs := range [][][]byte{blobsA, blobsB} {
		wg.Go(func() {
			for range writes {
				if err := d.Write(k, meta, blobs); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	var readers sync.WaitGroup
	var reads [2]int
	for r := range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := d.Read(k, meta)
				switch {
				case errors.Is(err, ErrMiss):
				case err != nil:
					t.Errorf("Read during writes: %v", err)
					return
				case !equalBlobs(got, blobsA) && !equalBlobs(got, blobsB):
					t.Errorf("Read returned a mix")
					return
				default:
					reads[r]++
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	got, err := d.Read(k, meta)
	if err != nil || (!equalBlobs(got, blobsA) && !equalBlobs(got, blobsB)) {
		t.Fatalf("final Read: %v", err)
	}
	if names := dirFiles(t, d.Dir()); len(names) != 1 {
		t.Fatalf("directory holds %v, want only the entry", names)
	}
	t.Logf("successful concurrent reads: %v", reads)
}

func TestDiskParallelKeys(t *testing.T) {
	d := openTestDisk(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			k, meta, blobs := testEntry(1+i%3, byte(i))
			meta.Tokens = append(slices.Clone(meta.Tokens), i)
			k = MakeKey(meta.ModelFingerprint, meta.DType, meta.Tokens)
			if err := d.Write(k, meta, blobs); err != nil {
				t.Error(err)
				return
			}
			if got, err := d.Read(k, meta); err != nil || !equalBlobs(got, blobs) {
				t.Errorf("key %d: %v", i, err)
			}
		})
	}
	wg.Wait()
}

// TestDiskWriteFrom: blobs produced one at a time, each asked for twice in order (checksums, then the
// write), make the same entry as Write; a failing or changing producer fails the write, leaves no file
// and keeps the previous entry.
func TestDiskWriteFrom(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(3, 0)
	var calls []int
	from := func(i int) ([]byte, error) {
		calls = append(calls, i)
		return slices.Clone(blobs[i]), nil // a fresh buffer each time, as a device read gives
	}
	if err := d.WriteFrom(k, meta, len(blobs), from); err != nil {
		t.Fatal(err)
	}
	n := len(blobs)
	var want []int
	for range 2 {
		for i := range n {
			want = append(want, i)
		}
	}
	if !slices.Equal(calls, want) {
		t.Fatalf("blob calls %v, want %v", calls, want)
	}
	viaFrom, err := os.ReadFile(d.Path(k))
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, k, meta, blobs)
	viaWrite, err := os.ReadFile(d.Path(k))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(viaFrom, viaWrite) {
		t.Fatal("WriteFrom and Write wrote different files for the same blobs")
	}
	_, _, other := testEntry(3, 5)
	for name, tc := range map[string]struct {
		blob func(i, call int) ([]byte, error)
		msg  string
	}{
		"fails in the second pass": {func(i, call int) ([]byte, error) {
			if call == n+1 {
				return nil, errors.New("device gone")
			}
			return other[i], nil
		}, "reading blob 1: device gone"},
		"changes between the passes": {func(i, call int) ([]byte, error) {
			if call == n+2 {
				b := slices.Clone(other[i])
				b[0] ^= 1
				return b, nil
			}
			return other[i], nil
		}, "blob 2: the blob changed"},
		"wrong size": {func(i, call int) ([]byte, error) { return other[i][:1], nil }, "blob 0 has 1 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			call := 0
			err := d.WriteFrom(k, meta, len(other), func(i int) ([]byte, error) {
				b, err := tc.blob(i, call)
				call++
				return b, err
			})
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), d.Path(k)) {
				t.Fatalf("got %v, want an error naming the file and %q", err, tc.msg)
			}
			if names := dirFiles(t, d.Dir()); !slices.Equal(names, []string{k.String() + ".kv"}) {
				t.Fatalf("directory holds %v, want only the previous entry", names)
			}
			if got, err := d.Read(k, meta); err != nil || !equalBlobs(got, blobs) {
				t.Fatalf("previous entry damaged: %v", err)
			}
		})
	}
}

// TestDiskReadEach: the blobs come in order, as Read returns them, sequentially or read ahead in parallel;
// a damaged blob fails the read after the blobs before it (and the file is removed, as by Read); an error
// of the consumer is returned as is and leaves the file.
func TestDiskReadEach(t *testing.T) {
	d := openTestDisk(t)
	k, meta, blobs := testEntry(3, 0)
	mustWrite(t, d, k, meta, blobs)
	for _, parallel := range []bool{false, true} {
		func() {
			defer func(old int64) { parallelReadMin = old }(parallelReadMin)
			if parallel {
				parallelReadMin = 0
			}
			var got [][]byte
			err := d.ReadEach(k, meta, func(i int, b []byte) error {
				if i != len(got) {
					return fmt.Errorf("blob %d handed over after %d", i, len(got))
				}
				got = append(got, b)
				return nil
			})
			if err != nil || !equalBlobs(got, blobs) {
				t.Fatalf("parallel %v: ReadEach: %v (%d blobs)", parallel, err, len(got))
			}
		}()
	}
	stop := errors.New("consumer stops")
	seen := 0
	err := d.ReadEach(k, meta, func(i int, b []byte) error {
		seen++
		if i == 2 {
			return stop
		}
		return nil
	})
	if err != stop || seen != 3 {
		t.Fatalf("consumer error: got %v after %d blobs, want it as is after 3", err, seen)
	}
	if _, err := d.Read(k, meta); err != nil {
		t.Fatalf("the entry after a consumer error: %v", err)
	}
	// Damage blob 4: blobs 0-3 arrive, then ErrCorrupt naming blob 4, and the entry is gone.
	good, err := os.ReadFile(d.Path(k))
	if err != nil {
		t.Fatal(err)
	}
	_, offsets := layout(t, good, blobs)
	bad := bytes.Clone(good)
	bad[offsets[4]] ^= 0xff
	if err := os.WriteFile(d.Path(k), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	seen = 0
	err = d.ReadEach(k, meta, func(i int, b []byte) error { seen++; return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "blob 4 checksum") || seen != 4 {
		t.Fatalf("damaged blob 4: got %v after %d blobs, want ErrCorrupt naming blob 4 after 4", err, seen)
	}
	if _, err := d.Read(k, meta); !errors.Is(err, ErrMiss) {
		t.Fatalf("the damaged entry was not removed: %v", err)
	}
}
