package evals

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file ports LongBench's metrics.py (v1) and the scorer of its eval.py. Each metric scores one
// prediction against one reference; a sample scores the maximum over its references and a task scores
// 100 × the mean over samples. Python string semantics are reproduced where they matter: str.split()
// splits on Python's whitespace set (pyFields), re's \b and \d are Unicode-aware (isWordRune, unicode.IsDigit),
// and lists are compared and edited the way the Python code does it, quirks included.

// Metric scores a prediction against one reference; allClasses is the row's all_classes (classification).
type Metric func(prediction, reference string, allClasses []string) float64

// Metric names, as in LongBench's dataset2metric (plus retrieval_exact for the synthetic tasks).
const (
	MetricQAF1           = "qa_f1_score"
	MetricRouge          = "rouge_score"
	MetricClassification = "classification_score"
	MetricRetrieval      = "retrieval_score"
	MetricRetrievalZH    = "retrieval_zh_score"
	MetricCount          = "count_score"
	MetricCodeSim        = "code_sim_score"
	MetricRetrievalExact = "retrieval_exact"
	// Chinese QA F1 and ROUGE segment words with jieba, which is not ported.
	MetricQAF1ZH  = "qa_f1_zh_score"
	MetricRougeZH = "rouge_zh_score"
)

// metrics maps each implemented metric's name to its function.
var metrics = map[string]Metric{
	MetricQAF1:           func(p, r string, _ []string) float64 { return QAF1Score(p, r) },
	MetricRouge:          func(p, r string, _ []string) float64 { return RougeScore(p, r) },
	MetricClassification: ClassificationScore,
	MetricRetrieval:      func(p, r string, _ []string) float64 { return RetrievalScore(p, r) },
	MetricRetrievalZH:    func(p, r string, _ []string) float64 { return RetrievalZHScore(p, r) },
	MetricCount:          func(p, r string, _ []string) float64 { return CountScore(p, r) },
	MetricCodeSim:        func(p, r string, _ []string) float64 { return CodeSimScore(p, r) },
	MetricRetrievalExact: func(p, r string, _ []string) float64 { return RetrievalExactScore(p, r) },
}

// MetricByName returns the metric called name, or an error for an unknown or unported one.
func MetricByName(name string) (Metric, error) {
	if m, ok := metrics[name]; ok {
		return m, nil
	}
	if name == MetricQAF1ZH || name == MetricRougeZH {
		return nil, fmt.Errorf("metric %s needs jieba word segmentation, which is not implemented", name)
	}
	return nil, fmt.Errorf("unknown metric %q", name)
}

// SampleScore is eval.py's scorer for one sample: with firstLine (trec, triviaqa, samsum, lsht) only the first
// line of prediction.lstrip('\n') is scored; the score is the maximum over the references (0 when none).
func SampleScore(m Metric, firstLine bool, prediction string, references, allClasses []string) float64 {
	if firstLine {
		prediction = FirstLine(prediction)
	}
	score := 0.0
	for _, ref := range references {
		score = max(score, m(prediction, ref, allClasses))
	}
	return score
}

// FirstLine is prediction.lstrip('\n').split('\n')[0].
func FirstLine(prediction string) string {
	s := strings.TrimLeft(prediction, "\n")
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// NormalizeAnswer is metrics.py's normalize_answer: lower-case, remove ASCII punctuation
// (string.punctuation), replace the articles a/an/the between word boundaries by a space, and join the
// whitespace-separated fields with single spaces — in that order.
func NormalizeAnswer(s string) string {
	s = strings.ToLower(s)
	s = strings.Map(func(r rune) rune {
		if r < 0x80 && strings.ContainsRune(asciiPunctuation, r) {
			return -1
		}
		return r
	}, s)
	s = removeArticles(s)
	return strings.Join(pyFields(s), " ")
}

// asciiPunctuation is Python's string.punctuation.
const asciiPunctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

// removeArticles is re.sub(r"\b(a|an|the)\b", " ", s) with Python 3's Unicode word boundaries. Like re.sub, it
// scans left to right, tests the boundaries against the original text, and resumes after each match.
func removeArticles(s string) string {
	rs := []rune(s)
	var b strings.Builder
	for i := 0; i < len(rs); {
		if n := articleAt(rs, i); n > 0 {
			b.WriteByte(' ')
			i += n
			continue
		}
		b.WriteRune(rs[i])
		i++
	}
	return b.String()
}

// articleAt is the length of the article matching at rs[i] between word boundaries, or 0. The alternatives
// are tried in the pattern's order (a, an, the), as the regex engine backtracks through them.
func articleAt(rs []rune, i int) int {
	if i > 0 && isWordRune(rs[i-1]) {
		return 0 // every alternative starts with a word character, so \b needs a non-word character before
	}
	for _, w := range [...]string{"a", "an", "the"} {
		n := len(w) // ASCII: bytes = runes
		if i+n > len(rs) || string(rs[i:i+n]) != w {
			continue
		}
		if i+n == len(rs) || !isWordRune(rs[i+n]) {
			return n
		}
	}
	return 0
}

// isWordRune is Python 3 re's \w for str patterns: alphanumeric (Unicode letters and numbers) or underscore.
func isWordRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

// pySpace is Python's str.isspace for one character: Go's unicode.IsSpace plus the ASCII separators
// U+001C..U+001F, which Python also treats as whitespace.
func pySpace(r rune) bool { return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f) }

// pyFields is Python's s.split() (no argument): the runs of non-whitespace.
func pyFields(s string) []string { return strings.FieldsFunc(s, pySpace) }

