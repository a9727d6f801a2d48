package weights

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/x448/float16"
)

const tinyModelDir = "../models/tinycode-llama-16m"

// tinyModelShapes is what a LLaMA with tinycode-llama-16m's config expects (tied embeddings: no lm_head).
func tinyModelShapes() map[string][]int {
	const hidden, inter, layers, vocab, kvDim = 384, 1024, 8, 8192, 2 * 64
	m := map[string][]int{
		"model.embed_tokens.weight": {vocab, hidden},
		"model.norm.weight":         {hidden},
	}
	for l := range layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		m[p+"input_layernorm.weight"] = []int{hidden}
		m[p+"post_attention_layernorm.weight"] = []int{hidden}
		m[p+"self_attn.q_proj.weight"] = []int{hidden, hidden}
		m[p+"self_attn.k_proj.weight"] = []int{kvDim, hidden}
		m[p+"self_attn.v_proj.weight"] = []int{kvDim, hidden}
		m[p+"self_attn.o_proj.weight"] = []int{hidden, hidden}
		m[p+"mlp.gate_proj.weight"] = []int{inter, hidden}
		m[p+"mlp.up_proj.weight"] = []int{inter, hidden}
		m[p+"mlp.down_proj.weight"] = []int{hidden, inter}
	}
	return m
}

