package stablehlo

import (
	"strconv"
	"strings"

	"github.com/gomlx/go-xla/internal/optypes"
	"github.com/gomlx/go-xla/types/shapes"
	"github.com/pkg/errors"
)

// CustomCallAPIVersionStatusReturning is XLA custom-call API version 2: the
// custom-call returns its outputs and an XLA status. It is what the cuDNN fused
// attention custom-calls use.
const CustomCallAPIVersionStatusReturning = 2

// renderLayouts renders the MLIR operand_layouts/result_layouts array attribute from
// minor-to-major dim orders. layouts==nil returns "" (omit the attribute). Each entry is
// paired by index with ranks; a nil/empty entry defaults to row-major (decreasing order
// over its rank), e.g. rank 4 -> [3, 2, 1, 0]. Output form:
//
//	"[dense<[3, 2, 1, 0]> : tensor<4xindex>, dense<0> : tensor<1xindex>]"
func renderLayouts(layouts [][]int, ranks []int) string {
	if layouts == nil {
		return ""
	}
	var sb strings.Builder
	sb.WriteByte('[')
	for i, rank := range ranks {
		if i > 0 {
			sb.WriteString(", ")
		}
		order := layouts[i]
		if len(order) == 0 {
			order = make([]int, rank)
			for j := range order {
				order[j] = rank - 1 - j
			}
		}
		sb.WriteString("dense<")
		if len(order) == 1 {
			sb.WriteString(strconv.Itoa(order[0]))
		} else {
			sb.WriteByte('[')
			for j, d := range order {
				if j > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString(strconv.Itoa(d))
			}
			sb.WriteByte(']')
		}
		sb.WriteString("> : tensor<")
		sb.WriteString(strconv.Itoa(rank))
		sb.WriteString("xindex>")
	}
	sb.WriteByte(']')
	return sb.String()
}

// CustomCallV2 emits a stablehlo.custom_call (API version 2 = STATUS_RETURNING) to the named
// target (e.g. "__cudnn$fmhaSoftmax").
//
//   - backendConfig: the raw backend_config string (serialized proto / JSON); "" omits it.
//   - operandLayouts/outputLayouts: minor-to-major dim orders, paired by index with
//     operands/outputShapes.
//     Nil/empty TOP-LEVEL slice: the layout attribute is OMITTED entirely from the op.
//     Nil/empty ENTRY within a non-nil slice: that operand/result defaults to row-major
//     (decreasing order over its rank, e.g. rank 4 -> [3, 2, 1, 0]).
//   - outputShapes: one shape per result (multi-output: e.g. attention output + scratch).
//
// Returns one output Value per outputShape, in order.
func CustomCallV2(
	target string,
	backendConfig string,
	operands []*Value,
	operandLayouts [][]int,
	outputShapes []shapes.Shape,
	outputLayouts [][]int,
) ([]*Value, error) {
	op := optypes.CustomCall
	if len(operands) == 0 {
		return nil, errors.Errorf("%s requires at least one operand", op)
	}
	if len(outputShapes) == 0 {
		return nil, errors.Errorf("%s requires at least one output shape", op)
	}
	fn, err := innerMostFunction(operands...)
	if err != nil {
		return nil, err
	}
	if fn.Returned {
		return nil, errors.Errorf("cannot add operation %s after returning, in function %q", op, fn.Name)
	}

	operandRanks := make([]int, len(operands))
	for i, v := range operands {
		operandRanks[i] = v.shape.Rank()
	}
	outputRanks := make([]int, len(outputShapes))
	for i, s := range outputShapes {
		outputRanks[i] = s.Rank()
	}

	stmt := fn.addMultiOp(op, outputShapes, operands)
	attrs := map[string]any{
		"call_target_name": target,
		"api_version":      int32(CustomCallAPIVersionStatusReturning),
	}
	if backendConfig != "" {
		attrs["backend_config"] = backendConfig
	}
	if s := renderLayouts(operandLayouts, operandRanks); s != "" {
		attrs["operand_layouts"] = literalStr(s)
	}
	if s := renderLayouts(outputLayouts, outputRanks); s != "" {
		attrs["result_layouts"] = literalStr(s)
	}
	stmt.Attributes = attrs
	return stmt.Outputs, nil
}