// QAF1Score is qa_f1_score: the token F1 of the normalised prediction and reference. With c the multiset
// intersection of the two token lists (Counter & Counter), same = |c|, P = same/|pred|, R = same/|ref|,
// F1 = 2PR/(P+R), and 0 when nothing is shared.
func QAF1Score(prediction, reference string) float64 {
	return tokenF1(pyFields(NormalizeAnswer(prediction)), pyFields(NormalizeAnswer(reference)))
}

// tokenF1 is metrics.py's f1_score on token lists.
func tokenF1(pred, ref []string) float64 {
	counts := make(map[string]int, len(ref))
	for _, t := range ref {
		counts[t]++
	}
	same := 0
	for _, t := range pred {
		if counts[t] > 0 {
			counts[t]--
			same++
		}
	}
	if same == 0 {
		return 0
	}
	p := float64(same) / float64(len(pred))
	r := float64(same) / float64(len(ref))
	return 2 * p * r / (p + r)
}

// ClassificationScore is classification_score. The class names found (as substrings) in the prediction form
// a list; then each listed name that is a substring of the reference but not equal to it is removed —
// while iterating over that same list, so (as in Python) the element after each removed one is skipped and
// never tested. The score is 1/len(list) when the reference is in the list, else 0. The reference's guard
// `if em_match_list != 0` compares a list with an int and is always true; it needs no port, since an empty
// list cannot contain the reference and so scores 0 without dividing.
func ClassificationScore(prediction, reference string, allClasses []string) float64 {
	var matches []string
	for _, c := range allClasses {
		if strings.Contains(prediction, c) {
			matches = append(matches, c)
		}
	}
	// Python's list iterator walks by index; list.remove deletes the first equal element.
	for i := 0; i < len(matches); i++ {
		term := matches[i]
		if strings.Contains(reference, term) && term != reference {
			j := slices.Index(matches, term)
			matches = slices.Delete(matches, j, j+1)
		}
	}
	if slices.Contains(matches, reference) {
		return 1 / float64(len(matches))
	}
	return 0
}

// digitRuns is re.findall(r"\d+", s) with Python's Unicode \d (decimal digits, category Nd).
func digitRuns(s string) []string {
	var out []string
	start := -1
	for i, r := range s {
		switch {
		case unicode.IsDigit(r) && start < 0:
			start = i
		case !unicode.IsDigit(r) && start >= 0:
			out = append(out, s[start:i])
			start = -1
		}
	}
	if start >= 0 {
		out = append(out, s[start:])
	}
	return out
}

// fractionEqual is the share of the numbers found in prediction that equal want (0 when there are none).
func fractionEqual(prediction, want string) float64 {
	numbers := digitRuns(prediction)
	if len(numbers) == 0 {
		return 0
	}
	right := 0
	for _, n := range numbers {
		if n == want {
			right++
		}
	}
	return float64(right) / float64(len(numbers))
}

// CountScore is count_score (passage_count): the share of the numbers in the prediction that equal the
// reference.
func CountScore(prediction, reference string) float64 { return fractionEqual(prediction, reference) }

// RetrievalScore is retrieval_score (passage_retrieval_en): the reference reads "Paragraph N"; the score is
// the share of the numbers in the prediction that equal N. A reference without "Paragraph N" makes the
// Python code raise IndexError; here it scores 0.
func RetrievalScore(prediction, reference string) float64 {
	return retrievalByPattern(prediction, reference, "Paragraph ")
}

// RetrievalZHScore is retrieval_zh_score (passage_retrieval_zh): as RetrievalScore with "段落N".
func RetrievalZHScore(prediction, reference string) float64 {
	return retrievalByPattern(prediction, reference, "段落")
}

// retrievalByPattern finds the first prefix followed by digits in reference (re.findall(prefix+r"(\d+)")[0])
// and scores prediction against those digits.
func retrievalByPattern(prediction, reference, prefix string) float64 {
	for rest := reference; ; {
		i := strings.Index(rest, prefix)
		if i < 0 {
			return 0
		}
		rest = rest[i+len(prefix):]
		if r, _ := utf8.DecodeRuneInString(rest); unicode.IsDigit(r) {
			return fractionEqual(prediction, digitRuns(rest)[0])
		}
	}
}

// CodeSimScore is code_sim_score (lcc, repobench-p): the first line of prediction.lstrip('\n') that contains
// none of "`", "#", "//" ("" when every line does) is compared with the reference by fuzzywuzzy's
// fuzz.ratio; the score is that integer percentage / 100.
func CodeSimScore(prediction, reference string) float64 {
	return float64(FuzzRatio(CodeLine(prediction), reference)) / 100
}

// CodeLine is the line of a code prediction that code_sim_score compares.
func CodeLine(prediction string) string {
	for line := range strings.SplitSeq(strings.TrimLeft(prediction, "\n"), "\n") {
		if !strings.Contains(line, "`") && !strings.Contains(line, "#") && !strings.Contains(line, "//") {
			return line
		}
	}
	return ""
}

// RetrievalExactScore is this project's metric for the synthetic passkey and key-value tasks: 1 when the
// first number (run of decimal digits) in the first line of prediction.lstrip('\n') equals the reference,
// else 0. Unlike count_score, extra numbers after the first do not lower the score, and unlike
// code_sim_score a near miss ("48203" for "48213") scores nothing.
func RetrievalExactScore(prediction, reference string) float64 {
	if runs := digitRuns(FirstLine(prediction)); len(runs) > 0 && runs[0] == reference {
		return 1
	}
	return 0
}
