package prefixcache

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Disk is a directory of entries, one file per key: <dir>/<hex key>.kv (see format.go for the layout).
//
// Writes are atomic (temp file in the same directory, fsync, rename), so readers and other writers,
// in this process or others, only ever see complete files; when two writers race on a key, the last
// rename wins. Reads validate the whole file before returning anything, and remove files that fail
// validation. A Disk is safe for concurrent use; it holds no state besides its directory.
type Disk struct {
	dir string

	// wrapWriter, when set (by tests), wraps the temp file's writer: to inject write errors (disk full)
	// or slow writes.
	wrapWriter func(io.Writer) io.Writer
}

// The blobs of entries of at least parallelReadMin bytes are read by up to readWorkers goroutines
// (variables for tests and benchmarks).
var (
	parallelReadMin int64 = 64 << 20
	readWorkers           = 8
)

// staleTempAge is the age after which OpenDisk removes leftover temp files (of writers that crashed).
var staleTempAge = time.Hour

const (
	entryExt   = ".kv"
	tempMarker = ".kv.tmp-"          // temp files are named <hex key>.kv.tmp-<random>
	chunkSize  = 4 << 20             // blobs are written and read (and checksummed) in chunks of this size
	bufSize    = 1 << 20             // size of the buffered writer
	envDir     = "SQLLM_CACHE_DIR"   // overrides DefaultDir
	subDir     = "sqllm/prefix"      // under os.UserCacheDir
	tempSubDir = "sqllm-prefixcache" // under os.TempDir, when there is no user cache directory
)

// DefaultDir returns $SQLLM_CACHE_DIR when set, else <os.UserCacheDir()>/sqllm/prefix (e.g.
// ~/.cache/sqllm/prefix), else (no home directory) <os.TempDir()>/sqllm-prefixcache.
func DefaultDir() string {
	if d := os.Getenv(envDir); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, filepath.FromSlash(subDir))
	}
	return filepath.Join(os.TempDir(), tempSubDir)
}

// OpenDisk opens (creating it, mode 0o755, if needed) the cache directory dir, and removes leftover
// temp files older than an hour.
func OpenDisk(dir string) (*Disk, error) {
	if dir == "" {
		return nil, errors.New("prefixcache: empty cache directory name")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("prefixcache: creating cache directory: %w", err)
	}
	d := &Disk{dir: dir}
	d.removeStaleTemps()
	return d, nil
}

// removeStaleTemps removes temp files older than staleTempAge (best effort). A live writer keeps
// modifying its temp file, so only abandoned ones get that old.
func (d *Disk) removeStaleTemps() {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return
	}
	now := time.Now()
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.Contains(e.Name(), tempMarker) {
			continue
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < staleTempAge {
			continue
		}
		_ = os.Remove(filepath.Join(d.dir, e.Name()))
	}
}

// Dir returns the cache directory.
func (d *Disk) Dir() string { return d.dir }

// Path returns the file name of k's entry.
func (d *Disk) Path(k Key) string { return filepath.Join(d.dir, k.String()+entryExt) }

// Remove removes k's entry; removing an absent entry is not an error.
func (d *Disk) Remove(k Key) error {
	if err := os.Remove(d.Path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("prefixcache: %w", err)
	}
	return nil
}

// Write stores blobs under k, atomically: it writes a unique temp file in the directory (streaming the
// blobs, never concatenating them), fsyncs it, and renames it over the entry's file (then fsyncs the
// directory). Concurrent writers of the same key (goroutines or processes) all succeed and the last
// rename wins; readers see either the old or the new complete file.
//
// meta.FormatVersion is set to CurrentFormatVersion. meta must describe the blobs: one shape and one
// dtype per blob, and len(blobs[i]) == product(Shapes[i]) × DTypeSize(BlobDTypes[i]).
//
// On any error (e.g. disk full) the temp file is removed, the entry's file is left as it was, and the
// error names the file and the step that failed.
func (d *Disk) Write(k Key, meta Meta, blobs [][]byte) error {
	return d.writeFrom(k, meta, len(blobs), func(i int) ([]byte, error) { return blobs[i], nil }, false)
}

// WriteFrom is Write with the n blobs produced one at a time by blob(i), so that the caller never holds
// more than one (a prefix's KV cache read from the device one layer's keys or values at a time: LLaMA-2-7B
// at 130,000 tokens is 68 GB). blob is called twice for each i, in order: a first pass checksums the blobs
// for the header, which precedes them in the file, and a second writes them; it must return the same bytes
// both times (a blob that changed between the passes fails the write). An error from blob fails the write
// as any other.
func (d *Disk) WriteFrom(k Key, meta Meta, n int, blob func(i int) ([]byte, error)) error {
	return d.writeFrom(k, meta, n, blob, true)
}

