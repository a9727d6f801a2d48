//go:build unix

package engine

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/squeezeai/sqllm/backend/xla"
)

// TestOpenEndlessFile: a generation_config.json that never ends (a pipe, a device such as /dev/zero) is
// read up to a limit, not to its end: Open then works without it.
func TestOpenEndlessFile(t *testing.T) {
	dir := linkModel(t, nil)
	path := filepath.Join(dir, "generation_config.json")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skip("no named pipes:", err)
	}
	var written atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		for range 256 { // 256 MiB, unless the reader stops
			n, err := f.Write(buf)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	m, err := Open(dir, Options{Backend: xla.Go, CacheDir: "-"})
	if f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Close() // unblocks the writer if Open never read the pipe
	}
	<-done
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if n := written.Load(); n > 32<<20 {
		t.Errorf("Open read %d bytes of generation_config.json", n)
	}
}
