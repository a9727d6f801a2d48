package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// clone copies a stream decoder's state so that it can be flushed without
// disturbing the original.
func (d *StreamDecoder) clone() *StreamDecoder {
	c := *d
	c.ctx = append([]int(nil), d.ctx...)
	c.pending = append([]int(nil), d.pending...)
	return &c
}

// TestStreamDecodeGolden pushes the ids of every golden case one at a time.
// After every prefix ids[:k], the text emitted so far plus a Flush must equal
// Decode(ids[:k]); every Push result must be valid UTF-8 and the emitted text
// must never need to be taken back.
func TestStreamDecodeGolden(t *testing.T) {
	for _, gs := range goldenSets {
		t.Run(gs.name, func(t *testing.T) {
			tk := loadTokenizer(t, gs.name)
			for i, c := range loadGolden(t, gs.golden) {
				for _, skip := range []bool{false, true} {
					full := tk.Decode(c.IDs, skip)
					d := tk.NewStreamDecoder(skip)
					var emitted strings.Builder
					for k, id := range c.IDs {
						out := d.Push(id)
						if !utf8.ValidString(out) {
							t.Fatalf("case %d: Push returned invalid UTF-8 %q", i, out)
						}
						emitted.WriteString(out)
						if !strings.HasPrefix(full, emitted.String()) {
							t.Fatalf("case %d skip=%v: after %d ids emitted %q, not a prefix of %q",
								i, skip, k+1, emitted.String(), full)
						}
						want := tk.Decode(c.IDs[:k+1], skip)
						if got := emitted.String() + d.clone().Flush(); got != want {
							t.Fatalf("case %d skip=%v: prefix of %d ids: stream %q, Decode %q",
								i, skip, k+1, got, want)
						}
					}
					emitted.WriteString(d.Flush())
					if emitted.String() != full {
						t.Fatalf("case %d skip=%v: stream %q, Decode %q", i, skip, emitted.String(), full)
					}
				}
			}
		})
	}
}

// TestStreamDecodeIncomplete checks that a multi-byte character split across
// tokens is held back until complete.
func TestStreamDecodeIncomplete(t *testing.T) {
	for _, name := range []string{"llama2", "llama3", "tinycode"} {
		tk := loadTokenizer(t, name)
		ids := tk.Encode("日本語 ok 👍🏽!", false)
		d := tk.NewStreamDecoder(true)
		var parts []string
		for _, id := range ids {
			if out := d.Push(id); out != "" {
				if strings.ContainsRune(out, utf8.RuneError) {
					t.Errorf("%s: Push emitted %q", name, out)
				}
				parts = append(parts, out)
			}
		}
		parts = append(parts, d.Flush())
		if got, want := strings.Join(parts, ""), tk.Decode(ids, true); got != want {
			t.Errorf("%s: stream %q, Decode %q", name, got, want)
		}
	}
}

// TestStreamFlushIncomplete checks that an unfinished character comes out of
// Flush as Decode renders it.
func TestStreamFlushIncomplete(t *testing.T) {
	tk := loadTokenizer(t, "llama2")
	e5, _ := tk.TokenToID("<0xE5>")
	a, _ := tk.TokenToID("▁a")
	ids := []int{a, e5}
	d := tk.NewStreamDecoder(false)
	got := d.Push(a) + d.Push(e5) + d.Flush()
	if want := tk.Decode(ids, false); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
