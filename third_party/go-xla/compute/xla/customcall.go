// Copyright 2023-2026 The GoMLX Authors. SPDX-License-Identifier: Apache-2.0

package xla

// sqllm patch 4 (see third_party/go-xla/PATCHES.md): an exported, general custom call, so that code
// above the compute.Function interface (GoMLX's graph.BackendCustomCall) can emit XLA custom calls
// this package does not know, such as the Triton kernel call "__gpu$xla.gpu.triton".

import (
	"github.com/gomlx/compute"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/compute/support/xslices"
	"github.com/gomlx/go-xla/stablehlo"
	stablehloshapes "github.com/gomlx/go-xla/types/shapes"
	"github.com/pkg/errors"
)

// CustomCall emits a StableHLO custom_call to target, with the given XLA custom-call API version
// (4 is the typed FFI, which the Triton call "__gpu$xla.gpu.triton" uses) and backend_config given
// as raw MLIR attribute text, inserted verbatim ("" omits it; for API version 4 a dictionary such
// as `{grid_x = 32 : i32, name = "k", ...}`, otherwise a quoted string). All operands and results
// use row-major layouts. It returns one value per outputShapes entry.
//
// It is what graph.BackendCustomCall (the sqllm patch of GoMLX in third_party/gomlx) calls through
// its CustomCaller interface. See stablehlo.CustomCallRaw.
func (f *Function) CustomCall(target string, apiVersion int, backendConfigAttr string,
	operands []compute.Value, outputShapes []shapes.Shape) ([]compute.Value, error) {
	if len(operands) == 0 {
		return nil, errors.Errorf("CustomCall(%q) requires at least one operand", target)
	}
	if len(outputShapes) == 0 {
		return nil, errors.Errorf("CustomCall(%q) requires at least one output shape", target)
	}
	nodes, err := f.verifyAndCastValues("CustomCall", operands...)
	if err != nil {
		return nil, err
	}
	outShapes := make([]stablehloshapes.Shape, len(outputShapes))
	for i, s := range outputShapes {
		if !s.Ok() || s.IsTuple() {
			return nil, errors.Errorf("CustomCall(%q): output shape #%d (%s) is not a valid array shape",
				target, i, s)
		}
		outShapes[i] = ShapeToXLA(s)
	}
	operandValues := xslices.Map(nodes, func(n *Node) *stablehlo.Value { return n.value })
	// A non-nil slice of nil entries: every layout attribute is printed, row-major.
	operandLayouts := make([][]int, len(operandValues))
	outputLayouts := make([][]int, len(outShapes))
	values, err := stablehlo.CustomCallRaw(target, apiVersion, backendConfigAttr, operandValues,
		operandLayouts, outShapes, outputLayouts)
	if err != nil {
		return nil, err
	}
	return xslices.Map(values, func(v *stablehlo.Value) compute.Value { return f.newNode(v) }), nil
}
