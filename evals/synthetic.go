package evals

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// Synthetic long-context retrieval tasks, written as Python so that a small code model can answer them by
// completing a line. Each item is a LongBench-format row whose context is a long generated Python file with
// one needle in it, and whose input is the line to complete:
//
//   - passkey_N: a file of filler functions, classes and constants (numbers of at most 4 digits) with
//     "PASSKEY = 48213" at a given depth; input "assert PASSKEY == ", answer "48213".
//   - kv_retrieval_N: a dict literal TABLE of N tokens' worth of "k_3fa9c1": 48213 entries (unique 6-hex-digit
//     keys, 5-digit values); input `assert TABLE["k_3fa9c1"] == `, answer that key's value.
//
// N is the target context length in tokens (as counted by SyntheticOptions.Count); items of one length put
// their needle at evenly spaced depths (0 = start of the file, 1 = end). Template "{context}{input}", greedy
// decoding of at most SyntheticMaxNew tokens stopped at "\n", metric retrieval_exact (the first number of
// the first line must equal the answer). Rows carry two extra fields: depth and needle_line (1-based line of
// the needle in context).

// SyntheticMaxNew is the synthetic tasks' max new tokens.
const SyntheticMaxNew = 16

// SyntheticOptions control generation.
type SyntheticOptions struct {
	Seed      int64
	Lengths   []int // target context lengths in tokens
	PerLength int   // items per length and task (default 5)
	// Count is the number of tokens of a text; nil counts one token per 4 bytes.
	Count func(string) int
}

func (o SyntheticOptions) count(s string) int {
	if o.Count == nil {
		return (len(s) + 3) / 4
	}
	return o.Count(s)
}

// SyntheticItem is a generated row; it marshals to the LongBench JSON-lines form.
type SyntheticItem struct {
	ID         string   `json:"_id"`
	Dataset    string   `json:"dataset"`
	Input      string   `json:"input"`
	Context    string   `json:"context"`
	Answers    []string `json:"answers"`
	Length     int      `json:"length"`
	AllClasses []string `json:"all_classes"`
	Language   string   `json:"language"`
	Depth      float64  `json:"depth"`
	NeedleLine int      `json:"needle_line"`
}

// Synthetic generates every task: task name (passkey_N, kv_retrieval_N) → its items, in a fixed order of
// names (passkey first, lengths as given).
func Synthetic(o SyntheticOptions) (names []string, tasks map[string][]SyntheticItem, err error) {
	if o.PerLength <= 0 {
		o.PerLength = 5
	}
	tasks = map[string][]SyntheticItem{}
	for _, family := range []string{"passkey", "kv_retrieval"} {
		for _, n := range o.Lengths {
			if n < 100 {
				return nil, nil, fmt.Errorf("synthetic length %d: must be at least 100 tokens", n)
			}
			name := fmt.Sprintf("%s_%d", family, n)
			if _, dup := tasks[name]; dup {
				return nil, nil, fmt.Errorf("synthetic length %d listed twice", n)
			}
			names = append(names, name)
			for k := range o.PerLength {
				depth := 0.5
				if o.PerLength > 1 {
					depth = float64(k) / float64(o.PerLength-1)
				}
				var it SyntheticItem
				if family == "passkey" {
					it = passkeyItem(o, n, k, depth)
				} else {
					it = kvItem(o, n, k, depth)
				}
				it.ID = fmt.Sprintf("%s-%03d", name, k)
				it.Dataset, it.Language = name, "python"
				it.Length = o.count(it.Context)
				tasks[name] = append(tasks[name], it)
			}
		}
	}
	return names, tasks, nil
}