// writeFrom is WriteFrom; recheck checksums each blob again as it is written (blobs that may change
// between the passes).
func (d *Disk) writeFrom(k Key, meta Meta, n int, blob func(i int) ([]byte, error), recheck bool) (err error) {
	path := d.Path(k)
	fail := func(step string, err error) error {
		hint := ""
		if errors.Is(err, syscall.ENOSPC) {
			hint = " (disk full)"
		}
		return fmt.Errorf("prefixcache: write %s: %s: %w%s", path, step, err, hint)
	}

	meta.FormatVersion = CurrentFormatVersion
	sizes, err := checkLayout(meta.Shapes, meta.BlobDTypes, n)
	if err != nil {
		return fail("meta does not describe the blobs", err)
	}
	body := fileBody{
		Key:      k.String(),
		Meta:     meta,
		BlobLens: make([]int64, n),
		BlobCRCs: make([]uint32, n),
	}
	// get returns blob i, checked against its size.
	get := func(i int) ([]byte, error) {
		b, err := blob(i)
		if err != nil {
			return nil, fail(fmt.Sprintf("reading blob %d", i), err)
		}
		if int64(len(b)) != sizes[i] {
			return nil, fail("meta does not describe the blobs", fmt.Errorf("blob %d has %d bytes, but shape %v × %s needs %d",
				i, len(b), meta.Shapes[i], meta.BlobDTypes[i], sizes[i]))
		}
		return b, nil
	}
	for i := range n {
		b, err := get(i)
		if err != nil {
			return err
		}
		body.BlobLens[i] = int64(len(b))
		body.BlobCRCs[i] = crc32.Checksum(b, castagnoli)
	}
	header, err := encodeHeader(&body)
	if err != nil {
		return fail("encoding header", err)
	}
	if len(header) >= maxHeaderLen {
		return fail("encoding header", fmt.Errorf("header is %d bytes, the limit is %d", len(header), maxHeaderLen))
	}

	f, err := os.CreateTemp(d.dir, k.String()+tempMarker+"*")
	if err != nil {
		return fail("creating temp file", err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				_ = f.Close()
			}
			_ = os.Remove(tmp)
		}
	}()

	var w io.Writer = f
	if d.wrapWriter != nil {
		w = d.wrapWriter(w)
	}
	bw := bufio.NewWriterSize(w, bufSize)
	var pre [preambleLen]byte
	copy(pre[:], magic)
	binary.LittleEndian.PutUint32(pre[8:], CurrentFormatVersion)
	binary.LittleEndian.PutUint32(pre[12:], uint32(len(header)))
	if _, err := bw.Write(pre[:]); err != nil {
		return fail("writing header", err)
	}
	if _, err := bw.Write(header); err != nil {
		return fail("writing header", err)
	}
	for i := range n {
		b, err := get(i)
		if err != nil {
			return err
		}
		if recheck && crc32.Checksum(b, castagnoli) != body.BlobCRCs[i] {
			return fail(fmt.Sprintf("writing blob %d", i), errors.New("the blob changed between the checksum and the write"))
		}
		for len(b) > 0 {
			m := min(len(b), chunkSize)
			if _, err := bw.Write(b[:m]); err != nil {
				return fail(fmt.Sprintf("writing blob %d", i), err)
			}
			b = b[m:]
		}
	}
	if err := bw.Flush(); err != nil {
		return fail("writing", err)
	}
	if err := f.Sync(); err != nil {
		return fail("syncing", err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return fail("closing", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail("renaming temp file", err)
	}
	syncDir(d.dir) // make the rename durable (best effort: not every platform can sync a directory)
	return nil
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		_ = f.Close()
	}
}

// Read loads k's entry. It returns an error wrapping ErrMiss when there is no entry. Otherwise it
// validates everything before trusting any of it, in this order: magic, format version, header length
// (< 64 MiB and within the file), header JSON and header CRC, the key, that Shapes and BlobDTypes
// describe the stored blob lengths, that the file size is exactly preamble + header + blobs (all this
// before allocating anything for the blobs), that the stored Meta matches expect (model fingerprint,
// tokenizer fingerprint, dtype, shapes, blob dtypes, tokens, the keys of expect.Extra; the format
// version must be CurrentFormatVersion, expect.FormatVersion is ignored), and the CRC of every blob.
//
// A failed check returns an error wrapping ErrCorrupt (damaged file) or ErrMismatch (valid file made
// for something else), whose message names the file and the problem, e.g.
// "prefixcache: /x/ab12….kv: blob 3 checksum mismatch", and the file is removed so that the caller
// recomputes and rewrites it. Other errors (e.g. permission denied, I/O errors) are returned as is and
// leave the file alone. An invalid expect (e.g. unknown dtype) is an error that touches nothing.
func (d *Disk) Read(k Key, expect Meta) ([][]byte, error) {
	return d.read(k, expect, nil)
}

