package llama

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/compute/dtypes"
)

// TestPrefixMatchesOneShot: questions asked after a shared prefix (computed, or rebuilt from its exported
// blobs) get exactly the logits of the whole sequence computed at once, one question after another.
func TestPrefixMatchesOneShot(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[2].IDs[:300]
	r := testRunner(t, dtypes.Float32, Options{MaxChunk: 128, DynBlock: 32})
	ctxLen := 200
	questions := [][]int{ids[200:210], ids[200:201], ids[200:300]}

	seq := r.NewSequence()
	want, err := seq.AppendAllLogits(context.Background(), ids)
	seq.Close()
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Prefill(context.Background(), ids[:ctxLen])
	if err != nil {
		t.Fatal(err)
	}
	defer p.Free()
	if p.Bytes() != r.PrefixBytes(ctxLen) {
		t.Fatalf("Prefix.Bytes %d, PrefixBytes(%d) %d", p.Bytes(), ctxLen, r.PrefixBytes(ctxLen))
	}
	blobs, err := p.Blobs()
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blobs {
		if want := r.BlobShapes(ctxLen)[i]; len(b) != want[0]*want[1]*want[2]*4 {
			t.Fatalf("blob %d: %d bytes for shape %v", i, len(b), want)
		}
	}
	reloaded, err := r.PrefixFromBlobs(ids[:ctxLen], blobs)
	if err != nil {
		t.Fatal(err)
	}
	defer reloaded.Free()

	for name, prefix := range map[string]*Prefix{"computed": p, "reloaded": reloaded} {
		for qi, q := range questions {
			s := prefix.NewSequence()
			if s.Len() != ctxLen {
				t.Fatalf("%s: a new sequence has Len %d, want %d", name, s.Len(), ctxLen)
			}
			got, err := s.AppendAllLogits(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			for i, row := range got {
				if d := maxDiff(row, want[ctxLen+i]); d > 1e-4*maxAbs(want[ctxLen+i]) {
					t.Fatalf("%s question %d position %d: logits differ by %.2e", name, qi, ctxLen+i, d)
				}
			}
			// Decode a few tokens beyond the question (dynamic segment growth while the prefix is shared).
			for range 20 {
				if _, err := s.Append(context.Background(), []int{42}); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
		}
	}
	// The prefix is unchanged by the questions: the first question again gives the same logits.
	s := p.NewSequence()
	defer s.Close()
	pending := s.TakePending()
	if len(pending) != 1 || pending[0] != ids[ctxLen-1] {
		t.Fatalf("pending = %v, want the last context token %d", pending, ids[ctxLen-1])
	}
	got, err := s.Append(context.Background(), append(pending, questions[0]...))
	if err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(got, want[ctxLen+len(questions[0])-1]); d > 1e-4*maxAbs(got) {
		t.Fatalf("after other questions: logits differ by %.2e", d)
	}
}

// TestPrefixFromBlobFunc: blobs handed over one at a time rebuild the prefix Blob reads them from; an error
// of the reader comes back as it is, and blobs out of order, of the wrong size or too few are refused.
func TestPrefixFromBlobFunc(t *testing.T) {
	cases, err := loadGolden()
	if err != nil {
		t.Fatal(err)
	}
	ids := cases[2].IDs[:60]
	r := testRunner(t, dtypes.Float32, Options{MaxChunk: 128, DynBlock: 32})
	p, err := r.Prefill(context.Background(), ids)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Free()
	feed := func(order []int, mutate func(i int, b []byte) []byte, failAt int) func(each func(int, []byte) error) error {
		return func(each func(int, []byte) error) error {
			for k, i := range order {
				if k == failAt {
					return errReaderTest
				}
				b, err := p.Blob(i)
				if err != nil {
					return err
				}
				if mutate != nil {
					b = mutate(i, b)
				}
				if err := each(i, b); err != nil {
					return err
				}
			}
			return nil
		}
	}
	n := p.NumBlobs()
	inOrder := make([]int, n)
	for i := range inOrder {
		inOrder[i] = i
	}
	q, err := r.PrefixFromBlobFunc(ids, feed(inOrder, nil, -1))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		a, _ := p.Blob(i)
		b, _ := q.Blob(i)
		if !slices.Equal(a, b) {
			t.Fatalf("blob %d differs after the round trip", i)
		}
	}
	q.Free()
	swapped := slices.Clone(inOrder)
	swapped[1], swapped[2] = swapped[2], swapped[1]
	for name, tc := range map[string]struct {
		read func(each func(int, []byte) error) error
		want string
	}{
		"reader error":  {feed(inOrder, nil, 3), errReaderTest.Error()},
		"out of order":  {feed(swapped, nil, -1), "blob 2 handed over after 1"},
		"wrong size":    {feed(inOrder, func(i int, b []byte) []byte { return b[:len(b)-4] }, -1), "blob 0 has"},
		"too few blobs": {feed(inOrder[:n-1], nil, -1), fmt.Sprintf("prefix has %d blobs, want %d", n-1, n)},
	} {
		if q, err := r.PrefixFromBlobFunc(ids, tc.read); err == nil || !strings.Contains(err.Error(), tc.want) {
			if q != nil {
				q.Free()
			}
			t.Errorf("%s: got %v, want an error containing %q", name, err, tc.want)
		}
	}
}

var errReaderTest = errors.New("reader failed")
