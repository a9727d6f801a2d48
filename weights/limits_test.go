//go:build unix

package weights

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// allocated returns the bytes allocated while f runs.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// sparseFile creates a file of the given size that occupies (almost) no disk space.
func sparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("{"); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFileSizeLimits: a config.json or index file larger than its limit is refused before it is read
// (nothing near its size is allocated), and one whose size the file system does not tell (a pipe, a
// device such as /dev/zero) is refused once the limit is reached instead of being read to its end.
func TestFileSizeLimits(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, ConfigFileName)
	sparseFile(t, big, MaxConfigSize+1)
	var err error
	if n := allocated(func() { _, err = ReadConfig(dir) }); n > 1<<20 {
		t.Errorf("ReadConfig allocated %d bytes for a file over the limit", n)
	}
	if err == nil || !strings.Contains(err.Error(), "too large") || !strings.Contains(err.Error(), big) {
		t.Errorf("config.json over the limit: %v", err)
	}

	index := filepath.Join(t.TempDir(), IndexFileName)
	sparseFile(t, index, MaxHeaderSize+1)
	if n := allocated(func() { _, err = OpenIndex(index) }); n > 1<<20 {
		t.Errorf("OpenIndex allocated %d bytes for a file over the limit", n)
	}
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("index over the limit: %v", err)
	}

	// A named pipe (like a device) has no size: it is read up to the limit only.
	for _, name := range []string{ConfigFileName, IndexFileName} {
		d := t.TempDir()
		fifo(t, filepath.Join(d, name), MaxHeaderSize+2)
		var err error
		if name == ConfigFileName {
			_, err = ReadConfig(d)
		} else {
			_, err = OpenDir(d)
		}
		if err == nil || !strings.Contains(err.Error(), "too large") {
			t.Errorf("%s is a pipe of %d bytes: %v", name, MaxHeaderSize+2, err)
		}
	}
}

// fifo makes a named pipe at path that yields n zero bytes (fewer if the reader stops early).
func fifo(t *testing.T, path string, n int) {
	t.Helper()
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
		buf := make([]byte, 1<<20)
		for n > 0 {
			k, err := f.Write(buf[:min(n, len(buf))])
			if err != nil {
				return // the reader stopped
			}
			n -= k
		}
	}()
	t.Cleanup(func() {
		// Unblock a writer still waiting for a reader, then wait for it.
		if f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		<-done
	})
}
