package weights

// DType is a safetensors element type, spelled as in the file header ("F32", "BF16", ...).
type DType string

// The safetensors dtypes this package understands. Only F64, F32, F16 and BF16 convert to float32 and
// bfloat16; the others can be listed, shape-checked and read raw.
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	Bool   DType = "BOOL"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
)

// Size returns the size of one element in bytes, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, Bool, F8E4M3, F8E5M2:
		return 1
	}
	return 0
}

// IsFloat reports whether d converts to float32 and bfloat16 (F64, F32, F16, BF16).
func (d DType) IsFloat() bool {
	switch d {
	case F64, F32, F16, BF16:
		return true
	}
	return false
}

// TensorInfo describes one tensor of a checkpoint.
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
	File  string // path of the safetensors file that holds it
}

// NumElements returns the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// NumBytes returns the size of the tensor's data in bytes.
func (t TensorInfo) NumBytes() int { return t.NumElements() * t.DType.Size() }