// CustomCallRaw emits a stablehlo.custom_call to the named target with any API version and a
// backend_config given as raw MLIR attribute text (sqllm patch 4; see third_party/go-xla/PATCHES.md).
// CustomCallV2 only emits API version 2 with a string backend_config; XLA's typed-FFI custom calls
// (API version 4), such as the Triton kernel call "__gpu$xla.gpu.triton" that jax emits for Pallas
// and jax-triton kernels, take an MLIR dictionary attribute instead, for example
//
//	{debug = false, grid_x = 32 : i32, grid_y = 1 : i32, grid_z = 1 : i32, ir = "...", name = "k", num_stages = 2 : i32, num_warps = 4 : i32}
//
// The arguments:
//
//   - target: the call_target_name, printed as a string attribute (the generic MLIR form this
//     builder prints for every op), so targets with '$' need no symbol quoting.
//   - apiVersion: XLA's CustomCallApiVersion (0 to 4), printed as "api_version = N : i32".
//   - backendConfigAttr: inserted verbatim as the backend_config attribute; "" omits it. StableHLO
//     requires a dictionary ("{...}") for API version 4 and a string ("\"...\"") for the others,
//     and that is checked here. Strings inside it must use MLIR's escapes: see QuoteMLIRString.
//   - operandLayouts/outputLayouts: minor-to-major dim orders, as in CustomCallV2: a nil top-level
//     slice omits the attribute, a nil entry is row-major; a non-nil slice must have one entry per
//     operand/output.
//
// Returns one output Value per outputShape, in order (several outputs are several results of the
// one op, as for CustomCallV2).
func CustomCallRaw(
	target string,
	apiVersion int,
	backendConfigAttr string,
	operands []*Value,
	operandLayouts [][]int,
	outputShapes []shapes.Shape,
	outputLayouts [][]int,
) ([]*Value, error) {
	op := optypes.CustomCall
	if target == "" {
		return nil, errors.Errorf("%s requires a call target name", op)
	}
	if apiVersion < 0 || apiVersion > 4 {
		return nil, errors.Errorf("%s(%q): api_version %d out of range (XLA knows 0 to 4)", op, target, apiVersion)
	}
	if len(operands) == 0 {
		return nil, errors.Errorf("%s(%q) requires at least one operand", op, target)
	}
	if len(outputShapes) == 0 {
		return nil, errors.Errorf("%s(%q) requires at least one output shape", op, target)
	}
	if operandLayouts != nil && len(operandLayouts) != len(operands) {
		return nil, errors.Errorf("%s(%q): %d operand layouts for %d operands", op, target,
			len(operandLayouts), len(operands))
	}
	if outputLayouts != nil && len(outputLayouts) != len(outputShapes) {
		return nil, errors.Errorf("%s(%q): %d result layouts for %d results", op, target,
			len(outputLayouts), len(outputShapes))
	}
	for i, layout := range operandLayouts {
		if len(layout) != 0 && len(layout) != operands[i].shape.Rank() {
			return nil, errors.Errorf("%s(%q): operand #%d layout %v for rank %d", op, target,
				i, layout, operands[i].shape.Rank())
		}
	}
	for i, layout := range outputLayouts {
		if len(layout) != 0 && len(layout) != outputShapes[i].Rank() {
			return nil, errors.Errorf("%s(%q): result #%d layout %v for rank %d", op, target,
				i, layout, outputShapes[i].Rank())
		}
	}
	backendConfigAttr = strings.TrimSpace(backendConfigAttr)
	if backendConfigAttr != "" {
		isDict := strings.HasPrefix(backendConfigAttr, "{") && strings.HasSuffix(backendConfigAttr, "}")
		isString := len(backendConfigAttr) >= 2 && strings.HasPrefix(backendConfigAttr, `"`) &&
			strings.HasSuffix(backendConfigAttr, `"`)
		if apiVersion == 4 && !isDict {
			return nil, errors.Errorf("%s(%q): api_version 4 needs a dictionary backend_config ({...}), got %.80q",
				op, target, backendConfigAttr)
		}
		if apiVersion != 4 && !isString {
			return nil, errors.Errorf("%s(%q): api_version %d needs a string backend_config (\"...\"), got %.80q",
				op, target, apiVersion, backendConfigAttr)
		}
	}
	fn, err := innerMostFunction(operands...)
	if err != nil {
		return nil, err
	}
	if fn.Returned {
		return nil, errors.Errorf("cannot add operation %s after returning, in function %q", op, fn.Name)
	}

	operandRanks := make([]int, len(operands))
	for i, v := range operands {
		operandRanks[i] = v.shape.Rank()
	}
	outputRanks := make([]int, len(outputShapes))
	for i, s := range outputShapes {
		outputRanks[i] = s.Rank()
	}

	stmt := fn.addMultiOp(op, outputShapes, operands)
	attrs := map[string]any{
		"call_target_name": target,
		"api_version":      int32(apiVersion),
	}
	if backendConfigAttr != "" {
		attrs["backend_config"] = literalStr(backendConfigAttr)
	}
	if s := renderLayouts(operandLayouts, operandRanks); s != "" {
		attrs["operand_layouts"] = literalStr(s)
	}
	if s := renderLayouts(outputLayouts, outputRanks); s != "" {
		attrs["result_layouts"] = literalStr(s)
	}
	stmt.Attributes = attrs
	return stmt.Outputs, nil
}

// QuoteMLIRString returns s as an MLIR string literal, with the quotes, for use inside a raw
// attribute such as CustomCallRaw's backend_config (sqllm patch 4). MLIR's lexer knows only the
// escapes \" \\ \n \t and \XX (two hex digits), unlike Go's %q (\x.., \u....), so printable ASCII
// is kept and every other byte is written as \XX: any byte string, Triton IR or MLIR bytecode
// included, round-trips.
func QuoteMLIRString(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var sb strings.Builder
	sb.Grow(len(s) + 2)
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c == '\n':
			sb.WriteString(`\n`)
		case c == '\t':
			sb.WriteString(`\t`)
		case c >= 0x20 && c < 0x7f:
			sb.WriteByte(c)
		default:
			sb.WriteByte('\\')
			sb.WriteByte(hexDigits[c>>4])
			sb.WriteByte(hexDigits[c&0xf])
		}
	}
	sb.WriteByte('"')
	return sb.String()
}
