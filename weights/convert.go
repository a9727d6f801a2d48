package weights

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/x448/float16"
)

// BFloat16ToFloat32 converts bfloat16 bits to float32 (exact).
func BFloat16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// Float32ToBFloat16 rounds f to the nearest bfloat16, ties to even. NaNs stay NaN (quieted, sign kept),
// infinities stay infinite, values beyond the bfloat16 range round to infinity.
func Float32ToBFloat16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN: truncating could turn it into an infinity
		return uint16(u>>16) | 0x0040
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// float64ToBFloat16 rounds x to the nearest bfloat16, ties to even, without double-rounding errors: x is
// first rounded to float32 with round-to-odd, which float32's 16 extra bits make harmless.
func float64ToBFloat16(x float64) uint16 {
	r := float32(x) // round to nearest even
	if math.IsNaN(x) || math.IsInf(x, 0) || float64(r) == x {
		return Float32ToBFloat16(r)
	}
	u := math.Float32bits(r)
	if math.Abs(float64(r)) > math.Abs(x) { // rounded away from zero (maybe to Inf): truncate instead
		u--
	}
	return Float32ToBFloat16(math.Float32frombits(u | 1)) // inexact: set the sticky bit
}

// f16Table maps every float16 bit pattern to its float32 value (256 KiB, built on first use).
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = float16.Frombits(uint16(i)).Float32()
	}
	return &t
})

// parallelChunk is the number of elements below which conversion stays on one goroutine.
const parallelChunk = 1 << 20

// parallelFor calls fn on disjoint ranges covering [0, n), concurrently when n is large.
func parallelFor(n int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n/parallelChunk)
	if workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for w := range workers {
		lo, hi := n*w/workers, n*(w+1)/workers
		wg.Go(func() { fn(lo, hi) })
	}
	wg.Wait()
}

// DecodeFloat32 converts little-endian F64, F32, F16 or BF16 data to a new []float32.
func DecodeFloat32(data []byte, d DType) ([]float32, error) {
	if !d.IsFloat() {
		return nil, fmt.Errorf("weights: cannot convert %s to float32", d)
	}
	if len(data)%d.Size() != 0 {
		return nil, fmt.Errorf("weights: %d bytes is not a whole number of %s elements", len(data), d)
	}
	dst := make([]float32, len(data)/d.Size())
	parallelFor(len(dst), func(lo, hi int) {
		decodeFloat32(dst[lo:hi], data[lo*d.Size():hi*d.Size()], d)
	})
	return dst, nil
}

func decodeFloat32(dst []float32, src []byte, d DType) {
	switch d {
	// The three-index slices let the compiler drop bounds checks; BF16 goes four elements at a time.
	case BF16:
		src = src[:2*len(dst)]
		i := 0
		for ; i+4 <= len(dst); i += 4 {
			v := binary.LittleEndian.Uint64(src[2*i : 2*i+8 : 2*i+8])
			d := dst[i : i+4 : i+4]
			d[0] = math.Float32frombits(uint32(v) << 16)
			d[1] = math.Float32frombits(uint32(v) &^ 0xffff)
			d[2] = math.Float32frombits(uint32(v>>32) << 16)
			d[3] = math.Float32frombits(uint32(v>>32) &^ 0xffff)
		}
		for ; i < len(dst); i++ {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:2*i+2:2*i+2])) << 16)
		}
	case F16:
		t := f16Table()
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = t[binary.LittleEndian.Uint16(src[2*i:2*i+2:2*i+2])]
		}
	case F32:
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i : 4*i+4 : 4*i+4]))
		}
	case F64:
		src = src[:8*len(dst)]
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(src[8*i : 8*i+8 : 8*i+8])))
		}
	}
}

// DecodeBFloat16 converts little-endian F64, F32, F16 or BF16 data to bfloat16 bit patterns: BF16 is
// copied, the others are rounded to nearest even.
func DecodeBFloat16(data []byte, d DType) ([]uint16, error) {
	if !d.IsFloat() {
		return nil, fmt.Errorf("weights: cannot convert %s to bfloat16", d)
	}
	if len(data)%d.Size() != 0 {
		return nil, fmt.Errorf("weights: %d bytes is not a whole number of %s elements", len(data), d)
	}
	dst := make([]uint16, len(data)/d.Size())
	parallelFor(len(dst), func(lo, hi int) {
		decodeBFloat16(dst[lo:hi], data[lo*d.Size():hi*d.Size()], d)
	})
	return dst, nil
}

func decodeBFloat16(dst []uint16, src []byte, d DType) {
	switch d {
	case BF16:
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = binary.LittleEndian.Uint16(src[2*i : 2*i+2 : 2*i+2])
		}
	case F16:
		t := f16Table()
		src = src[:2*len(dst)]
		for i := range dst {
			dst[i] = Float32ToBFloat16(t[binary.LittleEndian.Uint16(src[2*i:2*i+2:2*i+2])])
		}
	case F32:
		src = src[:4*len(dst)]
		for i := range dst {
			dst[i] = Float32ToBFloat16(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i : 4*i+4 : 4*i+4])))
		}
	case F64:
		src = src[:8*len(dst)]
		for i := range dst {
			dst[i] = float64ToBFloat16(math.Float64frombits(binary.LittleEndian.Uint64(src[8*i : 8*i+8 : 8*i+8])))
		}
	}
}

// EncodeFloat32 encodes v as little-endian F32, F16, BF16 or F64 bytes (F16 and BF16 round to nearest even).
func EncodeFloat32(v []float32, d DType) ([]byte, error) {
	if !d.IsFloat() {
		return nil, fmt.Errorf("weights: cannot encode float32 as %s", d)
	}
	out := make([]byte, len(v)*d.Size())
	parallelFor(len(v), func(lo, hi int) {
		dst := out[lo*d.Size() : hi*d.Size()]
		switch d {
		case BF16:
			for i, f := range v[lo:hi] {
				binary.LittleEndian.PutUint16(dst[2*i:], Float32ToBFloat16(f))
			}
		case F16:
			for i, f := range v[lo:hi] {
				binary.LittleEndian.PutUint16(dst[2*i:], float16.Fromfloat32(f).Bits())
			}
		case F32:
			for i, f := range v[lo:hi] {
				binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
			}
		case F64:
			for i, f := range v[lo:hi] {
				binary.LittleEndian.PutUint64(dst[8*i:], math.Float64bits(float64(f)))
			}
		}
	})
	return out, nil
}
