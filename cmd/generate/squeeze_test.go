package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// codeContext writes a Python file of about 900 tokens.
func codeContext(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("import math\n\n\n")
	for i := range 40 {
		fmt.Fprintf(&b, "def scale_%d(x, y):\n    \"\"\"Scale x by %d and add y.\"\"\"\n    return x * %d + y\n\n\n", i, i+2, i+2)
	}
	path := filepath.Join(t.TempDir(), "context.py")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestGenerateSqueezeSparsity: -squeeze-sparsity runs the calibrated mode and reports the kept fraction,
// the clustering and calibration times; a second run finds the index in the disk cache.
func TestGenerateSqueezeSparsity(t *testing.T) {
	ctxFile, cache := codeContext(t), t.TempDir()
	args := []string{"-model", modelDir, "-backend", "go", "-context-file", ctxFile, "-cache-dir", cache,
		"-prompt", "def scale_40(x, y):\n", "-max-tokens", "6", "-squeeze-sparsity", "0.7"}
	code, out, errs := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	t.Logf("stdout %q\n%s", out, errs)
	kept := regexp.MustCompile(`squeezed attention: \d+ keys clustered into \d+ centroids in [0-9.]+s, calibrated in [0-9.]+s, ` +
		`window \d+; sparsity 0\.70: threshold \S+ keeps 0\.(2[89]|3[01])\d of the clustered keys .*mean kept fraction (0\.\d+) \(centroids counted\)`)
	if !kept.MatchString(errs) || !strings.Contains(errs, "computed") {
		t.Errorf("report lacks the squeeze line:\n%s", errs)
	}
	code, out2, errs := runCLI(t, "", args...)
	if code != 0 || out2 != out {
		t.Fatalf("second run: exit %d, stdout %q (first %q): %s", code, out2, out, errs)
	}
	if !strings.Contains(errs, "disk hit") || !strings.Contains(errs, "loaded from the disk cache") {
		t.Errorf("second run did not load the index:\n%s", errs)
	}
}

func TestGenerateSqueezeFlags(t *testing.T) {
	ctxFile := codeContext(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"both modes", []string{"-context-file", ctxFile, "-squeeze-sparsity", "0.7", "-squeeze-budget", "0.3"}, "exclusive"},
		{"sparsity without context", []string{"-squeeze-sparsity", "0.7"}, "-context-file"},
		{"sparsity 1", []string{"-context-file", ctxFile, "-squeeze-sparsity", "1"}, "-squeeze-sparsity 1"},
		{"negative sparsity", []string{"-context-file", ctxFile, "-squeeze-sparsity", "-0.5"}, "-squeeze-sparsity -0.5"},
		{"hierarchical", []string{"-context-file", ctxFile, "-squeeze-hierarchical"}, "not implemented yet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := runCLI(t, "", append([]string{"-model", modelDir, "-backend", "go", "-no-cache"}, tc.args...)...)
			if code != 2 || !strings.Contains(errs, tc.want) || strings.Count(strings.TrimSpace(errs), "\n") != 0 {
				t.Errorf("exit %d, stderr %q: want exit 2 and one line mentioning %q", code, errs, tc.want)
			}
		})
	}
	// Sparsity 0 is dense: no squeeze line.
	code, _, errs := runCLI(t, "", "-model", modelDir, "-backend", "go", "-no-cache", "-context-file", ctxFile,
		"-squeeze-sparsity", "0", "-max-tokens", "2")
	if code != 0 || strings.Contains(errs, "squeezed attention") {
		t.Errorf("sparsity 0: exit %d, stderr %s", code, errs)
	}
}
