package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

const modelDir = "../../models/tinycode-llama-16m"

func TestGenerateGreedy(t *testing.T) {
	code, out, errs := runCLI(t, "", "-model", modelDir, "-backend", "go",
		"-prompt", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", "-max-tokens", "8")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	// transformers' greedy continuation starts with "    return n-1\n\n\ndef".
	if !strings.HasPrefix(out, "    return n-1\n") {
		t.Errorf("stdout %q", out)
	}
	for _, want := range []string{"backend: go", "prompt: 23 tokens", "tokens/s", "decode: 8 tokens"} {
		if !strings.Contains(errs, want) {
			t.Errorf("report lacks %q:\n%s", want, errs)
		}
	}
}

func TestGeneratePromptFromStdinWithStop(t *testing.T) {
	code, out, errs := runCLI(t, "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
		"-model", modelDir, "-backend", "go", "-prompt-file", "-", "-max-tokens", "32", "-stop", "def ", "-quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out != "    return n-1\n\n\n" {
		t.Errorf("stdout %q, want the text before the stop string", out)
	}
	if errs != "" {
		t.Errorf("-quiet still wrote %q", errs)
	}
}

// TestGenerateErrors: every bad input gives one clear line on stderr and a non-zero exit, no panic.
func TestGenerateErrors(t *testing.T) {
	long := filepath.Join(t.TempDir(), "long.txt")
	if err := os.WriteFile(long, []byte(strings.Repeat("x = 1\n", 20000)), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown backend", []string{"-backend", "tpu"}, `unknown backend "tpu"`},
		{"unknown dtype", []string{"-dtype", "f8"}, `unknown dtype "f8"`},
		{"bad temperature", []string{"-temperature", "-1"}, "temperature"},
		{"bad top-p", []string{"-top-p", "1.5"}, "top-p"},
		{"bad max tokens", []string{"-max-tokens", "0"}, "-max-tokens"},
		{"absurd max tokens", []string{"-max-tokens", "100000000"}, "-max-tokens"},
		{"unknown flag", []string{"-frobnicate"}, "frobnicate"},
		{"missing model", []string{"-model", "/nonexistent/model"}, "/nonexistent/model"},
		{"missing prompt file", []string{"-model", modelDir, "-prompt-file", "/nonexistent/p.txt"}, "/nonexistent/p.txt"},
		{"prompt longer than the context", []string{"-model", modelDir, "-backend", "go", "-prompt-file", long}, "context"},
		{"stray argument", []string{"hello"}, `unexpected argument "hello"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCLI(t, "", tc.args...)
			if code == 0 {
				t.Fatalf("exit 0, stdout %q", out)
			}
			if !strings.Contains(errs, tc.want) {
				t.Errorf("stderr %q does not mention %q", errs, tc.want)
			}
			if strings.Contains(errs, "goroutine ") || strings.Contains(errs, "panic") {
				t.Errorf("stderr has a panic trace: %s", errs)
			}
		})
	}
}
