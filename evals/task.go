package evals

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
)

// Spec is how one task is prompted, decoded and scored.
type Spec struct {
	Name string
	// Template is a Python str.format template over the row's fields ({context}, {input}); LongBench's
	// dataset2prompt.json holds one per task.
	Template string
	// MaxNew is max_new_tokens (LongBench's dataset2maxlen.json).
	MaxNew int
	// Metric names the metric (dataset2metric in LongBench's eval.py).
	Metric string
	// FirstLine: only the first line of the prediction is scored (trec, triviaqa, samsum, lsht).
	FirstLine bool
	// Stop strings end generation (samsum: "\n", as pred.py adds the "\n" token to eos_token_id).
	Stop []string
	// TemplateFrom and MaxNewFrom say where the template and max_new_tokens came from (a file or "built-in").
	TemplateFrom, MaxNewFrom string

	parts []tmplPart
	split int // index in parts of the {input} field; len(parts) when there is none
}

// builtinSpec holds the tasks that need no config files.
type builtinSpec struct {
	template string
	maxNew   int
}

// builtins: lcc and repobench-p as in LongBench's config files; tinycode_lcc, this project's offline lcc
// for a base code model (prompt = the context alone, BOS added by the tokenizer); and the synthetic tasks
// (synthetic.go), whose row holds the file as context and the line to complete as input.
var builtins = map[string]builtinSpec{
	"lcc":          {"Please complete the code given below. \n{context}Next line of code:\n", 64},
	"repobench-p":  {"Please complete the code given below. \n{context}{input}Next line of code:\n", 64},
	"tinycode_lcc": {"{context}", 64},
	"passkey":      {"{context}{input}", SyntheticMaxNew},
	"kv_retrieval": {"{context}{input}", SyntheticMaxNew},
}

// syntheticName matches the synthetic tasks' file names: passkey_4000, kv_retrieval_2000 (length suffix).
var syntheticName = regexp.MustCompile(`^(passkey|kv_retrieval)(_[0-9]+)?$`)

// dataset2metric is LongBench eval.py's table, plus this project's tasks.
var dataset2metric = map[string]string{
	"narrativeqa":          MetricQAF1,
	"qasper":               MetricQAF1,
	"multifieldqa_en":      MetricQAF1,
	"multifieldqa_zh":      MetricQAF1ZH,
	"hotpotqa":             MetricQAF1,
	"2wikimqa":             MetricQAF1,
	"musique":              MetricQAF1,
	"dureader":             MetricRougeZH,
	"gov_report":           MetricRouge,
	"qmsum":                MetricRouge,
	"multi_news":           MetricRouge,
	"vcsum":                MetricRougeZH,
	"trec":                 MetricClassification,
	"triviaqa":             MetricQAF1,
	"samsum":               MetricRouge,
	"lsht":                 MetricClassification,
	"passage_retrieval_en": MetricRetrieval,
	"passage_count":        MetricCount,
	"passage_retrieval_zh": MetricRetrievalZH,
	"lcc":                  MetricCodeSim,
	"repobench-p":          MetricCodeSim,
	"tinycode_lcc":         MetricCodeSim,
	"passkey":              MetricRetrievalExact,
	"kv_retrieval":         MetricRetrievalExact,
}

// firstLineTasks are scored on the prediction's first line only (eval.py's scorer).
var firstLineTasks = []string{"trec", "triviaqa", "samsum", "lsht"}

// Specs resolves task names to Specs: templates and max new tokens from LongBench's dataset2prompt.json and
// dataset2maxlen.json when given (they override the built-ins), else the built-ins.
type Specs struct {
	prompts     map[string]string
	maxLen      map[string]int
	promptsFile string
	maxLenFile  string
}

// NewSpecs reads the two LongBench config files; either path may be empty.
func NewSpecs(promptsFile, maxLenFile string) (*Specs, error) {
	s := &Specs{promptsFile: promptsFile, maxLenFile: maxLenFile}
	if promptsFile != "" {
		if err := readJSONFile(promptsFile, &s.prompts); err != nil {
			return nil, err
		}
	}
	if maxLenFile != "" {
		if err := readJSONFile(maxLenFile, &s.maxLen); err != nil {
			return nil, err
		}
		for task, n := range s.maxLen {
			if n <= 0 {
				return nil, fmt.Errorf("%s: task %s: max new tokens %d must be positive", maxLenFile, task, n)
			}
		}
	}
	return s, nil
}

// readJSONFile decodes a JSON file; a syntax or type error names the file and line.
func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		var off int64 = -1
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			off = se.Offset
		case errors.As(err, &te):
			off = te.Offset
		}
		if off >= 0 {
			return fmt.Errorf("%s:%d: %v", path, 1+strings.Count(string(b[:min(off, int64(len(b)))]), "\n"), err)
		}
		return fmt.Errorf("%s: %v", path, err)
	}
	return nil
}

// builtinFor is the built-in entry for task (synthetic names map to their family), if any.
func builtinFor(task string) (builtinSpec, string, bool) {
	family := task
	if m := syntheticName.FindStringSubmatch(task); m != nil {
		family = m[1]
	}
	b, ok := builtins[family]
	return b, family, ok
}

