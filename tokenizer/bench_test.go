package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// benchText is about 31 KB of Go source (bytes/buffer.go and bufio/scan.go
// from the Go distribution).
func benchText(b *testing.B) string {
	b.Helper()
	return string(readFile(b, "testdata/bench_code.go.txt"))
}

// BenchmarkEncode encodes ~31 KB of code (about 8K tokens) per operation.
// "warm" reuses the tokenizer's word cache as a server would; "cold" starts
// each operation with an empty cache.
func BenchmarkEncode(b *testing.B) {
	text := benchText(b)
	for _, name := range []string{"tinycode", "llama3", "qwen3", "llama2"} {
		tk := loadTokenizer(b, name)
		b.Run(name+"/warm", func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				n = len(tk.Encode(text, true))
			}
			b.ReportMetric(float64(n), "tokens")
		})
		b.Run(name+"/cold", func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			c := *tk
			m := *tk.model
			c.model = &m
			for b.Loop() {
				m.cache = newWordCache(cacheCapacity)
				c.Encode(text, true)
			}
		})
	}
}

func BenchmarkEncodeParallel(b *testing.B) {
	text := benchText(b)
	tk := loadTokenizer(b, "tinycode")
	b.SetBytes(int64(len(text)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tk.Encode(text, true)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	text := benchText(b)
	for _, name := range []string{"tinycode", "llama2"} {
		tk := loadTokenizer(b, name)
		ids := tk.Encode(text, true)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				tk.Decode(ids, false)
			}
		})
	}
}

func BenchmarkStreamDecode(b *testing.B) {
	text := benchText(b)
	for _, name := range []string{"tinycode", "llama2"} {
		tk := loadTokenizer(b, name)
		ids := tk.Encode(text, true)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				d := tk.NewStreamDecoder(false)
				for _, id := range ids {
					d.Push(id)
				}
				d.Flush()
			}
		})
	}
}

// FuzzEncodeDecode checks that byte-level tokenizers round-trip any valid
// UTF-8 text exactly, and that the stream decoder agrees with Decode.
func FuzzEncodeDecode(f *testing.F) {
	for _, s := range []string{
		"", "hello world", "def f(x):\n    return x**2  # square\n", "  \t\n\n  x  ",
		"日本語のテキスト", "👍🏽 family: 👨‍👩‍👧", "é vs e\u0301", "<|begin_of_text|>hi<|end_of_text|>",
		"I'm sure it's what they'd've wanted", "x = 12345678901234567890", "\u00a0\u3000\u2028",
		"<|begin_of_text", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
	} {
		f.Add(s)
	}
	tks := []*Tokenizer{loadTokenizer(f, "tinycode"), loadTokenizer(f, "llama3")}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return
		}
		for _, tk := range tks {
			ids := tk.Encode(s, false)
			if got := tk.Decode(ids, false); got != s {
				t.Fatalf("round trip of %q gave %q (ids %v)", s, got, ids)
			}
			d := tk.NewStreamDecoder(false)
			var sb strings.Builder
			for _, id := range ids {
				out := d.Push(id)
				if !utf8.ValidString(out) {
					t.Fatalf("stream emitted invalid UTF-8 %q", out)
				}
				sb.WriteString(out)
			}
			sb.WriteString(d.Flush())
			if sb.String() != s {
				t.Fatalf("stream decode of %q gave %q", s, sb.String())
			}
		}
	})
}
