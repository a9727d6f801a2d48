package evals

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Item is one row of a LongBench JSON-lines file.
type Item struct {
	ID         string   // _id
	Context    string   // the long document
	Input      string   // the question; may be empty
	Answers    []string // references
	AllClasses []string // classification tasks; nil otherwise
	Length     int      // LongBench's length field (words or tokens, as the data set counts them)
	// Fields holds every field of the row by name, as Python's str() would print it, for the template.
	Fields map[string]string
	// Where the row is: its file and 1-based line.
	File string
	Line int
}

// Task is a task's specification and its rows.
type Task struct {
	Spec  *Spec
	Path  string // the JSON-lines file the rows came from
	Items []Item
}

// TaskFile finds a task's data in dir. Three layouts are accepted, tried in this order:
//
//	DIR/TASK.jsonl          (LongBench's data/ folder)
//	DIR/TASK/dev.jsonl      (this project's shared/evals/tinycode_lcc/)
//	DIR/TASK/TASK.jsonl
func TaskFile(dir, task string) (string, error) {
	candidates := []string{
		filepath.Join(dir, task+".jsonl"),
		filepath.Join(dir, task, "dev.jsonl"),
		filepath.Join(dir, task, task+".jsonl"),
	}
	for _, p := range candidates {
		st, err := os.Stat(p)
		if err == nil && st.Mode().IsRegular() {
			return p, nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("task %s: %w", task, err)
		}
	}
	return "", fmt.Errorf("task %s: no data: none of %s exists", task, strings.Join(candidates, ", "))
}

// LoadTask finds task's file in dir, reads its rows (the first limit when limit > 0), and checks that the
// template can be filled from each of them.
func LoadTask(dir, task string, specs *Specs, limit int) (*Task, error) {
	spec, err := specs.Lookup(task)
	if err != nil {
		return nil, err
	}
	path, err := TaskFile(dir, task)
	if err != nil {
		return nil, err
	}
	items, err := ReadItems(path, limit)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if _, _, err := spec.Split(it); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", it.File, it.Line, err)
		}
	}
	return &Task{Spec: spec, Path: path, Items: items}, nil
}

// ReadItems reads a LongBench JSON-lines file: one JSON object per line (blank lines are skipped), with a
// string _id (unique in the file), a string context, a list of string answers, and optionally a string input,
// all_classes (null or a list of strings) and an integer length. With limit > 0 only the first limit rows are
// read. Errors name the file and line.
func ReadItems(path string, limit int) ([]Item, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var items []Item
	seen := make(map[string]int)
	for line := 1; limit <= 0 || len(items) < limit; line++ {
		b, err := r.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if len(bytes.TrimSpace(b)) > 0 {
			it, perr := parseItem(b)
			if perr != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, line, perr)
			}
			if prev, ok := seen[it.ID]; ok {
				return nil, fmt.Errorf("%s:%d: duplicate _id %q (first on line %d)", path, line, it.ID, prev)
			}
			seen[it.ID] = line
			it.File, it.Line = path, line
			items = append(items, it)
		}
		if err == io.EOF {
			break
		}
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%s: no rows", path)
	}
	return items, nil
}

// parseItem decodes and checks one row.
func parseItem(b []byte) (Item, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Item{}, fmt.Errorf("malformed row: %v", err)
	}
	var it Item
	str := func(name string, required bool) (string, error) {
		v, ok := raw[name]
		if !ok {
			if required {
				return "", fmt.Errorf("the row has no %q field", name)
			}
			return "", nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("field %q is not a string", name)
		}
		return s, nil
	}
	var err error
	if it.ID, err = str("_id", true); err != nil {
		return it, err
	}
	if it.Context, err = str("context", true); err != nil {
		return it, err
	}
	if it.Input, err = str("input", false); err != nil {
		return it, err
	}
	if err := json.Unmarshal(raw["answers"], &it.Answers); err != nil || it.Answers == nil {
		return it, errors.New(`field "answers" must be a list of strings`)
	}
	if v, ok := raw["all_classes"]; ok {
		if err := json.Unmarshal(v, &it.AllClasses); err != nil {
			return it, errors.New(`field "all_classes" must be null or a list of strings`)
		}
	}
	if v, ok := raw["length"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &it.Length); err != nil {
			return it, errors.New(`field "length" must be an integer`)
		}
	}
	it.Fields = make(map[string]string, len(raw))
	for name, v := range raw {
		if s, ok := pyStr(v); ok {
			it.Fields[name] = s
		}
	}
	return it, nil
}

// pyStr is Python's str() of a decoded JSON scalar, as str.format prints it; false for lists and objects.
func pyStr(v json.RawMessage) (string, bool) {
	var x any
	d := json.NewDecoder(bytes.NewReader(v))
	d.UseNumber()
	if d.Decode(&x) != nil {
		return "", false
	}
	switch x := x.(type) {
	case string:
		return x, true
	case json.Number:
		if _, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return string(x), true
		}
		f, err := x.Float64()
		if err != nil {
			return "", false
		}
		return strconv.FormatFloat(f, 'g', -1, 64), true
	case bool:
		if x {
			return "True", true
		}
		return "False", true
	case nil:
		return "None", true
	}
	return "", false
}
