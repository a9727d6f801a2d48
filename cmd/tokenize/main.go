// Command tokenize encodes text to token ids, or decodes ids to text, with a
// Hugging Face tokenizer.json.
//
// Usage:
//
//	tokenize [-tokenizer PATH] [-decode] [-jsonl] [-add-special=false] [-skip-special]
//
// Without -jsonl, all of stdin is one input: the text to encode (printed as a
// JSON array of ids and a newline), or with -decode a JSON array of ids
// (printed as the decoded text, exactly, with no newline added).
//
// With -jsonl, every input line is one JSON string (or with -decode one JSON
// array of ids) and every output line is its result: a JSON array of ids, or
// a JSON string of decoded text. Thousands of texts can go through one
// process this way.
//
// Encoding adds special tokens as the tokenizer's post-processor says (e.g.
// BOS) unless -add-special=false; decoding keeps special tokens unless
// -skip-special. -tokenizer takes a tokenizer.json (optionally .gz) or a
// model directory; the default is the bundled models/tinycode-llama-16m,
// looked up from the current directory and the executable's directory and
// their parents. Bad input (malformed JSON, unknown ids) is reported on
// stderr with its line number, and the exit status is 1.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/squeezeai/sqllm/tokenizer"
)

// defaultModel is the bundled model, relative to the repository root.
const defaultModel = "models/tinycode-llama-16m"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// options are the command-line settings.
type options struct {
	decode, jsonl, addSpecial, skipSpecial bool
}

// run is the whole command; it returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tokenize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("tokenizer", "", "tokenizer.json file or model directory (default: bundled "+defaultModel+")")
	var o options
	fs.BoolVar(&o.decode, "decode", false, "decode a JSON array of ids to text instead of encoding")
	fs.BoolVar(&o.jsonl, "jsonl", false, "one JSON string (or, with -decode, one JSON array) per input line")
	fs.BoolVar(&o.addSpecial, "add-special", true, "add the post-processor's special tokens (e.g. BOS) when encoding")
	fs.BoolVar(&o.skipSpecial, "skip-special", false, "leave special tokens out when decoding")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tokenize: unexpected argument %q (input is read from stdin)\n", fs.Arg(0))
		return 2
	}
	if *path == "" {
		p, err := findDefaultModel()
		if err != nil {
			fmt.Fprintf(stderr, "tokenize: %v\n", err)
			return 1
		}
		*path = p
	}
	tk, err := tokenizer.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "tokenize: %v\n", err)
		return 1
	}
	w := bufio.NewWriterSize(stdout, 1<<16)
	if o.jsonl {
		err = runLines(tk, o, stdin, w)
	} else {
		err = runWhole(tk, o, stdin, w)
	}
	if ferr := w.Flush(); err == nil && ferr != nil {
		err = fmt.Errorf("writing output: %v", ferr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tokenize: %v\n", err)
		return 1
	}
	return 0
}

// findDefaultModel looks for the bundled model from the working directory
// and the executable's directory upwards.
func findDefaultModel() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for {
			p := filepath.Join(dir, defaultModel)
			if _, err := os.Stat(filepath.Join(p, "tokenizer.json")); err == nil {
				return p, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("cannot find the bundled " + defaultModel + "; pass -tokenizer")
}

// runWhole treats all of stdin as one input.
func runWhole(tk *tokenizer.Tokenizer, o options, stdin io.Reader, w *bufio.Writer) error {
	data, err := io.ReadAll(stdin)
	if err != nil {
		return fmt.Errorf("reading stdin: %v", err)
	}
	if !o.decode {
		w.Write(appendIDs(nil, tk.Encode(string(data), o.addSpecial)))
		return w.WriteByte('\n')
	}
	ids, err := parseIDs(tk, data)
	if err != nil {
		return fmt.Errorf("stdin: %v", err)
	}
	_, err = w.WriteString(tk.Decode(ids, o.skipSpecial))
	return err
}

// runLines processes one JSON value per line.
func runLines(tk *tokenizer.Tokenizer, o options, stdin io.Reader, w *bufio.Writer) error {
	r := bufio.NewReaderSize(stdin, 1<<16)
	var out []byte
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return nil
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("reading stdin: %v", err)
		}
		out = out[:0]
		if o.decode {
			ids, perr := parseIDs(tk, line)
			if perr != nil {
				return fmt.Errorf("line %d: %v", lineNo, perr)
			}
			out = appendJSONString(out, tk.Decode(ids, o.skipSpecial))
		} else {
			var text string
			if jerr := json.Unmarshal(line, &text); jerr != nil {
				return fmt.Errorf("line %d: want a JSON string: %v", lineNo, jerr)
			}
			out = appendIDs(out, tk.Encode(text, o.addSpecial))
		}
		out = append(out, '\n')
		if _, werr := w.Write(out); werr != nil {
			return fmt.Errorf("writing output: %v", werr)
		}
		if err == io.EOF {
			return nil
		}
	}
}

// parseIDs reads a JSON array of token ids and checks that all exist.
func parseIDs(tk *tokenizer.Tokenizer, data []byte) ([]int, error) {
	var ids []int
	if err := json.Unmarshal(data, &ids); err != nil {
		return nil, fmt.Errorf("want a JSON array of integer token ids: %v", err)
	}
	if ids == nil && !bytes.Equal(bytes.TrimSpace(data), []byte("[]")) {
		return nil, errors.New("want a JSON array of integer token ids, got null")
	}
	for i, id := range ids {
		if _, ok := tk.IDToToken(id); !ok {
			return nil, fmt.Errorf("id %d (element %d) is out of range: the vocabulary has ids 0..%d",
				id, i, tk.VocabSize()-1)
		}
	}
	return ids, nil
}

func appendIDs(b []byte, ids []int) []byte {
	b = append(b, '[')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(id), 10)
	}
	return append(b, ']')
}

// appendJSONString appends s as a JSON string without HTML escaping.
func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(s) // cannot fail for a string
	return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
}
