// Package limitread reads whole files with a size bound checked before allocation, so that a huge or
// endless file (a device, a pipe) is refused with a clear error instead of exhausting memory.
package limitread

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrTooLarge is wrapped by the error for a file beyond the limit.
var ErrTooLarge = errors.New("file too large")

// File reads a whole file of at most limit bytes. A larger file is refused before anything is allocated
// for it; a file whose size is unknown (a device, a pipe) is refused once limit bytes are read.
func File(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s: is a directory", path)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%s: %w (%d bytes, the limit is %d)", path, ErrTooLarge, st.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %w (more than %d bytes)", path, ErrTooLarge, limit)
	}
	return data, nil
}
