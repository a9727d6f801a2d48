package evals

import "math"

// FuzzRatio is fuzzywuzzy's fuzz.ratio(s1, s2) (fuzzywuzzy 0.18 with python-Levenshtein installed, as
// LongBench's code_sim_score runs it). Our reading of that code:
//
//   - the decorators come first: 100 when s1 == s2 (so two empty strings give 100), else 0 when either is
//     empty;
//   - otherwise fuzzywuzzy's StringMatcher calls python-Levenshtein's ratio(s1, s2), which on str works on
//     code points: lensum = len(s1)+len(s2) and ldist = the Levenshtein distance in which a substitution
//     costs 2 (insertions and deletions 1), and ratio = (lensum - ldist) / lensum. Equivalently
//     2·M/T with M the length of a longest common subsequence and T = lensum;
//   - the result is utils.intr(100 * ratio) = int(round(100 * ratio)) — Python 3's round, which rounds
//     halves to even (62.5 → 62, 63.5 → 64).
//
// Without python-Levenshtein, fuzzywuzzy would fall back to difflib.SequenceMatcher, whose ratio differs
// (it matches blocks greedily, not an optimal alignment); tinycode_lcc's hf_dev_preds scores use difflib.
func FuzzRatio(s1, s2 string) int {
	if s1 == s2 {
		return 100
	}
	if s1 == "" || s2 == "" {
		return 0
	}
	return int(math.RoundToEven(100 * LevenshteinRatio(s1, s2)))
}

// LevenshteinRatio is python-Levenshtein's ratio(s1, s2): (lensum - ldist) / lensum over code points, with
// substitutions costing 2; 1 for two empty strings.
func LevenshteinRatio(s1, s2 string) float64 {
	a, b := []rune(s1), []rune(s2)
	lensum := len(a) + len(b)
	if lensum == 0 {
		return 1
	}
	return float64(lensum-indelDistance(a, b)) / float64(lensum)
}

// indelDistance is the edit distance with insertion and deletion cost 1 and substitution cost 2
// (python-Levenshtein's lev_u_edit_distance with xcost=1), by the usual two-row dynamic programme.
func indelDistance(a, b []rune) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub += 2
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
