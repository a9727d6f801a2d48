package evals

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// words counts whitespace-separated words: a stand-in tokenizer for the length targets.
func words(s string) int { return len(strings.Fields(s)) }

func TestSyntheticDeterministic(t *testing.T) {
	o := SyntheticOptions{Seed: 7, Lengths: []int{300, 1200}, PerLength: 3, Count: words}
	names, a, err := Synthetic(o)
	if err != nil {
		t.Fatal(err)
	}
	wantNames := []string{"passkey_300", "passkey_1200", "kv_retrieval_300", "kv_retrieval_1200"}
	if !reflect.DeepEqual(names, wantNames) {
		t.Errorf("names %q", names)
	}
	_, b, _ := Synthetic(o)
	if !reflect.DeepEqual(a, b) {
		t.Error("the same seed gave different items")
	}
	// an item depends only on (seed, task, length, index), not on the other lengths asked for
	_, c, _ := Synthetic(SyntheticOptions{Seed: 7, Lengths: []int{1200}, PerLength: 3, Count: words})
	if !reflect.DeepEqual(a["passkey_1200"], c["passkey_1200"]) {
		t.Error("items changed with the list of lengths")
	}
	o.Seed = 8
	_, d, _ := Synthetic(o)
	for _, name := range names {
		if reflect.DeepEqual(a[name], d[name]) {
			t.Errorf("%s: seeds 7 and 8 gave the same items", name)
		}
	}
}

func TestSyntheticNeedle(t *testing.T) {
	o := SyntheticOptions{Seed: 1, Lengths: []int{500, 2000}, PerLength: 5, Count: words}
	names, tasks, err := Synthetic(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		target := 500
		if strings.HasSuffix(name, "_2000") {
			target = 2000
		}
		for k, it := range tasks[name] {
			answer := it.Answers[0]
			if want := float64(k) / 4; it.Depth != want {
				t.Errorf("%s: depth %v, want %v", it.ID, it.Depth, want)
			}
			lines := strings.Split(it.Context, "\n")
			var needle string
			if strings.HasPrefix(name, "passkey") {
				needle = "PASSKEY = " + answer
				if it.Input != "assert PASSKEY == " || strings.Count(it.Context, "PASSKEY") != 1 {
					t.Errorf("%s: input %q, %d PASSKEYs", it.ID, it.Input, strings.Count(it.Context, "PASSKEY"))
				}
				// distractor numbers have at most 4 digits: the answer's 5 digits appear once
				if n := len(regexp.MustCompile(`\b`+answer+`\b`).FindAllString(it.Context, -1)); n != 1 {
					t.Errorf("%s: the passkey appears %d times", it.ID, n)
				}
			} else {
				key := regexp.MustCompile(`^assert TABLE\["(k_[0-9a-f]{6})"\] == $`).FindStringSubmatch(it.Input)
				if key == nil {
					t.Fatalf("%s: input %q", it.ID, it.Input)
				}
				needle = fmt.Sprintf("    %q: %s,", key[1], answer)
				if strings.Count(it.Context, key[1]) != 1 {
					t.Errorf("%s: key %s appears %d times", it.ID, key[1], strings.Count(it.Context, key[1]))
				}
			}
			if it.NeedleLine < 1 || lines[it.NeedleLine-1] != needle {
				t.Fatalf("%s: line %d is not the needle %q", it.ID, it.NeedleLine, needle)
			}
			// the needle's place: the share of the filler lines before it is the depth (within a block)
			first, last := fillerLines(name, lines)
			pos := float64(it.NeedleLine-first) / float64(last-first)
			if pos < it.Depth-0.05 || pos > it.Depth+0.05 {
				t.Errorf("%s: needle at %.3f of the filler, want depth %.2f", it.ID, pos, it.Depth)
			}
			// the context is at least the target length and overshoots by less than one block
			if it.Length != words(it.Context) || it.Length < target || it.Length > target+40 {
				t.Errorf("%s: length %d for target %d", it.ID, it.Length, target)
			}
		}
	}
}

// fillerLines is the 1-based range of lines where the needle can go: after the header, before the footer.
func fillerLines(name string, lines []string) (first, last int) {
	if strings.HasPrefix(name, "passkey") {
		return 6, len(lines) // header: docstring, blank, import, blank, blank
	}
	return 4, len(lines) - 3 // header: docstring, blank, "TABLE = {"; footer "}", blanks
}

// TestSyntheticEndToEnd writes the tasks, loads them as LongBench tasks, and runs an oracle LM that reads
// the needle's value out of the fixed context: every item must score 100.
func TestSyntheticEndToEnd(t *testing.T) {
	dir := t.TempDir()
	paths, err := WriteSynthetic(dir, SyntheticOptions{Seed: 3, Lengths: []int{400}, PerLength: 2, Count: words})
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 2 || paths[0] != filepath.Join(dir, "passkey_400.jsonl") {
		t.Fatalf("paths %q", paths)
	}
	specs, _ := NewSpecs("", "")
	var tasks []*Task
	for _, name := range []string{"passkey_400", "kv_retrieval_400"} {
		task, err := LoadTask(dir, name, specs, 0)
		if err != nil {
			t.Fatal(err)
		}
		tasks = append(tasks, task)
	}
	configs, _ := ParseConfigs("dense")
	out := t.TempDir()
	p, err := NewPlan(out, configs, tasks, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Execute(context.Background(), map[string]LM{"dense": oracle{newFakeLM(nil, 1)}}, nil); err != nil {
		t.Fatal(err)
	}
	results, _ := p.Results()
	for _, r := range results {
		if r.Score != 100 || r.N != 2 && r.Task != AverageTask {
			t.Errorf("%+v", r)
		}
	}
	if _, err := os.Stat(PredsPath(out, "dense", "kv_retrieval_400")); err != nil {
		t.Error(err)
	}
}

// oracle answers a synthetic item by looking the needle up in the fixed context, then runs on past the
// line, as a model would (the stop string must cut it).
type oracle struct{ *fakeLM }

func (o oracle) Generate(ctx context.Context, fixed, input []int, maxNew int, stop []string) (string, float64, error) {
	doc, q := o.Detokenize(fixed), o.Detokenize(input)
	var m []string
	if strings.HasPrefix(q, "assert PASSKEY") {
		m = regexp.MustCompile(`PASSKEY = ([0-9]+)`).FindStringSubmatch(doc)
	} else {
		key := regexp.MustCompile(`"(k_[0-9a-f]+)"`).FindStringSubmatch(q)
		m = regexp.MustCompile(`"` + key[1] + `": ([0-9]+),`).FindStringSubmatch(doc)
	}
	text := m[1] + "\nassert True\n"
	if !reflect.DeepEqual(stop, []string{"\n"}) || maxNew != SyntheticMaxNew {
		return "", 0, fmt.Errorf("stop %q, maxNew %d", stop, maxNew)
	}
	return text[:strings.Index(text, "\n")], 1, nil
}
