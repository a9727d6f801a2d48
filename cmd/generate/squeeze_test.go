package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/squeezeai/sqllm/llama"
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
	kept := regexp.MustCompile(`squeezed attention: \d+ keys clustered into \d+ centroids \(the dropped keys attended through them and their clusters' mean values\) in [0-9.]+s, calibrated in [0-9.]+s, ` +
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

// TestGenerateSqueezeMass: -squeeze-mass calibrates the attention-mass target, reports it with each
// layer's kept list, and a second run loads the index from the disk cache and prints the same text.
func TestGenerateSqueezeMass(t *testing.T) {
	ctxFile, cache := codeContext(t), t.TempDir()
	args := []string{"-model", modelDir, "-backend", "go", "-context-file", ctxFile, "-cache-dir", cache,
		"-prompt", "def scale_40(x, y):\n", "-max-tokens", "6", "-squeeze-sparsity", "0.7", "-squeeze-mass"}
	code, out, errs := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	t.Logf("stdout %q\n%s", out, errs)
	kept := regexp.MustCompile(`sparsity 0\.70: attention-mass target 0\.\d+ keeps 0\.(2[89]|3[01])\d of the clustered keys ` +
		`for the calibration queries, one token at a time \(kept lists per layer, window included: \[(\d+ ){7}\d+\]\)`)
	if !kept.MatchString(errs) {
		t.Errorf("report lacks the attention-mass line:\n%s", errs)
	}
	if !regexp.MustCompile(`squeezed attention: the steps read 0\.\d{3} of the fixed context's keys \(measured`).MatchString(errs) {
		t.Errorf("report lacks the measured kept fraction:\n%s", errs)
	}
	code, out2, errs := runCLI(t, "", args...)
	if code != 0 || out2 != out || !strings.Contains(errs, "loaded from the disk cache") || !kept.MatchString(errs) {
		t.Errorf("second run: exit %d, stdout %q (first %q):\n%s", code, out2, out, errs)
	}
}

// TestGenerateSqueezeRemainder: the remainder is on by default in both modes (and with -squeeze-mass and
// -squeeze-hierarchical) and says so in the report, -squeeze-remainder=false turns it off;
// a second run loads the index from the disk cache (recomputing the clusters' mean values) and prints the
// same text.
func TestGenerateSqueezeRemainder(t *testing.T) {
	ctxFile, cache := codeContext(t), t.TempDir()
	for _, mode := range [][]string{{"-squeeze-budget", "0.2"}, {"-squeeze-sparsity", "0.9", "-squeeze-mass", "-squeeze-remainder"},
		{"-squeeze-budget", "0.2", "-squeeze-remainder=false"}, {"-squeeze-budget", "0.2", "-squeeze-hierarchical"}} {
		args := append([]string{"-model", modelDir, "-backend", "go", "-context-file", ctxFile, "-cache-dir", cache,
			"-prompt", "def scale_40(x, y):\n", "-max-tokens", "6"}, mode...)
		code, out, errs := runCLI(t, "", args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", mode, code, errs)
		}
		t.Logf("%v: stdout %q\n%s", mode, out, errs)
		off := slices.Contains(mode, "-squeeze-remainder=false")
		if has := strings.Contains(errs, "(the dropped keys attended through them and their clusters' mean values)"); has == off {
			t.Errorf("%v: the report's remainder is %v, want %v:\n%s", mode, has, !off, errs)
		}
		code, out2, errs := runCLI(t, "", args...)
		if code != 0 || out2 != out || !strings.Contains(errs, "loaded from the disk cache") {
			t.Errorf("%v: second run: exit %d, stdout %q (first %q):\n%s", mode, code, out2, out, errs)
		}
	}
}

// TestGenerateSqueezeHierarchical: -squeeze-hierarchical runs with -squeeze-sparsity (calibrated, then
// found in the disk cache by a second run, same text) and with -squeeze-budget, and the report says
// hierarchical with its numbers of centroids.
func TestGenerateSqueezeHierarchical(t *testing.T) {
	ctxFile, cache := codeContext(t), t.TempDir()
	base := []string{"-model", modelDir, "-backend", "go", "-context-file", ctxFile, "-prompt", "def scale_40(x, y):\n", "-max-tokens", "6",
		"-squeeze-hierarchical"}
	args := append(slices.Clone(base), "-cache-dir", cache, "-squeeze-sparsity", "0.7")
	code, out, errs := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	t.Logf("stdout %q\n%s", out, errs)
	line := regexp.MustCompile(`squeezed attention: \d+ keys clustered into (\d+) centroids and (\d+) coarse centroids \(hierarchical: each step scores ` +
		`the coarse ones and (\d+) centroids under the best\) \(the dropped keys attended through them and their clusters' mean values\) in [0-9.]+s, calibrated in [0-9.]+s, window \d+; sparsity 0\.70: threshold \S+ ` +
		`keeps 0\.(2[89]|3[01])\d of the clustered keys .*mean kept fraction 0\.\d+ \(centroids counted\)`)
	m := line.FindStringSubmatch(errs)
	if m == nil {
		t.Fatalf("report lacks the hierarchical squeeze line:\n%s", errs)
	}
	if fine, _ := strconv.Atoi(m[1]); m[2] == "0" || m[3] == m[1] || fine == 0 {
		t.Errorf("centroids %s, coarse %s, scored %s: want coarse centroids and fewer scored than all", m[1], m[2], m[3])
	}
	code, out2, errs := runCLI(t, "", args...)
	if code != 0 || out2 != out || !strings.Contains(errs, "coarse centroids (hierarchical") || !strings.Contains(errs, "loaded from the disk cache") {
		t.Fatalf("second run: exit %d, stdout %q (first %q), not loaded from the disk cache: %s", code, out2, out, errs)
	}
	code, _, errs = runCLI(t, "", append(base, "-no-cache", "-squeeze-budget", "0.3", "-squeeze-coarse-keep", "0.5", "-squeeze-remainder=false")...)
	budget := regexp.MustCompile(`squeezed attention: \d+ keys clustered into 77 centroids and 15 coarse centroids \(hierarchical: each step scores ` +
		`the coarse ones and 39 centroids under the best\) in [0-9.]+s, window \d+, budget \d+ keys; mean kept fraction 0\.\d+`)
	if code != 0 || !budget.MatchString(errs) {
		t.Errorf("budget mode: exit %d, report:\n%s", code, errs)
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
		{"hierarchical without a mode", []string{"-context-file", ctxFile, "-squeeze-hierarchical"}, "-squeeze-hierarchical needs -squeeze-sparsity or -squeeze-budget"},
		{"coarse keep without hierarchical", []string{"-context-file", ctxFile, "-squeeze-sparsity", "0.7", "-squeeze-coarse-keep", "0.5"}, "apply to -squeeze-hierarchical"},
		{"coarse above centroids", []string{"-context-file", ctxFile, "-squeeze-sparsity", "0.7", "-squeeze-hierarchical", "-squeeze-coarse", "0.1"},
			"-squeeze-hierarchical: llama: squeeze coarse centroids fraction 0.1 outside (0, 0.05)"},
		{"mass with a budget", []string{"-context-file", ctxFile, "-squeeze-budget", "0.3", "-squeeze-mass"}, "-squeeze-mass needs -squeeze-sparsity"},
		{"mass and hierarchical", []string{"-context-file", ctxFile, "-squeeze-sparsity", "0.7", "-squeeze-hierarchical", "-squeeze-mass"}, "flat index only"},
		{"remainder without a mode", []string{"-context-file", ctxFile, "-squeeze-remainder"}, "-squeeze-remainder needs -squeeze-sparsity or -squeeze-budget"},
		{"coarse keep above 1", []string{"-context-file", ctxFile, "-squeeze-budget", "0.3", "-squeeze-hierarchical", "-squeeze-coarse-keep", "2"}, "coarse keep fraction 2"},
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

// TestSqueezeReportKernels: the squeeze line names the GPU kernels a prefix's steps take (the paged kernel for
// decode, with the dynamic segment in its launch, the selection kernels, with the lookup kernel, the cluster-score
// kernels), and only those (on the CPU none runs, so the generate runs above never show them).
func TestSqueezeReportKernels(t *testing.T) {
	const paged, seg, sel, look, scores = "paged Triton kernel", "in the same launch", "selection Triton kernels", "lookup kernel",
		"cluster-score Triton kernels"
	for mask := range 32 {
		c := struct{ paged, seg, sel, look, scores bool }{mask&1 != 0, mask&8 != 0, mask&2 != 0, mask&16 != 0, mask&4 != 0}
		info := llama.SqueezeInfo{Clustered: 1000, Window: 100, Budget: 100, Centroids: 50, ScoredCentroids: 50,
			PagedDecode: c.paged, PagedSegDecode: c.paged && c.seg, SelectKernels: c.sel, LookupKernel: c.sel && c.look, ScoreKernels: c.scores}
		r := squeezeReport(info)
		if strings.Contains(r, paged) != c.paged || strings.Contains(r, seg) != (c.paged && c.seg) || strings.Contains(r, sel) != c.sel ||
			strings.Contains(r, look) != (c.sel && c.look) || strings.Contains(r, scores) != c.scores {
			t.Errorf("PagedDecode=%v PagedSegDecode=%v SelectKernels=%v LookupKernel=%v ScoreKernels=%v: %q", c.paged, c.paged && c.seg,
				c.sel, c.sel && c.look, c.scores, r)
		}
	}
}