// ReadEach is Read with the blobs handed to each(i, b) in order, each once its checksum is verified,
// instead of returned, so that the caller need not hold the whole entry (a prefix's KV cache is moved to
// the device one blob at a time). Up to the read workers' number of blobs are read ahead in parallel. An
// entry found damaged at blob j fails (and is removed, as by Read) after each has received the blobs
// before j; an error of each stops the read and is returned as is, leaving the file alone. each may keep b.
func (d *Disk) ReadEach(k Key, expect Meta, each func(i int, b []byte) error) error {
	_, err := d.read(k, expect, each)
	return err
}

func (d *Disk) read(k Key, expect Meta, each func(i int, b []byte) error) (blobs [][]byte, err error) {
	path := d.Path(k)
	if _, err := checkLayout(expect.Shapes, expect.BlobDTypes, len(expect.Shapes)); err != nil {
		return nil, fmt.Errorf("prefixcache: read %s: invalid expected meta: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("prefixcache: %s: %w", path, ErrMiss)
		}
		return nil, fmt.Errorf("prefixcache: %w", err)
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("prefixcache: %w", err)
	}
	if !info.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("prefixcache: %s: not a regular file", path)
	}
	blobs, err = readEntry(f, info.Size(), path, k, &expect, each)
	_ = f.Close()
	if err != nil {
		var ee *entryError
		if errors.As(err, &ee) {
			d.discard(path, info)
		}
		return nil, err
	}
	return blobs, nil
}

// discard removes the bad file at path, unless it has been replaced (by a writer's rename) since it
// was opened. (A replacement in the short window between the check and the removal only costs a
// recomputation: the next Read misses.)
func (d *Disk) discard(path string, opened fs.FileInfo) {
	if cur, err := os.Lstat(path); err == nil && os.SameFile(cur, opened) {
		_ = os.Remove(path)
	}
}

