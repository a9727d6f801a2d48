//go:build !unix

package weights

import (
	"fmt"
	"io"
	"os"
)

// mapFile reads size bytes of f into memory: the fallback where syscall.Mmap does not exist.
func mapFile(f *os.File, size int64) ([]byte, error) {
	if size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("cannot read %d bytes", size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), b); err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return b, nil
}

func unmapFile([]byte) error { return nil }