// WriteSynthetic generates the tasks into dir as NAME.jsonl files and returns their paths.
func WriteSynthetic(dir string, o SyntheticOptions) ([]string, error) {
	names, tasks, err := Synthetic(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	for _, name := range names {
		path := filepath.Join(dir, name+".jsonl")
		err := writeFile(path, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetEscapeHTML(false)
			for _, it := range tasks[name] {
				if err := enc.Encode(it); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
}

// itemRand is the item's own random stream: items do not depend on each other or on the list of lengths.
func itemRand(seed int64, family uint64, length, k int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), family<<56|uint64(length)<<16|uint64(k)))
}

// placeNeedle inserts needle among blocks at depth (0..1) and returns the text and the needle's 1-based line.
func placeNeedle(header string, blocks []string, needle, footer string, depth float64) (string, int) {
	at := int(math.Round(depth * float64(len(blocks))))
	var b strings.Builder
	b.WriteString(header)
	line := 0
	for i := 0; i <= len(blocks); i++ {
		if i == at {
			line = strings.Count(b.String(), "\n") + 1
			b.WriteString(needle)
		}
		if i < len(blocks) {
			b.WriteString(blocks[i])
		}
	}
	b.WriteString(footer)
	return b.String(), line
}

func passkeyItem(o SyntheticOptions, length, k int, depth float64) SyntheticItem {
	r := itemRand(o.Seed, 1, length, k)
	key := 10000 + r.IntN(90000)
	header := "\"\"\"Assorted helpers (generated filler).\"\"\"\n\nimport math\n\n\n"
	needle := fmt.Sprintf("PASSKEY = %d\n\n\n", key)
	budget := length - o.count(header) - o.count(needle)
	var blocks []string
	for budget > 0 {
		b := fillerBlock(r, len(blocks))
		blocks = append(blocks, b)
		budget -= o.count(b)
	}
	ctx, line := placeNeedle(header, blocks, needle, "", depth)
	return SyntheticItem{Input: "assert PASSKEY == ", Context: ctx, Answers: []string{fmt.Sprint(key)},
		Depth: depth, NeedleLine: line}
}

func kvItem(o SyntheticOptions, length, k int, depth float64) SyntheticItem {
	r := itemRand(o.Seed, 2, length, k)
	header := "\"\"\"Lookup table (generated).\"\"\"\n\nTABLE = {\n"
	footer := "}\n\n\n"
	seen := map[string]bool{}
	entry := func() (string, string, int) {
		for {
			key := fmt.Sprintf("k_%06x", r.IntN(1<<24))
			if !seen[key] {
				seen[key] = true
				v := 10000 + r.IntN(90000)
				return fmt.Sprintf("    %q: %d,\n", key, v), key, v
			}
		}
	}
	needle, key, value := entry()
	budget := length - o.count(header) - o.count(footer) - o.count(needle)
	var blocks []string
	for budget > 0 {
		e, _, _ := entry()
		blocks = append(blocks, e)
		budget -= o.count(e)
	}
	ctx, line := placeNeedle(header, blocks, needle, footer, depth)
	return SyntheticItem{Input: fmt.Sprintf("assert TABLE[%q] == ", key), Context: ctx,
		Answers: []string{fmt.Sprint(value)}, Depth: depth, NeedleLine: line}
}

// Word lists for the filler code; none contains "PASSKEY" or "TABLE".
var (
	verbs = []string{"compute", "scale", "merge", "load", "parse", "render", "update", "filter", "collect",
		"encode", "decode", "normalize", "validate", "resolve", "build", "flatten", "split", "count"}
	nouns = []string{"buffer", "record", "matrix", "vector", "token", "graph", "node", "edge", "window",
		"sample", "batch", "frame", "score", "weight", "offset", "cursor", "stream", "packet"}
	params = []string{"factor", "limit", "step", "width", "depth", "margin", "rate", "count"}
)

// fillerBlock is one random top-level Python definition; its numbers have at most 4 digits, so none can be
// mistaken for a 5-digit passkey.
func fillerBlock(r *rand.Rand, i int) string {
	verb, noun, param := verbs[r.IntN(len(verbs))], nouns[r.IntN(len(nouns))], params[r.IntN(len(params))]
	switch r.IntN(3) {
	case 0:
		return fmt.Sprintf("def %s_%s_%d(values, %s=%d):\n    \"\"\"%s the %s of values.\"\"\"\n    total = %d\n"+
			"    for value in values:\n        total += value * %s\n    return total\n\n\n",
			verb, noun, i, param, 1+r.IntN(99), strings.ToUpper(verb[:1])+verb[1:], noun, r.IntN(10), param)
	case 1:
		name := strings.ToUpper(noun[:1]) + noun[1:]
		return fmt.Sprintf("class %s%d:\n    def __init__(self, size=%d, %s=%d):\n        self.size = size\n"+
			"        self.%s = %s\n\n    def %s(self):\n        return self.size * self.%s\n\n\n",
			name, i, 1+r.IntN(9999), param, 1+r.IntN(999), param, param, verb, param)
	default:
		var b strings.Builder
		for range 2 + r.IntN(4) {
			fmt.Fprintf(&b, "%s_%s_%d = %d\n", strings.ToUpper(noun), strings.ToUpper(params[r.IntN(len(params))]), i, r.IntN(10000))
		}
		b.WriteString("\n\n")
		return b.String()
	}
}
