// Copyright 2023-2026 The GoMLX Authors. SPDX-License-Identifier: Apache-2.0

package graph

// sqllm patch (see third_party/gomlx/PATCHES.md): BackendCustomCall adds a node for an XLA custom
// call that GoMLX does not know, such as the Triton kernel call "__gpu$xla.gpu.triton" that runs
// Squeezed Attention's fused kernel. compute.Function has no such op, so the backend function is
// asked for the CustomCaller interface (go-xla's compute/xla Function has it, in sqllm's patched
// copy of go-xla).

import (
	"fmt"
	"strings"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/shapes"
	"github.com/gomlx/gomlx/support/exceptions"
	"github.com/pkg/errors"
)

// NodeTypeCustomCall is the NodeType of BackendCustomCall nodes. Like NodeTypeCall, NodeTypeSort,
// NodeTypeWhile and NodeTypeIf (1000 to 1003) it lies outside the generated enumeration, so the
// generated values and gen_nodetype_enumer.go are unchanged; its String() is "NodeType(1004)".
const NodeTypeCustomCall NodeType = 1004

// CustomCaller is implemented by backend functions (compute.Function) that can emit an arbitrary
// custom call: go-xla's compute/xla Function (patched in sqllm's third_party/go-xla).
//
// CustomCall emits a call to target with the given XLA custom-call API version and backend_config
// given as raw MLIR attribute text, inserted verbatim ("" omits it; for API version 4 a dictionary
// such as `{grid_x = 32 : i32, name = "k", ...}`), with row-major layouts for all operands and
// results. It returns one value per outputShapes entry.
type CustomCaller interface {
	CustomCall(target string, apiVersion int, backendConfigAttr string, operands []compute.Value,
		outputShapes []shapes.Shape) ([]compute.Value, error)
}

// HasCustomCall reports whether g's backend can emit custom calls (BackendCustomCall): whether the
// backend function g is building implements CustomCaller. It is false for the pure-Go backend.
// It puts g into building mode, as any op does.
func HasCustomCall(g *Graph) bool {
	if !g.IsValid() {
		return false
	}
	g.AssertBuilding()
	_, ok := g.currentFunc.backendFunc.(CustomCaller)
	return ok
}

// nodeInputsCustomCall holds the inputs of a BackendCustomCall.
type nodeInputsCustomCall struct {
	target            string
	apiVersion        int
	backendConfigAttr string
	operands          []*Node
	outputShapes      []shapes.Shape
}

// Type implements the interface NodeInputs.
func (ni *nodeInputsCustomCall) Type() NodeType {
	return NodeTypeCustomCall
}

// String implements the interface NodeInputs.
func (ni *nodeInputsCustomCall) String() string {
	operands := make([]string, len(ni.operands))
	for i, n := range ni.operands {
		operands[i] = fmt.Sprintf("[#%d]", n.Id())
	}
	outputs := make([]string, len(ni.outputShapes))
	for i, s := range ni.outputShapes {
		outputs[i] = s.String()
	}
	config := ni.backendConfigAttr
	if len(config) > 80 {
		config = fmt.Sprintf("%s... (%d bytes)", config[:80], len(config))
	}
	return fmt.Sprintf("CustomCall(target=%q, apiVersion=%d, operands=(%s), outputs=(%s), backendConfig=%s)",
		ni.target, ni.apiVersion, strings.Join(operands, ", "), strings.Join(outputs, ", "), config)
}

// CloneWithInputs implements the interface NodeInputs. Like Sort, it returns the node holding all
// outputs: the split nodes of a multi-output call are cloned on their own.
func (ni *nodeInputsCustomCall) CloneWithInputs(originalNode *Node, newInputs ...*Node) *Node {
	return backendCustomCall(ni.target, ni.apiVersion, ni.backendConfigAttr, newInputs, ni.outputShapes)
}

// BackendCustomCall adds an XLA custom call to target, with operands and one output per
// outputShapes entry (in order), to the function being built. apiVersion is XLA's custom-call API
// version (4, the typed FFI, for the Triton call "__gpu$xla.gpu.triton") and backendConfigAttr the
// backend_config as raw MLIR attribute text, inserted verbatim ("" omits it; for API version 4 a
// dictionary such as `{grid_x = 32 : i32, name = "k", ...}`). All operands and results use
// row-major layouts.
//
// The backend must support it (HasCustomCall): otherwise, as for any graph error, it panics (with
// an error naming the backend; exceptions.TryCatch recovers it). There is no gradient for it.
//
// This is an sqllm patch of GoMLX (third_party/gomlx/PATCHES.md).
func BackendCustomCall(target string, apiVersion int, backendConfigAttr string, operands []*Node,
	outputShapes []shapes.Shape) []*Node {
	if len(operands) == 0 {
		exceptions.Panicf("BackendCustomCall(%q): at least one operand is required", target)
	}
	if len(outputShapes) == 0 {
		exceptions.Panicf("BackendCustomCall(%q): at least one output shape is required", target)
	}
	return splitNode(backendCustomCall(target, apiVersion, backendConfigAttr, operands, outputShapes))
}

// backendCustomCall creates the (possibly multi-output) custom call node.
func backendCustomCall(target string, apiVersion int, backendConfigAttr string, operands []*Node,
	outputShapes []shapes.Shape) *Node {
	g := validateBuildingGraphFromInputs(operands...)
	caller, ok := g.currentFunc.backendFunc.(CustomCaller)
	if !ok {
		exceptions.Panicf("BackendCustomCall(%q): backend %q (%s; function type %T) does not support "+
			"custom calls: it lacks the graph.CustomCaller interface (only the XLA backend, "+
			"github.com/gomlx/go-xla/compute/xla, has it); check graph.HasCustomCall first",
			target, g.backend.Name(), g.backend.Description(), g.currentFunc.backendFunc)
	}
	inputs := &nodeInputsCustomCall{
		target:            target,
		apiVersion:        apiVersion,
		backendConfigAttr: backendConfigAttr,
		operands:          operands,
		outputShapes:      outputShapes,
	}
	operandOps := make([]compute.Value, len(operands))
	for i, n := range operands {
		operandOps[i] = n.outputOps[0]
	}
	outputOps, err := caller.CustomCall(target, apiVersion, backendConfigAttr, operandOps, outputShapes)
	if err != nil {
		panic(errors.WithMessagef(err, "BackendCustomCall(%q) on backend %q", target, g.backend.Name()))
	}
	if len(outputOps) != len(outputShapes) {
		exceptions.Panicf("BackendCustomCall(%q): backend %q returned %d outputs for %d output shapes",
			target, g.backend.Name(), len(outputOps), len(outputShapes))
	}
	nodeShapes := make([]shapes.Shape, len(outputOps))
	for i, op := range outputOps {
		nodeShapes[i] = mustNoError(g.builder.OpShape(op))
		if !nodeShapes[i].Equal(outputShapes[i]) {
			exceptions.Panicf("BackendCustomCall(%q): backend %q gave output #%d shape %s, want %s",
				target, g.backend.Name(), i, nodeShapes[i], outputShapes[i])
		}
	}
	node := &Node{
		outputOps:    outputOps,
		outputShapes: nodeShapes,
		graph:        g,
		inputs:       inputs,
		inputNodes:   operands,
	}
	g.registerNode(node)
	return node
}