func TestTinyModel(t *testing.T) {
	start := time.Now()
	c, err := OpenDir(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opened := time.Since(start)

	names := c.Names()
	if len(names) != 74 || !slices.IsSorted(names) {
		t.Fatalf("got %d names (sorted %v), want 74 sorted", len(names), slices.IsSorted(names))
	}
	if got := len(c.Files()); got != 3 {
		t.Errorf("got %d files, want 3", got)
	}
	if got := c.Metadata()["format"]; got != "pt" {
		t.Errorf("metadata format = %q, want pt", got)
	}
	info, ok := c.Info("model.embed_tokens.weight")
	if !ok || info.DType != BF16 || !slices.Equal(info.Shape, []int{8192, 384}) ||
		filepath.Base(info.File) != "model-00001-of-00003.safetensors" {
		t.Fatalf("embed_tokens: %+v %v", info, ok)
	}
	if err := c.CheckShapes(tinyModelShapes(), nil); err != nil {
		t.Fatal(err)
	}
	totalBytes := 0
	for _, name := range names {
		info, _ := c.Info(name)
		if info.DType != BF16 {
			t.Errorf("%s: dtype %s, want BF16", name, info.DType)
		}
		totalBytes += info.NumBytes()
	}
	if totalBytes != 31470336 { // the index's metadata.total_size
		t.Errorf("total size %d, want 31470336", totalBytes)
	}

	// Float32 agrees with the bfloat16 bits, and the weights look trained, not zero.
	start = time.Now()
	for _, name := range names {
		f, err := c.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.BFloat16(name)
		if err != nil {
			t.Fatal(err)
		}
		raw, _, err := c.Raw(name)
		if err != nil {
			t.Fatal(err)
		}
		sumSq := 0.0
		for i := range f {
			if math.Float32bits(f[i]) != math.Float32bits(BFloat16ToFloat32(b[i])) ||
				b[i] != binary.LittleEndian.Uint16(raw[2*i:]) {
				t.Fatalf("%s[%d]: float32 %v, bfloat16 %#04x, raw %#04x", name, i, f[i], b[i], raw[2*i:2*i+2])
			}
			sumSq += float64(f[i]) * float64(f[i])
		}
		if rms := math.Sqrt(sumSq / float64(len(f))); rms == 0 || math.IsNaN(rms) || rms > 10 {
			t.Errorf("%s: rms %v", name, rms)
		}
	}
	t.Logf("opened in %v; all 74 tensors converted to float32 and bfloat16 in %v", opened, time.Since(start))

	cfg, err := ReadConfig(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ModelType != "llama" || cfg.HiddenSize != 384 || cfg.IntermediateSize != 1024 ||
		cfg.NumHiddenLayers != 8 || cfg.NumAttentionHeads != 6 || cfg.NumKeyValueHeads != 2 ||
		cfg.HeadDim != 64 || cfg.VocabSize != 8192 || cfg.MaxPositionEmbeddings != 16384 ||
		cfg.RMSNormEps != 1e-5 || cfg.HiddenAct != "silu" || !cfg.TieWordEmbeddings ||
		cfg.AttentionBias || cfg.MLPBias || cfg.TorchDType != "bfloat16" ||
		!slices.Equal(cfg.BOSTokenIDs, []int{8184}) || !slices.Equal(cfg.EOSTokenIDs, []int{8185}) ||
		cfg.RoPE.Theta != 100000 || cfg.RoPE.Type != "default" || cfg.SlidingWindow != 0 ||
		!slices.Equal(cfg.Architectures, []string{"LlamaForCausalLM"}) {
		t.Errorf("config: %+v", cfg)
	}
}

func TestOpenVariants(t *testing.T) {
	// Open dispatches on directory, index file and safetensors file.
	for _, p := range []string{tinyModelDir, filepath.Join(tinyModelDir, IndexFileName)} {
		c, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(c.Names()); n != 74 {
			t.Errorf("Open(%s): %d tensors", p, n)
		}
		c.Close()
	}
	c, err := Open(filepath.Join(tinyModelDir, "model-00003-of-00003.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(c.Names()); n != 23 {
		t.Errorf("shard 3: %d tensors, want 23", n)
	}
	c.Close()
}

func TestRoundTrip(t *testing.T) {
	vals := []float32{0, 1, -2.5, 0.375, 61440, -1024, float32(math.Inf(1)), float32(math.Inf(-1))}
	metadata := map[string]string{"format": "pt", "note": "round trip"}
	var tensors []WriteTensor
	for _, d := range []DType{F32, F16, BF16, F64} {
		data, err := EncodeFloat32(vals, d)
		if err != nil {
			t.Fatal(err)
		}
		tensors = append(tensors, WriteTensor{Name: "w." + string(d), DType: d, Shape: []int{2, 4}, Data: data})
	}
	ints := make([]byte, 3*8)
	for i := range 3 {
		binary.LittleEndian.PutUint64(ints[8*i:], uint64(i*1000))
	}
	tensors = append(tensors,
		WriteTensor{Name: "ids", DType: I64, Shape: []int{3}, Data: ints},
		WriteTensor{Name: "scalar", DType: F32, Shape: []int{}, Data: []byte{0, 0, 0x80, 0x3f}},
		WriteTensor{Name: "empty", DType: BF16, Shape: []int{0, 5}, Data: nil},
		WriteTensor{Name: "flag", DType: Bool, Shape: []int{1}, Data: []byte{1}},
	)
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	if err := Write(path, tensors, metadata); err != nil {
		t.Fatal(err)
	}
	// Atomic write leaves no temporary file; the data section is 8-byte aligned.
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(entries))
	}
	file, _ := os.ReadFile(path)
	if n := binary.LittleEndian.Uint64(file); (8+n)%8 != 0 {
		t.Errorf("header length %d: data not aligned", n)
	}

	c, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := c.Names(), []string{"empty", "flag", "ids", "scalar", "w.BF16", "w.F16", "w.F32", "w.F64"}; !slices.Equal(got, want) {
		t.Errorf("names %v, want %v", got, want)
	}
	if got := c.Metadata(); got["note"] != "round trip" || len(got) != 2 {
		t.Errorf("metadata %v", got)
	}
	for _, wt := range tensors {
		raw, info, err := c.Raw(wt.Name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != wt.Name || info.DType != wt.DType || !slices.Equal(info.Shape, wt.Shape) || string(raw) != string(wt.Data) {
			t.Errorf("%s: info %+v, raw %d bytes, want %d", wt.Name, info, len(raw), len(wt.Data))
		}
		if !wt.DType.IsFloat() || wt.Name == "scalar" || wt.Name == "empty" {
			continue
		}
		f, err := c.Float32(wt.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(f, vals) {
			t.Errorf("%s: float32 %v, want %v", wt.Name, f, vals)
		}
		b, err := c.BFloat16(wt.Name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range b {
			if want := Float32ToBFloat16(vals[i]); b[i] != want {
				t.Errorf("%s[%d]: bfloat16 %#04x, want %#04x", wt.Name, i, b[i], want)
			}
		}
	}
	if f, err := c.Float32("scalar"); err != nil || !slices.Equal(f, []float32{1}) {
		t.Errorf("scalar: %v %v", f, err)
	}
	if f, err := c.Float32("empty"); err != nil || len(f) != 0 {
		t.Errorf("empty: %v %v", f, err)
	}
	if _, err := c.Float32("ids"); err == nil || !strings.Contains(err.Error(), "cannot convert I64 to float32") {
		t.Errorf("Float32 of I64: %v", err)
	}
	if _, err := c.BFloat16("flag"); err == nil || !strings.Contains(err.Error(), "cannot convert BOOL to bfloat16") {
		t.Errorf("BFloat16 of BOOL: %v", err)
	}
	if _, err := c.Float32("nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown tensor: %v", err)
	}
	if _, ok := c.Info("nope"); ok {
		t.Error("Info of unknown tensor")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Raw("ids"); !errors.Is(err, ErrClosed) {
		t.Errorf("Raw after Close: %v", err)
	}
}

func TestWriteErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.safetensors")
	for _, tc := range []struct {
		tensors []WriteTensor
		want    string
	}{
		{[]WriteTensor{{Name: "a", DType: F32, Shape: []int{2}, Data: make([]byte, 4)}}, "needs 8 bytes, got 4"},
		{[]WriteTensor{{Name: "a", DType: F32, Data: make([]byte, 4)}, {Name: "a", DType: F32, Data: make([]byte, 4)}}, `duplicate tensor "a"`},
		{[]WriteTensor{{Name: "a", DType: "Q4", Data: nil}}, `unsupported dtype "Q4"`},
		{[]WriteTensor{{Name: "", DType: F32, Data: make([]byte, 4)}}, "empty tensor name"},
		{[]WriteTensor{{Name: "__metadata__", DType: F32, Data: make([]byte, 4)}}, "reserved"},
		{[]WriteTensor{{Name: "a", DType: F32, Shape: []int{-1}}}, "bad shape"},
	} {
		err := Write(path, tc.tensors, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("got %v, want an error with %q", err, tc.want)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("failed writes left a file: %v", err)
	}
}

// TestFloat32ToBFloat16 checks special values and every rounding case against an exact reference.
func TestFloat32ToBFloat16(t *testing.T) {
	for _, tc := range []struct {
		in   uint32
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1
		{0x80000000, 0x8000}, // -0
		{0x7f800000, 0x7f80}, // +Inf
		{0xff800000, 0xff80}, // -Inf
		{0x7fc00000, 0x7fc0}, // quiet NaN
		{0x7f800001, 0x7fc0}, // signalling NaN whose payload truncates to Inf: stays NaN
		{0xff800001, 0xffc0}, // negative signalling NaN
		{0x7f7fffff, 0x7f80}, // MaxFloat32 rounds to +Inf
		{0x7f7f7fff, 0x7f7f}, // just below the bfloat16 overflow threshold
		{0x3f808000, 0x3f80}, // tie, even stays
		{0x3f818000, 0x3f82}, // tie, odd rounds up
		{0x3f808001, 0x3f81}, // above the tie
		{0x3f807fff, 0x3f80}, // below the tie
		{0xbf818000, 0xbf82}, // negative tie to even
		{0x00000001, 0x0000}, // smallest float32 subnormal underflows
		{0x00008000, 0x0000}, // subnormal tie to even (zero)
		{0x00018000, 0x0002}, // subnormal tie to even
		{0x00010000, 0x0001}, // smallest bfloat16 subnormal
		{0x007fffff, 0x0080}, // largest float32 subnormal rounds to the smallest normal
	} {
		if got := Float32ToBFloat16(math.Float32frombits(tc.in)); got != tc.want {
			t.Errorf("Float32ToBFloat16(%#08x) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
	// Pseudo-random bit patterns against the reference, through the slice path too.
	seed := uint32(1)
	var in []float32
	for range 200_000 {
		seed = seed*1664525 + 1013904223
		in = append(in, math.Float32frombits(seed))
	}
	data, _ := EncodeFloat32(in, F32)
	out, _ := DecodeBFloat16(data, F32)
	for i, f := range in {
		if want := refBFloat16(float64(f)); out[i] != want && !(isNaN16(out[i]) && isNaN16(want)) {
			t.Fatalf("bfloat16(%#08x) = %#04x, want %#04x", math.Float32bits(f), out[i], want)
		}
	}
}

func TestFloat64ToBFloat16(t *testing.T) {
	// Cases where rounding through float32 first would round twice.
	x := float64(math.Float32frombits(0x3f808000)) + 0x1p-40 // just above a bfloat16 tie, rounds to the tie in float32
	if got := float64ToBFloat16(x); got != 0x3f81 {
		t.Errorf("double rounding: got %#04x, want 0x3f81", got)
	}
	if got := float64ToBFloat16(-x); got != 0xbf81 {
		t.Errorf("negative double rounding: got %#04x, want 0xbf81", got)
	}
	for _, v := range []float64{1e300, -1e300, 1e-300, -1e-300, math.MaxFloat32, 3.3961e38, 0x1p-133, 0x1p-134, 0x1.8p-134} {
		if got, want := float64ToBFloat16(v), refBFloat16(v); got != want {
			t.Errorf("float64ToBFloat16(%g) = %#04x, want %#04x", v, got, want)
		}
	}
	seed := uint64(7)
	for range 200_000 {
		seed = seed*6364136223846793005 + 1442695040888963407
		// Keep the exponent near float32's range so that rounding is exercised.
		v := math.Float64frombits(seed&^(0x7ff<<52) | uint64(1023-140+int(seed>>59)*9)<<52)
		if got, want := float64ToBFloat16(v), refBFloat16(v); got != want {
			t.Fatalf("float64ToBFloat16(%g / %#016x) = %#04x, want %#04x", v, math.Float64bits(v), got, want)
		}
	}
	data := make([]byte, 8)
	binary.LittleEndian.PutUint64(data, math.Float64bits(x))
	if b, err := DecodeBFloat16(data, F64); err != nil || b[0] != 0x3f81 {
		t.Errorf("DecodeBFloat16(F64) = %v, %v", b, err)
	}
}

func isNaN16(b uint16) bool { return b&0x7f80 == 0x7f80 && b&0x7f != 0 }

// refBFloat16 rounds x to the nearest bfloat16, ties to even, by comparing exact distances to the
// neighbouring candidates (2^128 standing for +Inf, as IEEE rounding treats overflow).
func refBFloat16(x float64) uint16 {
	if math.IsNaN(x) {
		return 0x7fc0
	}
	sign := uint16(0)
	if math.Signbit(x) {
		sign, x = 0x8000, -x
	}
	if math.IsInf(x, 0) {
		return sign | 0x7f80
	}
	value := func(m uint16) float64 {
		if m == 0x7f80 {
			return 0x1p128
		}
		return float64(math.Float32frombits(uint32(m) << 16))
	}
	// Largest magnitude m with value(m) <= x, by bisection over the ordered bit patterns.
	lo, hi := uint16(0), uint16(0x7f80)
	if x >= value(hi) {
		return sign | 0x7f80
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if value(mid) <= x {
			lo = mid
		} else {
			hi = mid
		}
	}
	// x - value(lo) and value(hi) - x are exact in float64 for float32-range magnitudes above 2^-1000.
	dlo, dhi := x-value(lo), value(hi)-x
	switch {
	case dlo < dhi:
		return sign | lo
	case dhi < dlo:
		return sign | hi
	case lo%2 == 0:
		return sign | lo
	}
	return sign | hi
}

func TestFloat16Conversions(t *testing.T) {
	// Every float16 bit pattern: float32 exact, bfloat16 rounded like the float32 would be.
	all := make([]byte, 2<<16)
	for i := range 1 << 16 {
		binary.LittleEndian.PutUint16(all[2*i:], uint16(i))
	}
	f, _ := DecodeFloat32(all, F16)
	b, _ := DecodeBFloat16(all, F16)
	for i := range 1 << 16 {
		want := float16.Frombits(uint16(i)).Float32()
		if math.Float32bits(f[i]) != math.Float32bits(want) {
			t.Fatalf("f16 %#04x: float32 %v, want %v", i, f[i], want)
		}
		if wb := refBFloat16(float64(want)); b[i] != wb && !(isNaN16(b[i]) && isNaN16(wb)) {
			t.Fatalf("f16 %#04x: bfloat16 %#04x, want %#04x", i, b[i], wb)
		}
	}
	if f[0x0001] != 0x1p-24 || f[0x7c00] != float32(math.Inf(1)) || !math.IsNaN(float64(f[0x7e00])) || f[0x3c00] != 1 {
		t.Error("float16 special values")
	}
	// Encoding rounds to nearest even, saturating to Inf, flushing below half the smallest subnormal.
	for _, tc := range []struct {
		in   float32
		want uint16
	}{
		{65504, 0x7bff}, {65519, 0x7bff}, {65520, 0x7c00}, {float32(math.Inf(-1)), 0xfc00},
		{0x1p-24, 0x0001}, {0x1p-25, 0x0000}, {0x1.8p-24, 0x0002}, {0x1.000002p-25, 0x0001},
		{1 + 0x1p-11, 0x3c00}, {1 + 0x3p-11, 0x3c02}, {float32(math.Copysign(0, -1)), 0x8000},
	} {
		data, _ := EncodeFloat32([]float32{tc.in}, F16)
		if got := binary.LittleEndian.Uint16(data); got != tc.want {
			t.Errorf("EncodeFloat32(%g, F16) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
	data, _ := EncodeFloat32([]float32{float32(math.NaN())}, F16)
	if got := binary.LittleEndian.Uint16(data); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("NaN encodes as %#04x", got)
	}
	if _, err := EncodeFloat32([]float32{1}, I32); err == nil {
		t.Error("EncodeFloat32 to I32 succeeded")
	}
	if _, err := DecodeFloat32(make([]byte, 3), F16); err == nil {
		t.Error("DecodeFloat32 of 3 bytes of F16 succeeded")
	}
}

// TestParallelConversion checks that the chunked parallel path matches the serial one on a large tensor.
func TestParallelConversion(t *testing.T) {
	n := 3*parallelChunk + 12345
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i%9973) * 0.001
	}
	for _, d := range []DType{F32, F16, BF16} {
		data, err := EncodeFloat32(v, d)
		if err != nil {
			t.Fatal(err)
		}
		f, _ := DecodeFloat32(data, d)
		b, _ := DecodeBFloat16(data, d)
		serialF := make([]float32, n)
		decodeFloat32(serialF, data, d)
		serialB := make([]uint16, n)
		decodeBFloat16(serialB, data, d)
		if !slices.Equal(f, serialF) || !slices.Equal(b, serialB) {
			t.Errorf("%s: parallel and serial conversions differ", d)
		}
	}
}

// TestDecodeLengths covers the four-at-a-time BF16 loop's tail for every length up to 9.
func TestDecodeLengths(t *testing.T) {
	for n := range 10 {
		data := make([]byte, 2*n)
		for i := range data {
			data[i] = byte(i*71 + 5)
		}
		f, err := DecodeFloat32(data, BF16)
		if err != nil || len(f) != n {
			t.Fatalf("n=%d: %d elements, %v", n, len(f), err)
		}
		for i := range n {
			if want := BFloat16ToFloat32(binary.LittleEndian.Uint16(data[2*i:])); math.Float32bits(f[i]) != math.Float32bits(want) {
				t.Errorf("n=%d: [%d] = %v, want %v", n, i, f[i], want)
			}
		}
	}
}

func BenchmarkFloat32(b *testing.B) {
	for _, d := range []DType{BF16, F16, F32} {
		for _, n := range []int{1 << 16, 1 << 22, 1 << 25} {
			b.Run(fmt.Sprintf("%s/n=%d", d, n), func(b *testing.B) {
				data := make([]byte, n*d.Size())
				b.SetBytes(int64(n * 4))
				for b.Loop() {
					DecodeFloat32(data, d)
				}
			})
		}
	}
}

func BenchmarkBFloat16(b *testing.B) {
	for _, d := range []DType{BF16, F32} {
		n := 1 << 22
		b.Run(fmt.Sprintf("%s/n=%d", d, n), func(b *testing.B) {
			data := make([]byte, n*d.Size())
			b.SetBytes(int64(n * 2))
			for b.Loop() {
				DecodeBFloat16(data, d)
			}
		})
	}
}

func BenchmarkOpenTinyModel(b *testing.B) {
	for b.Loop() {
		c, err := OpenDir(tinyModelDir)
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range c.Names() {
			if _, err := c.Float32(name); err != nil {
				b.Fatal(err)
			}
		}
		c.Close()
	}
}
