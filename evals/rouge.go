package evals

import "strings"

// RougeScore is LongBench's rouge_score: Rouge().get_scores([prediction], [reference], avg=True)
// ["rouge-l"]["f"] from the `rouge` package (pltrdy/rouge 1.0.1, default exclusive=True), 0 when it raises.
//
// Our reading of that package, step by step:
//
//  1. Sentences: text.split(".") keeping the non-empty pieces, each re-joined as " ".join(piece.split()).
//     A piece of only whitespace (e.g. after a final ". ") is non-empty and becomes "" — a sentence whose
//     single word is the empty string.
//  2. No sentence on either side raises ValueError ("Collections must contain at least 1 sentence."), which
//     rouge_score turns into 0: an empty prediction, or one made only of dots, scores 0.
//  3. Words: each sentence split on " " (so "" gives the word "").
//  4. m = the number of DISTINCT words of the reference, n = the number of distinct words of the prediction
//     (exclusive=True stores them in a set).
//  5. For each reference sentence r and each prediction sentence c, one longest common subsequence of
//     words is reconstructed by the package's backtracking (from the end: equal words are taken; else step
//     up in r when table[i-1][j] > table[i][j-1], otherwise step left in c), and its words are added to one
//     set shared across all pairs. LCS_union = the size of that set.
//  6. R = LCS_union/m, P = LCS_union/n, F = 2·P·R / (P + R + 1e-8) — note the 1e-8 in the denominator, so
//     a perfect match scores 0.99999999..., not 1.
//
// One behaviour is not reproduced: the package reconstructs the LCS recursively, so a pair of sentences long
// enough to need about a thousand steps raises RecursionError and scores 0 in Python; here it is scored.
func RougeScore(prediction, reference string) float64 {
	hyp, ref := rougeSentences(prediction), rougeSentences(reference)
	if len(hyp) == 0 || len(ref) == 0 {
		return 0
	}
	m := len(distinct(rougeWords(ref)))
	n := len(distinct(rougeWords(hyp)))
	union := make(map[string]bool)
	for _, r := range ref {
		rw := strings.Split(r, " ")
		for _, c := range hyp {
			for _, w := range reconLCS(rw, strings.Split(c, " ")) {
				union[w] = true
			}
		}
	}
	llcs := float64(len(union))
	r := llcs / float64(m)
	p := llcs / float64(n)
	return 2 * ((p * r) / (p + r + 1e-8))
}

// rougeSentences is the package's [" ".join(_.split()) for _ in text.split(".") if len(_) > 0].
func rougeSentences(text string) []string {
	var out []string
	for piece := range strings.SplitSeq(text, ".") {
		if piece != "" {
			out = append(out, strings.Join(pyFields(piece), " "))
		}
	}
	return out
}

// rougeWords is _split_into_words: every sentence split on " ", flattened.
func rougeWords(sentences []string) []string {
	var out []string
	for _, s := range sentences {
		out = append(out, strings.Split(s, " ")...)
	}
	return out
}

func distinct(words []string) map[string]bool {
	set := make(map[string]bool, len(words))
	for _, w := range words {
		set[w] = true
	}
	return set
}

// reconLCS is _recon_lcs(x, y): the words of x on the longest common subsequence that the package's
// backtracking reconstructs (in reverse order; the caller only collects them into a set).
func reconLCS(x, y []string) []string {
	// table[i][j] = LCS length of x[:i] and y[:j], as the package's _lcs.
	w := len(y) + 1
	table := make([]int32, (len(x)+1)*w)
	for i := 1; i <= len(x); i++ {
		for j := 1; j <= len(y); j++ {
			if x[i-1] == y[j-1] {
				table[i*w+j] = table[(i-1)*w+j-1] + 1
			} else {
				table[i*w+j] = max(table[(i-1)*w+j], table[i*w+j-1])
			}
		}
	}
	var out []string
	for i, j := len(x), len(y); i > 0 && j > 0; {
		switch {
		case x[i-1] == y[j-1]:
			out = append(out, x[i-1])
			i, j = i-1, j-1
		case table[(i-1)*w+j] > table[i*w+j-1]:
			i--
		default:
			j--
		}
	}
	return out
}
