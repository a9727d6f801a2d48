package tokenizer

// postProcessor is the effect of a post-processor on a single sequence when
// special tokens are requested: ids become pre + ids + post (or just
// pre + post when the template has no sequence slot).
type postProcessor struct {
	pre, post []int
	dropSeq   bool
}

// then composes p with a processor q that runs after it (Sequence).
func (p postProcessor) then(q postProcessor) postProcessor {
	if q.dropSeq {
		return q
	}
	return postProcessor{
		pre:     append(append([]int(nil), q.pre...), p.pre...),
		post:    append(append([]int(nil), p.post...), q.post...),
		dropSeq: p.dropSeq,
	}
}

func (p postProcessor) apply(ids []int) []int {
	if len(p.pre) == 0 && len(p.post) == 0 && !p.dropSeq {
		return ids
	}
	n := len(p.pre) + len(p.post)
	if !p.dropSeq {
		n += len(ids)
	}
	out := make([]int, 0, n)
	out = append(out, p.pre...)
	if !p.dropSeq {
		out = append(out, ids...)
	}
	return append(out, p.post...)
}
