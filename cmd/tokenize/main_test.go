package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

type goldenCase struct {
	Text    string `json:"text"`
	IDs     []int  `json:"ids"`
	Decoded string `json:"decoded"`
}

func loadGolden(t *testing.T, name string) []goldenCase {
	t.Helper()
	f, err := os.Open("../../tokenizer/testdata/golden-" + name + ".jsonl.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var cases []goldenCase
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var c goldenCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, c)
	}
	return cases
}

// runCmd runs the command and returns its exit status, stdout and stderr.
func runCmd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	if strings.Contains(errOut.String(), "panic") || strings.Contains(errOut.String(), "goroutine") {
		t.Errorf("stderr shows a panic: %q", errOut.String())
	}
	return code, out.String(), errOut.String()
}

const llama2 = "../../tokenizer/testdata/llama2.tokenizer.json.gz"

func TestEncodeWhole(t *testing.T) {
	// The default tokenizer is the bundled tinycode model, found from the
	// package directory upwards.
	for _, c := range loadGolden(t, "tinycode")[:8] {
		code, out, errOut := runCmd(t, c.Text)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !strings.HasSuffix(out, "\n") {
			t.Fatalf("output %q does not end in a newline", out)
		}
		var ids []int
		if err := json.Unmarshal([]byte(out), &ids); err != nil {
			t.Fatalf("output %q: %v", out, err)
		}
		if !slices.Equal(ids, c.IDs) {
			t.Errorf("%q: got %v, want %v", c.Text, ids, c.IDs)
		}
	}
}

func TestDecodeWhole(t *testing.T) {
	for _, c := range loadGolden(t, "llama2")[:8] {
		in, _ := json.Marshal(c.IDs)
		code, out, errOut := runCmd(t, string(in), "-decode", "-tokenizer", llama2)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if out != c.Decoded {
			t.Errorf("got %q, want %q", out, c.Decoded)
		}
	}
}

func TestJSONL(t *testing.T) {
	for _, name := range []string{"tinycode", "llama2"} {
		t.Run(name, func(t *testing.T) {
			var args []string
			if name == "llama2" {
				args = []string{"-tokenizer", llama2}
			}
			cases := loadGolden(t, name)
			var in, idsIn strings.Builder
			for _, c := range cases {
				b, _ := json.Marshal(c.Text)
				in.Write(b)
				in.WriteByte('\n')
				b, _ = json.Marshal(c.IDs)
				idsIn.Write(b)
				idsIn.WriteByte('\n')
			}
			code, out, errOut := runCmd(t, in.String(), append(args, "-jsonl")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != len(cases) {
				t.Fatalf("%d output lines for %d inputs", len(lines), len(cases))
			}
			for i, c := range cases {
				var ids []int
				if err := json.Unmarshal([]byte(lines[i]), &ids); err != nil || !slices.Equal(ids, c.IDs) {
					t.Errorf("line %d: got %s, want %v (%v)", i+1, lines[i], c.IDs, err)
				}
			}

			code, out, errOut = runCmd(t, idsIn.String(), append(args, "-jsonl", "-decode")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			lines = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != len(cases) {
				t.Fatalf("%d output lines for %d inputs", len(lines), len(cases))
			}
			for i, c := range cases {
				var s string
				if err := json.Unmarshal([]byte(lines[i]), &s); err != nil || s != c.Decoded {
					t.Errorf("line %d: got %s, want %q (%v)", i+1, lines[i], c.Decoded, err)
				}
			}
		})
	}
}

func TestFlags(t *testing.T) {
	code, out, _ := runCmd(t, "hi", "-add-special=false")
	if code != 0 || strings.HasPrefix(out, "[8184") {
		t.Errorf("-add-special=false: exit %d, %q", code, out)
	}
	code, out, _ = runCmd(t, "[8184, 71]", "-decode", "-skip-special")
	if code != 0 || strings.Contains(out, "<|") {
		t.Errorf("-skip-special: exit %d, %q", code, out)
	}
	// A final line without a newline is still processed.
	code, out, _ = runCmd(t, "\"a\"\n\"b\"", "-jsonl")
	if code != 0 || strings.Count(out, "\n") != 2 {
		t.Errorf("last line without newline: exit %d, %q", code, out)
	}
	code, out, _ = runCmd(t, "", "-jsonl")
	if code != 0 || out != "" {
		t.Errorf("empty -jsonl input: exit %d, %q", code, out)
	}
	code, out, _ = runCmd(t, "")
	if code != 0 || out != "[8184]\n" {
		t.Errorf("empty input: exit %d, %q", code, out)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name, stdin string
		args        []string
		want        string
		code        int
	}{
		{"malformed line", "\"ok\"\n\"broken\n\"ok\"\n", []string{"-jsonl"}, "line 2", 1},
		{"not a string", "\"ok\"\n[1,2]\n", []string{"-jsonl"}, "line 2", 1},
		{"empty line", "\"ok\"\n\n", []string{"-jsonl"}, "line 2", 1},
		{"bad id line", "[1,2]\n[3, 99999]\n", []string{"-jsonl", "-decode"}, "line 2: id 99999", 1},
		{"negative id", "[-1]\n", []string{"-jsonl", "-decode"}, "line 1: id -1", 1},
		{"float id", "[1.5]\n", []string{"-jsonl", "-decode"}, "line 1", 1},
		{"malformed ids", "[1, 2", []string{"-decode"}, "JSON array", 1},
		{"null ids", "null", []string{"-decode"}, "null", 1},
		{"out of range", "[8192]", []string{"-decode"}, "out of range", 1},
		{"missing tokenizer", "x", []string{"-tokenizer", "/nonexistent/tok.json"}, "/nonexistent/tok.json", 1},
		{"bad flag", "x", []string{"-frobnicate"}, "frobnicate", 2},
		{"extra argument", "x", []string{"file.txt"}, "file.txt", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCmd(t, tc.stdin, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q does not mention %q", errOut, tc.want)
			}
			if tc.code == 1 && strings.Count(errOut, "\n") != 1 {
				t.Errorf("stderr is not one line: %q", errOut)
			}
		})
	}
}

func TestBadTokenizerFile(t *testing.T) {
	path := t.TempDir() + "/tokenizer.json"
	if err := os.WriteFile(path, []byte(`{"model": {"type": "WordPiece", "vocab": {}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCmd(t, "x", "-tokenizer", path)
	if code != 1 || !strings.Contains(errOut, "WordPiece") || !strings.Contains(errOut, path) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
