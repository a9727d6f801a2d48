package prefixcache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests that run the test binary itself as a child process (TestHelperProcess), to write entries from
// other processes and to kill a writer mid-write.

const (
	helperEnv    = "PREFIXCACHE_TEST_HELPER" // the child's mode
	helperDirEnv = "PREFIXCACHE_TEST_DIR"
	helperArgEnv = "PREFIXCACHE_TEST_ARG"
	midWriteMark = "MID-WRITE"
)

// bigEntry is the large entry written by the "slow-write" helper: 25 blobs of 8 MiB (200 MiB).
func bigEntry() (Key, Meta, [][]byte) {
	meta := Meta{ModelFingerprint: "big-model", TokenizerFingerprint: "tok", DType: "f32", Tokens: []int{7, 8, 9}}
	var blobs [][]byte
	for i := range 25 {
		meta.Shapes = append(meta.Shapes, []int{2 << 20})
		meta.BlobDTypes = append(meta.BlobDTypes, "f32")
		b := make([]byte, 8<<20)
		b[0], b[len(b)-1] = byte(i), byte(i)
		blobs = append(blobs, b)
	}
	return MakeKey(meta.ModelFingerprint, meta.DType, meta.Tokens), meta, blobs
}

// sharedEntry is the entry written by the "write" helpers: the same Meta for all, content from fill.
func sharedEntry(fill byte) (Key, Meta, [][]byte) {
	k, meta, blobs := testEntry(4, 0)
	for i := range blobs {
		n, _ := blobSize(meta.Shapes[i], meta.BlobDTypes[i])
		if i < 2 {
			meta.Shapes[i] = []int{256, 1024}
			n = 512 << 10
		}
		blobs[i] = bytes.Repeat([]byte{fill}, int(n))
	}
	return k, meta, blobs
}

// slowWriter reports (on stdout) once more than after bytes went through, then slows down so much that
// the parent has all the time it needs to kill the process mid-write.
type slowWriter struct {
	w       io.Writer
	written int
	after   int
	marked  bool
}

func (s *slowWriter) Write(p []byte) (int, error) {
	if s.marked {
		time.Sleep(time.Second)
	}
	n, err := s.w.Write(p)
	s.written += n
	if !s.marked && s.written > s.after {
		s.marked = true
		fmt.Fprintln(os.Stdout, midWriteMark)
	}
	return n, err
}

// TestHelperProcess is not a real test: it is the child process of the tests below.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for other tests")
	}
	d, err := OpenDisk(os.Getenv(helperDirEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch mode {
	case "slow-write":
		k, meta, blobs := bigEntry()
		d.wrapWriter = func(w io.Writer) io.Writer { return &slowWriter{w: w, after: 16 << 20} }
		err = d.Write(k, meta, blobs)
		fmt.Fprintln(os.Stderr, "slow write finished (it should have been killed):", err)
		os.Exit(3)
	case "write":
		arg := os.Getenv(helperArgEnv) // <fill byte>,<count>
		fill, count, _ := strings.Cut(arg, ",")
		n, _ := strconv.Atoi(count)
		k, meta, blobs := sharedEntry(fill[0])
		for range n {
			if err := d.Write(k, meta, blobs); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(4)
			}
		}
		os.Exit(0)
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	os.Exit(5)
}

func helperCmd(t *testing.T, dir, mode, arg string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=60s")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperDirEnv+"="+dir, helperArgEnv+"="+arg)
	return cmd
}

func TestDiskKillMidWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("writes tens of MiB")
	}
	dir := filepath.Join(t.TempDir(), "cache")
	cmd := helperCmd(t, dir, "slow-write", "")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	marked := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == midWriteMark {
				marked <- true
				return
			}
		}
		marked <- false
	}()
	select {
	case ok := <-marked:
		if !ok {
			cmd.Wait()
			t.Fatalf("child exited without reaching mid-write: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not reach mid-write: %s", stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL on unix
		t.Fatal(err)
	}
	cmd.Wait()

	d, err := OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, meta, blobs := bigEntry()
	if _, err := d.Read(k, meta); !errors.Is(err, ErrMiss) {
		t.Fatalf("Read after a killed write: %v, want ErrMiss", err)
	}
	// The temp file is left over, partially written; a fresh one is kept by OpenDisk (its writer
	// may be alive), an old one is removed.
	names := dirFiles(t, dir)
	if len(names) != 1 || !strings.HasPrefix(names[0], k.String()+".kv.tmp-") {
		t.Fatalf("directory holds %v, want one temp file", names)
	}
	tmp := filepath.Join(dir, names[0])
	if fi, err := os.Stat(tmp); err != nil || fi.Size() < 16<<20 || fi.Size() >= 200<<20 {
		t.Fatalf("temp file: %v, %v; want a partial write", fi.Size(), err)
	}
	old := staleTempAge
	staleTempAge = 10 * time.Millisecond
	defer func() { staleTempAge = old }()
	time.Sleep(20 * time.Millisecond)
	if _, err := OpenDisk(dir); err != nil {
		t.Fatal(err)
	}
	if names := dirFiles(t, dir); len(names) != 0 {
		t.Fatalf("stale temp file not removed: %v", names)
	}

	// A later write and read succeed.
	mustWrite(t, d, k, meta, blobs)
	got, err := d.Read(k, meta)
	if err != nil || !equalBlobs(got, blobs) {
		t.Fatalf("Read after rewrite: %v", err)
	}
}

// TestDiskConcurrentProcessWriters: two processes write the same key with different content, many
// times, while this one reads: every Read returns one of the two complete contents.
func TestDiskConcurrentProcessWriters(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	d, err := OpenDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, meta, blobsA := sharedEntry('A')
	_, _, blobsB := sharedEntry('B')
	var cmds []*exec.Cmd
	var stderrs []*bytes.Buffer
	for _, fill := range []string{"A", "B"} {
		cmd := helperCmd(t, dir, "write", fill+",20")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		stderrs = append(stderrs, &stderr)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(cmds))
	for i, cmd := range cmds {
		wg.Go(func() { errs[i] = cmd.Wait() })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	reads, seen := 0, map[byte]int{}
loop:
	for {
		select {
		case <-done:
			break loop
		default:
		}
		got, err := d.Read(k, meta)
		switch {
		case errors.Is(err, ErrMiss):
			time.Sleep(time.Millisecond)
		case err != nil:
			t.Fatalf("Read during writes: %v", err)
		case equalBlobs(got, blobsA):
			reads++
			seen['A']++
		case equalBlobs(got, blobsB):
			reads++
			seen['B']++
		default:
			t.Fatal("Read returned a mix")
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v: %s", i, err, stderrs[i])
		}
	}
	got, err := d.Read(k, meta)
	if err != nil || (!equalBlobs(got, blobsA) && !equalBlobs(got, blobsB)) {
		t.Fatalf("final Read: %v", err)
	}
	if names := dirFiles(t, dir); len(names) != 1 {
		t.Fatalf("directory holds %v, want only the entry", names)
	}
	t.Logf("%d successful reads during the writes (%d A, %d B)", reads, seen['A'], seen['B'])
}
