//go:build unix

package tokenizer

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// TestLoadSizeLimits: tokenizer.json, its .gz and tokenizer_config.json are read only up to
// MaxFileSize (lowered to 1 MiB here): a larger file is refused before it is read, a gzip bomb once the
// limit is reached, and a pipe or device (size unknown) likewise.
func TestLoadSizeLimits(t *testing.T) {
	if MaxFileSize < 64<<20 {
		t.Errorf("MaxFileSize %d is below the size of real tokenizer.json files", MaxFileSize)
	}
	defer func(old int64) { fileLimit = old }(fileLimit)
	fileLimit = 1 << 20
	good, err := os.ReadFile("../models/tinycode-llama-16m/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(good)) > fileLimit {
		t.Fatalf("the bundled tokenizer.json (%d bytes) is over the test's limit", len(good))
	}
	sparse := func(t *testing.T, path string, size int64) {
		t.Helper()
		if err := os.WriteFile(path, []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
	}
	load := func(t *testing.T, path string) (uint64, error) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tk, err := Load(path)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("Load(%s) succeeded (vocabulary %d)", path, tk.VocabSize())
		}
		if !strings.Contains(err.Error(), errTooLarge.Error()) {
			t.Errorf("Load(%s): %v, want a file-too-large error", path, err)
		}
		return after.TotalAlloc - before.TotalAlloc, err
	}

	t.Run("tokenizer.json", func(t *testing.T) {
		dir := t.TempDir()
		sparse(t, filepath.Join(dir, "tokenizer.json"), 64<<20)
		if n, _ := load(t, dir); n > 1<<20 {
			t.Errorf("allocated %d bytes for a 64 MiB file over the limit", n)
		}
	})
	t.Run("gzip bomb", func(t *testing.T) {
		// 64 gzip members of 1 MiB of zeros: 64 MiB once decompressed.
		var member bytes.Buffer
		zw := gzip.NewWriter(&member)
		zw.Write(make([]byte, 1<<20))
		zw.Close()
		path := filepath.Join(t.TempDir(), "x.tokenizer.json.gz")
		if err := os.WriteFile(path, bytes.Repeat(member.Bytes(), 64), 0o644); err != nil {
			t.Fatal(err)
		}
		if n, _ := load(t, path); n > 8<<20 {
			t.Errorf("allocated %d bytes decompressing a bomb", n)
		}
	})
	t.Run("tokenizer_config.json", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), good, 0o644); err != nil {
			t.Fatal(err)
		}
		sparse(t, filepath.Join(dir, "tokenizer_config.json"), 64<<20)
		load(t, dir)
	})
	t.Run("pipe", func(t *testing.T) {
		// A named pipe (like a device) has no size: it is read up to the limit only.
		dir := t.TempDir()
		path := filepath.Join(dir, "tokenizer.json")
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			t.Skip("no named pipes:", err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return
			}
			defer f.Close()
			for range 64 { // 64 MiB, unless the reader stops
				if _, err := f.Write(make([]byte, 1<<20)); err != nil {
					return
				}
			}
		}()
		defer func() {
			if f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
			<-done
		}()
		if n, _ := load(t, dir); n > 8<<20 {
			t.Errorf("allocated %d bytes reading a pipe", n)
		}
	})
}
