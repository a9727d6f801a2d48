package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

const modelDir = "../../models/tinycode-llama-16m"

// TestBadFlags: bad values are refused with exit code 2 and a message naming the flag, before the model
// is opened.
func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-lens", "512,x"}, `-lens: bad length "x"`},
		{[]string{"-lens", "-4"}, `-lens: bad length "-4"`},
		{[]string{"-memory-cache-gib", "-1"}, "-memory-cache-gib -1"},
		{[]string{"-squeeze-budget", "1"}, "-squeeze-budget 1"},
		{[]string{"-squeeze-budget", "0.1", "-squeeze-input", "0"}, "-squeeze-input 0"},
		{[]string{"-backend", "tpu"}, "-backend"},
		{[]string{"-squeeze-hierarchical"}, "-squeeze-hierarchical needs -squeeze-budget"},
		{[]string{"-squeeze-remainder"}, "-squeeze-remainder needs -squeeze-budget"},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"-model", "/nonexistent"}, tc.args...), &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// TestSqueezeBudget runs the bundled model's fixed context dense and squeezed (-squeeze-budget) on the
// CPU: one row each, the squeezed one keeping a fraction of the keys below 1 and reporting its clustering.
func TestSqueezeBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("prefills 1,024 tokens twice")
	}
	var out, errb bytes.Buffer
	code := run([]string{"-backend", "go", "-model", modelDir, "-lens", "1024", "-squeeze-budget", "0.2",
		"-squeeze-input", "16", "-decode", "2", "-reps", "1", "-squeeze-hierarchical", "-squeeze-remainder"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rows [][]string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "| tinycode-llama-16m |") {
			rows = append(rows, strings.Split(strings.Trim(line, "| "), " | "))
		}
	}
	if len(rows) != 4 || rows[0][4] != "dense" || !strings.HasPrefix(rows[1][4], "squeezed, budget 0.2 (") ||
		!strings.HasPrefix(rows[2][4], "squeezed, budget 0.2, hierarchical (") || !strings.HasPrefix(rows[3][4], "squeezed, budget 0.2, remainder (") {
		t.Fatalf("want a dense, a squeezed, a hierarchical and a remainder row:\n%s", out.String())
	}
	for _, r := range rows {
		for _, col := range []int{5, 6} { // user-input step ms, decode ms/token
			if v, err := strconv.ParseFloat(r[col], 64); err != nil || !(v > 0) {
				t.Errorf("column %d = %q, want a positive time", col, r[col])
			}
		}
	}
	for _, r := range rows[1:] {
		kept, err := strconv.ParseFloat(r[7], 64)
		if err != nil || !(kept > 0.2 && kept < 1) {
			t.Errorf("%s: kept fraction %q: want the budget plus window and centroids, below 1", r[4], r[7])
		}
		if clus, err := strconv.ParseFloat(r[8], 64); err != nil || !(clus > 0) {
			t.Errorf("%s: clustering time %q", r[4], r[8])
		}
	}
}