// readEntry checks the entry in f and returns its blobs, or with each hands them over in order (readEach).
func readEntry(f *os.File, size int64, path string, k Key, expect *Meta, each func(i int, b []byte) error) ([][]byte, error) {
	corrupt := func(format string, args ...any) error {
		return &entryError{path: path, kind: ErrCorrupt, msg: fmt.Sprintf(format, args...)}
	}
	mismatch := func(format string, args ...any) error {
		return &entryError{path: path, kind: ErrMismatch, msg: fmt.Sprintf(format, args...)}
	}
	// readErr classifies an error of a read that should have succeeded given the file size.
	readErr := func(what string, err error) error {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &entryError{path: path, kind: ErrCorrupt, msg: "truncated while reading " + what}
		}
		return fmt.Errorf("prefixcache: %s: reading %s: %w", path, what, err)
	}

	if size < preambleLen {
		return nil, corrupt("file is %d bytes, too short for the %d-byte preamble (truncated?)", size, preambleLen)
	}
	var pre [preambleLen]byte
	if _, err := io.ReadFull(f, pre[:]); err != nil {
		return nil, readErr("preamble", err)
	}
	if string(pre[:8]) != magic {
		return nil, corrupt("bad magic %q (not a sqllm prefix-cache file)", pre[:8])
	}
	if v := binary.LittleEndian.Uint32(pre[8:]); v != CurrentFormatVersion {
		return nil, mismatch("format version %d, want %d", v, CurrentFormatVersion)
	}
	hlen := int64(binary.LittleEndian.Uint32(pre[12:]))
	if hlen == 0 || hlen >= maxHeaderLen {
		return nil, corrupt("absurd header length %d (limit %d)", hlen, maxHeaderLen)
	}
	if preambleLen+hlen > size {
		return nil, corrupt("header length %d exceeds the file size %d (truncated?)", hlen, size)
	}
	raw := make([]byte, hlen)
	if _, err := io.ReadFull(f, raw); err != nil {
		return nil, readErr("header", err)
	}
	var hdr fileHeader
	if err := json.Unmarshal(raw, &hdr); err != nil {
		return nil, corrupt("header is not valid JSON: %v", err)
	}
	if hdr.HeaderCRC == nil || len(hdr.Body) == 0 {
		return nil, corrupt("header lacks its checksum or body")
	}
	if c := crc32.Checksum(hdr.Body, castagnoli); c != *hdr.HeaderCRC {
		return nil, corrupt("header checksum mismatch (stored %08x, computed %08x)", *hdr.HeaderCRC, c)
	}
	// The checksum covers the body; the few bytes around it must be exactly what Write produces (JSON
	// parsing alone would accept e.g. other letter cases in the field names).
	if !bytes.Equal(raw, headerBytes(*hdr.HeaderCRC, hdr.Body)) {
		return nil, corrupt("header is not in canonical form")
	}
	var body fileBody
	if err := json.Unmarshal(hdr.Body, &body); err != nil {
		return nil, corrupt("header body is not valid: %v", err)
	}
	if body.Key != k.String() {
		return nil, corrupt("file holds the entry of key %s", short(body.Key))
	}
	meta := &body.Meta
	n := len(body.BlobLens)
	if len(body.BlobCRCs) != n {
		return nil, corrupt("header has %d blob lengths but %d checksums", n, len(body.BlobCRCs))
	}
	sizes, err := checkLayout(meta.Shapes, meta.BlobDTypes, n)
	if err != nil {
		return nil, corrupt("meta does not describe the blobs: %v", err)
	}
	total := preambleLen + hlen
	for i, l := range body.BlobLens {
		if l != sizes[i] {
			return nil, corrupt("blob %d is %d bytes, but shape %v × %s needs %d", i, l, meta.Shapes[i], meta.BlobDTypes[i], sizes[i])
		}
		total += l // no overflow: checkLayout bounds the sum of sizes
	}
	if size < total {
		return nil, corrupt("file is %d bytes, the header says %d (truncated)", size, total)
	}
	if size > total {
		return nil, corrupt("file is %d bytes, the header says %d (trailing data)", size, total)
	}
	if msg := compareMeta(meta, expect); msg != "" {
		return nil, mismatch("%s", msg)
	}

	// Read the blobs at their offsets, in parallel for big entries (reading from the page cache is
	// bound by the kernel's copy, which scales with cores; so does a fast SSD's queue), each in chunks
	// that are checksummed while still in the CPU cache.
	blobs := make([][]byte, n)
	offsets := make([]int64, n)
	off := preambleLen + hlen
	for i, l := range body.BlobLens {
		offsets[i] = off
		off += l
	}
	readBlob := func(i int) ([]byte, error) {
		b := make([]byte, body.BlobLens[i])
		var c uint32
		for off := 0; off < len(b); {
			end := min(off+chunkSize, len(b))
			if _, err := f.ReadAt(b[off:end], offsets[i]+int64(off)); err != nil {
				return nil, readErr(fmt.Sprintf("blob %d", i), err)
			}
			c = crc32.Update(c, castagnoli, b[off:end])
			off = end
		}
		if c != body.BlobCRCs[i] {
			return nil, corrupt("blob %d checksum mismatch (stored %08x, computed %08x)", i, body.BlobCRCs[i], c)
		}
		return b, nil
	}
	workers := min(readWorkers, runtime.GOMAXPROCS(0), n)
	if total-preambleLen-hlen < parallelReadMin {
		workers = 1
	}
	if each != nil {
		return nil, readEach(n, workers, readBlob, each)
	}
	err = forEach(n, workers, func(i int) (err error) {
		blobs[i], err = readBlob(i)
		return err
	})
	if err != nil {
		return nil, err
	}
	return blobs, nil
}

// readEach reads blobs 0..n-1 with read, up to workers of them ahead of the one handed to each, and hands
// them to each in order. It returns at the first error (read's or each's); reads still in flight finish on
// their own (their results are dropped).
func readEach(n, workers int, read func(i int) ([]byte, error), each func(i int, b []byte) error) error {
	if workers <= 1 { // small entries: no read-ahead
		for i := range n {
			b, err := read(i)
			if err != nil {
				return err
			}
			if err := each(i, b); err != nil {
				return err
			}
		}
		return nil
	}
	type result struct {
		b   []byte
		err error
	}
	results := make([]chan result, n)
	for i := range results {
		results[i] = make(chan result, 1) // a read never blocks on a consumer that has gone
	}
	ahead := make(chan struct{}, workers) // one token per blob read but not yet handed over
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := range n {
			select {
			case ahead <- struct{}{}:
			case <-stop:
				return
			}
			go func() {
				b, err := read(i)
				results[i] <- result{b, err}
			}()
		}
	}()
	for i := range n {
		r := <-results[i]
		if r.err != nil {
			return r.err
		}
		if err := each(i, r.b); err != nil {
			return err
		}
		<-ahead
	}
	return nil
}

// forEach calls fn(0..n-1) from up to workers goroutines, and returns the error of the lowest index
// that failed (calls after a failure may be skipped).
func forEach(n, workers int, fn func(i int) error) error {
	if workers <= 1 {
		for i := range n {
			if err := fn(i); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make([]error, n)
	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if errs[i] = fn(i); errs[i] != nil {
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