// Lookup resolves a task's Spec. An unknown task (neither built in nor in the -prompts file), a template
// without max new tokens, or a task without a known metric is an error naming what is missing and where it
// was looked for.
func (s *Specs) Lookup(task string) (*Spec, error) {
	b, family, isBuiltin := builtinFor(task)
	spec := &Spec{Name: task}
	switch t, ok := s.prompts[task]; {
	case ok:
		spec.Template, spec.TemplateFrom = t, s.promptsFile
	case isBuiltin:
		spec.Template, spec.TemplateFrom = b.template, "built-in"
	case s.promptsFile != "":
		return nil, fmt.Errorf("task %s: no prompt template: not in %s and not built in (%s)", task, s.promptsFile, builtinNames())
	default:
		return nil, fmt.Errorf("task %s: no prompt template: not built in (%s); pass LongBench's dataset2prompt.json with -prompts", task, builtinNames())
	}
	if err := spec.compile(); err != nil {
		return nil, fmt.Errorf("task %s: template from %s: %w", task, spec.TemplateFrom, err)
	}
	switch n, ok := s.maxLen[task]; {
	case ok:
		spec.MaxNew, spec.MaxNewFrom = n, s.maxLenFile
	case isBuiltin:
		spec.MaxNew, spec.MaxNewFrom = b.maxNew, "built-in"
	case s.maxLenFile != "":
		return nil, fmt.Errorf("task %s: no max new tokens: not in %s", task, s.maxLenFile)
	default:
		return nil, fmt.Errorf("task %s: no max new tokens (template from %s); pass LongBench's dataset2maxlen.json with -maxlen", task, spec.TemplateFrom)
	}
	metric, ok := dataset2metric[family]
	if !ok {
		return nil, fmt.Errorf("task %s: no metric: not a LongBench task nor one of this project's", task)
	}
	if _, err := MetricByName(metric); err != nil {
		return nil, fmt.Errorf("task %s: %w", task, err)
	}
	spec.Metric = metric
	spec.FirstLine = slices.Contains(firstLineTasks, task)
	switch {
	case task == "samsum":
		spec.Stop = []string{"\n"}
	case family == "passkey" || family == "kv_retrieval":
		spec.Stop = []string{"\n"} // the synthetic tasks' answer is one line
	}
	return spec, nil
}

func builtinNames() string {
	return "lcc, repobench-p, tinycode_lcc, passkey[_N], kv_retrieval[_N]"
}

var fieldName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// tmplPart is a literal or a {field} of a template.
type tmplPart struct {
	lit, field string
}

// parseTemplate parses a Python str.format template with named fields only: "{{" and "}}" are literal
// braces; conversions (!r), format specs (:>10), attributes and positional fields are refused.
func parseTemplate(t string) ([]tmplPart, error) {
	var parts []tmplPart
	var lit strings.Builder
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c == '{' && i+1 < len(t) && t[i+1] == '{', c == '}' && i+1 < len(t) && t[i+1] == '}':
			lit.WriteByte(c)
			i++
		case c == '{':
			j := strings.IndexByte(t[i:], '}')
			if j < 0 {
				return nil, errors.New("single '{' encountered in format string")
			}
			name := t[i+1 : i+j]
			if !fieldName.MatchString(name) {
				return nil, fmt.Errorf("unsupported replacement field {%s}: only named fields such as {context}", name)
			}
			if lit.Len() > 0 {
				parts = append(parts, tmplPart{lit: lit.String()})
				lit.Reset()
			}
			parts = append(parts, tmplPart{field: name})
			i += j
		case c == '}':
			return nil, errors.New("single '}' encountered in format string")
		default:
			lit.WriteByte(c)
		}
	}
	if lit.Len() > 0 {
		parts = append(parts, tmplPart{lit: lit.String()})
	}
	return parts, nil
}

// compile parses the template and finds its {input} field.
func (s *Spec) compile() error {
	var err error
	if s.parts, err = parseTemplate(s.Template); err != nil {
		return err
	}
	s.split = len(s.parts)
	for i, p := range s.parts {
		if p.field == "input" {
			s.split = i
			break
		}
	}
	return nil
}

// Split fills the template from the row and splits it at {input}: everything before is the fixed context
// (prefix-cached), the rest — {input} and what follows — is the user input. A template without {input} is
// all fixed context, with an empty user input.
func (s *Spec) Split(it Item) (fixed, user string, err error) {
	var b strings.Builder
	for i, p := range s.parts {
		if i == s.split {
			fixed = b.String()
			b.Reset()
		}
		if p.field == "" {
			b.WriteString(p.lit)
			continue
		}
		v, ok := it.Fields[p.field]
		if !ok {
			return "", "", fmt.Errorf("task %s: the template uses {%s}, which the row lacks (or is not a scalar)", s.Name, p.field)
		}
		b.WriteString(v)
	}
	if s.split == len(s.parts) {
		return b.String(), "", nil
	}
	return fixed, b.String(), nil
}
