package main

import (
	"strings"
	"testing"
)

// TestGenerateAbsurdLimits: option values that would size something absurdly are refused with one line
// on stderr (before, -chunk 2^62 never returned: rounding it up to a power of two looped forever).
func TestGenerateAbsurdLimits(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"huge chunk", []string{"-chunk", "4611686018427387905"}, "MaxChunk"},
		{"context beyond the model", []string{"-max-context", "1000000"}, "beyond the model's context"},
		{"negative context", []string{"-max-context", "-5"}, "must not be negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-model", modelDir, "-backend", "go", "-no-cache", "-max-tokens", "4"}, tc.args...)
			code, out, errs := runCLI(t, "", args...)
			if code == 0 {
				t.Fatalf("exit 0, stdout %q", out)
			}
			if !strings.Contains(errs, tc.want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
				t.Errorf("stderr %q: want one line mentioning %q", errs, tc.want)
			}
		})
	}
	// A -max-tokens beyond the context is clamped: generation stops when the context is full.
	code, _, errs := runCLI(t, "", "-model", modelDir, "-backend", "go", "-no-cache", "-max-context", "40",
		"-max-tokens", "1000", "-ignore-eos", "-prompt", "def f(x):\n")
	if code != 0 || !strings.Contains(errs, "stop: context_full") {
		t.Errorf("exit %d, stderr %q; want a clean stop when the context is full", code, errs)
	}
}
