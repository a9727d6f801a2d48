package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// tokenizerJSON is the top level of a tokenizer.json file.
type tokenizerJSON struct {
	AddedTokens   []addedToken    `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	Model         *modelJSON      `json:"model"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

// componentType reads the "type" field of a component object.
func componentType(raw json.RawMessage) (string, error) {
	var h struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return "", err
	}
	return h.Type, nil
}

func unmarshalInto(kind, typ string, raw json.RawMessage, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s %q: %v", kind, typ, err)
	}
	return nil
}

// patternJSON is {"String": "..."} or {"Regex": "..."}.
type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (p *patternJSON) build(opts buildOptions) (*pattern, error) {
	switch {
	case p == nil:
		return nil, errors.New("missing pattern")
	case p.String != nil:
		return newLiteralPattern(*p.String), nil
	case p.Regex != nil:
		return newRegexPattern(*p.Regex, opts)
	}
	return nil, errors.New(`pattern must have a "String" or "Regex" field`)
}

// ---- normalizers ----

func parseNormalizer(raw json.RawMessage, opts buildOptions) (normalizer, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("normalizer: %v", err)
	}
	switch typ {
	case "Sequence":
		var v struct {
			Normalizers []json.RawMessage `json:"normalizers"`
		}
		if err := unmarshalInto("normalizer", typ, raw, &v); err != nil {
			return nil, err
		}
		var seq normalizerSeq
		for _, r := range v.Normalizers {
			if isNull(r) {
				continue
			}
			n, err := parseNormalizer(r, opts)
			if err != nil {
				return nil, err
			}
			seq = append(seq, n)
		}
		return seq, nil
	case "NFC":
		return unicodeNormalizer{norm.NFC}, nil
	case "NFD":
		return unicodeNormalizer{norm.NFD}, nil
	case "NFKC":
		return unicodeNormalizer{norm.NFKC}, nil
	case "NFKD":
		return unicodeNormalizer{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNormalizer{}, nil
	case "StripAccents":
		return stripAccentsNormalizer{}, nil
	case "ByteLevel":
		return byteLevelNormalizer{}, nil
	case "Prepend":
		var v struct {
			Prepend string `json:"prepend"`
		}
		if err := unmarshalInto("normalizer", typ, raw, &v); err != nil {
			return nil, err
		}
		return prependNormalizer{v.Prepend}, nil
	case "Append":
		var v struct {
			Append string `json:"append"`
		}
		if err := unmarshalInto("normalizer", typ, raw, &v); err != nil {
			return nil, err
		}
		return appendNormalizer{v.Append}, nil
	case "Replace":
		var v struct {
			Pattern *patternJSON `json:"pattern"`
			Content string       `json:"content"`
		}
		if err := unmarshalInto("normalizer", typ, raw, &v); err != nil {
			return nil, err
		}
		p, err := v.Pattern.build(opts)
		if err != nil {
			return nil, fmt.Errorf("normalizer %q: %v", typ, err)
		}
		return replaceNormalizer{p, v.Content}, nil
	case "Strip":
		v := struct {
			Left  *bool `json:"strip_left"`
			Right *bool `json:"strip_right"`
		}{}
		if err := unmarshalInto("normalizer", typ, raw, &v); err != nil {
			return nil, err
		}
		return stripNormalizer{left: v.Left == nil || *v.Left, right: v.Right == nil || *v.Right}, nil
	case "BertNormalizer":
		v := struct {
			CleanText          *bool `json:"clean_text"`
			HandleChineseChars *bool `json:"handle_chinese_chars"`
			StripAccents       *bool `json:"strip_accents"`
			Lowercase          *bool `json:"lowercase"`
		}{}
		if err := unmarshalInto("normalizer", typ, raw, &v); err != nil {
			return nil, err
		}
		orTrue := func(b *bool) bool { return b == nil || *b }
		n := bertNormalizer{cleanText: orTrue(v.CleanText), chinese: orTrue(v.HandleChineseChars),
			lowercase: orTrue(v.Lowercase)}
		n.stripAccents = n.lowercase
		if v.StripAccents != nil {
			n.stripAccents = *v.StripAccents
		}
		return n, nil
	case "":
		return nil, errors.New(`normalizer: missing "type"`)
	}
	return nil, fmt.Errorf("unsupported normalizer type %q (supported: Sequence, NFC, NFD, NFKC, NFKD, "+
		"Lowercase, Prepend, Append, Replace, Strip, StripAccents, BertNormalizer, ByteLevel)", typ)
}

// ---- pre-tokenizers ----

func parsePreTokenizer(raw json.RawMessage, opts buildOptions) (preTokenizer, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %v", err)
	}
	switch typ {
	case "Sequence":
		var v struct {
			PreTokenizers []json.RawMessage `json:"pretokenizers"`
		}
		if err := unmarshalInto("pre_tokenizer", typ, raw, &v); err != nil {
			return nil, err
		}
		var seq preTokSeq
		for _, r := range v.PreTokenizers {
			if isNull(r) {
				continue
			}
			p, err := parsePreTokenizer(r, opts)
			if err != nil {
				return nil, err
			}
			seq = append(seq, p)
		}
		return seq, nil
	case "Split":
		var v struct {
			Pattern  *patternJSON `json:"pattern"`
			Behavior string       `json:"behavior"`
			Invert   bool         `json:"invert"`
		}
		if err := unmarshalInto("pre_tokenizer", typ, raw, &v); err != nil {
			return nil, err
		}
		p, err := v.Pattern.build(opts)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer %q: %v", typ, err)
		}
		b, err := parseBehavior(v.Behavior, behaviorIsolated)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer %q: %v", typ, err)
		}
		return &splitPre{pat: p, behavior: b, invert: v.Invert}, nil
	case "ByteLevel":
		var v struct {
			AddPrefixSpace *bool `json:"add_prefix_space"`
			UseRegex       *bool `json:"use_regex"`
		}
		if err := unmarshalInto("pre_tokenizer", typ, raw, &v); err != nil {
			return nil, err
		}
		b := &byteLevelPre{addPrefixSpace: v.AddPrefixSpace == nil || *v.AddPrefixSpace}
		if v.UseRegex == nil || *v.UseRegex {
			pat, err := newRegexPattern(patternGPT2, opts)
			if err != nil {
				return nil, err
			}
			b.splitter = &splitPre{pat: pat, behavior: behaviorIsolated}
		}
		return b, nil
	case "Metaspace":
		rep, scheme, split, err := parseMetaspace(raw)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer: %v", err)
		}
		return newMetaspacePre(rep, scheme, split), nil
	case "Digits":
		var v struct {
			Individual bool `json:"individual_digits"`
		}
		if err := unmarshalInto("pre_tokenizer", typ, raw, &v); err != nil {
			return nil, err
		}
		b := behaviorContiguous
		if v.Individual {
			b = behaviorIsolated
		}
		return &splitPre{pat: &pattern{pred: isNumeric, source: "Digits"}, behavior: b}, nil
	case "WhitespaceSplit":
		return whitespaceSplit(), nil
	case "Whitespace":
		p, err := newRegexPattern(`\w+|[^\w\s]+`, opts)
		if err != nil {
			return nil, err
		}
		return &splitPre{pat: p, behavior: behaviorRemoved, invert: true}, nil
	case "Punctuation":
		var v struct {
			Behavior string `json:"behavior"`
		}
		if err := unmarshalInto("pre_tokenizer", typ, raw, &v); err != nil {
			return nil, err
		}
		b, err := parseBehavior(v.Behavior, behaviorIsolated)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer %q: %v", typ, err)
		}
		return &splitPre{pat: &pattern{pred: isPunctuation, source: "Punctuation"}, behavior: b}, nil
	case "BertPreTokenizer":
		return preTokSeq{whitespaceSplit(),
			&splitPre{pat: &pattern{pred: isPunctuation, source: "Punctuation"}, behavior: behaviorIsolated}}, nil
	case "":
		return nil, errors.New(`pre_tokenizer: missing "type"`)
	}
	return nil, fmt.Errorf("unsupported pre_tokenizer type %q (supported: Sequence, Split, ByteLevel, "+
		"Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer)", typ)
}

func whitespaceSplit() *splitPre {
	return &splitPre{pat: &pattern{pred: isWhitespace, source: "WhitespaceSplit"}, behavior: behaviorRemoved}
}

func parseBehavior(name string, def splitBehavior) (splitBehavior, error) {
	if name == "" {
		return def, nil
	}
	b, ok := behaviorNames[name]
	if !ok {
		return 0, fmt.Errorf("unknown split behavior %q", name)
	}
	return b, nil
}

// parseMetaspace reads a Metaspace pre-tokenizer or decoder, including the
// legacy add_prefix_space form.
func parseMetaspace(raw json.RawMessage) (rep rune, scheme int, split bool, err error) {
	var v struct {
		Replacement    string  `json:"replacement"`
		PrependScheme  *string `json:"prepend_scheme"`
		AddPrefixSpace *bool   `json:"add_prefix_space"`
		Split          *bool   `json:"split"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, 0, false, fmt.Errorf("Metaspace: %v", err)
	}
	if v.Replacement == "" {
		v.Replacement = "▁"
	}
	if utf8.RuneCountInString(v.Replacement) != 1 {
		return 0, 0, false, fmt.Errorf("Metaspace: replacement %q is not a single character", v.Replacement)
	}
	rep, _ = utf8.DecodeRuneInString(v.Replacement)
	scheme = prependAlways
	switch {
	case v.PrependScheme != nil:
		switch *v.PrependScheme {
		case "always":
			scheme = prependAlways
		case "first":
			scheme = prependFirst
		case "never":
			scheme = prependNever
		default:
			return 0, 0, false, fmt.Errorf("Metaspace: unknown prepend_scheme %q", *v.PrependScheme)
		}
	case v.AddPrefixSpace != nil && !*v.AddPrefixSpace:
		scheme = prependNever
	}
	return rep, scheme, v.Split == nil || *v.Split, nil
}

// ---- model ----

// maxTokenID bounds token ids, so that a corrupt file cannot make the
// id-indexed tables huge.
const maxTokenID = 1<<24 - 1

// modelJSON is the "model" object of tokenizer.json.
type modelJSON struct {
	Type                    string          `json:"type"`
	Dropout                 *float64        `json:"dropout"` // ignored
	UnkToken                *string         `json:"unk_token"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	FuseUnk                 bool            `json:"fuse_unk"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
	Vocab                   map[string]int  `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`

	// Set by the fast JSON path instead of Merges.
	parsedMerges    [][2]string
	hasParsedMerges bool
}

func parseModel(v *modelJSON, opts buildOptions) (*bpeModel, error) {
	switch v.Type {
	case "BPE":
	case "":
		if v.Vocab == nil || isNull(v.Merges) {
			return nil, errors.New(`model: missing "type"`)
		}
	default:
		return nil, unsupportedModel(v.Type)
	}
	if v.Vocab == nil {
		return nil, errors.New("model: BPE model has no vocab")
	}
	m := &bpeModel{
		vocab:        v.Vocab,
		unkID:        -1,
		fuseUnk:      v.FuseUnk,
		byteFallback: v.ByteFallback,
		ignoreMerges: v.IgnoreMerges,
		cache:        newWordCache(opts.cacheCapacity),
	}
	for tok, id := range v.Vocab {
		if id < 0 || id > maxTokenID {
			return nil, fmt.Errorf("model: token %q has id %d, outside 0..%d", tok, id, maxTokenID)
		}
	}
	if v.ContinuingSubwordPrefix != nil {
		m.prefix = *v.ContinuingSubwordPrefix
	}
	if v.EndOfWordSuffix != nil {
		m.suffix = *v.EndOfWordSuffix
	}
	if v.UnkToken != nil {
		id, ok := v.Vocab[*v.UnkToken]
		if !ok {
			return nil, fmt.Errorf("model: unk_token %q is not in the vocabulary", *v.UnkToken)
		}
		m.unkID = id
	}
	for b := 0; b < 256; b++ {
		m.byteTokIDs[b] = -1
		if id, ok := v.Vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteTokIDs[b] = id
		}
	}
	merges, err := v.parsedMerges, error(nil)
	if !v.hasParsedMerges {
		if merges, err = parseMerges(v.Merges); err != nil {
			return nil, err
		}
	}
	m.merges = make(map[uint64]uint64, len(merges))
	var buf []byte
	for rank, mg := range merges {
		a, b := mg[0], mg[1]
		aID, ok := v.Vocab[a]
		if !ok {
			return nil, fmt.Errorf("model: merge %d (%q %q) references token %q, which is not in the vocabulary", rank, a, b, a)
		}
		bID, ok := v.Vocab[b]
		if !ok {
			return nil, fmt.Errorf("model: merge %d (%q %q) references token %q, which is not in the vocabulary", rank, a, b, b)
		}
		if len(b) < len(m.prefix) {
			return nil, fmt.Errorf("model: merge %d (%q %q): second token is shorter than continuing_subword_prefix", rank, a, b)
		}
		buf = append(append(buf[:0], a...), b[len(m.prefix):]...)
		newID, ok := v.Vocab[string(buf)]
		if !ok {
			merged := string(buf)
			return nil, fmt.Errorf("model: merge %d (%q %q) produces %q, which is not in the vocabulary", rank, a, b, merged)
		}
		m.merges[pairKey(int32(aID), int32(bID))] = uint64(rank)<<32 | uint64(uint32(newID))
	}
	return m, nil
}

func unsupportedModel(typ string) error {
	return fmt.Errorf("unsupported model type %q (only BPE is supported)", typ)
}

// parseMerges accepts both ["a b", ...] and [["a", "b"], ...].
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var legacy []string
	rest := bytes.TrimSpace(raw)
	if len(rest) > 0 && rest[0] == '[' {
		rest = bytes.TrimSpace(rest[1:])
	}
	if len(rest) > 0 && rest[0] == '"' {
		if err := json.Unmarshal(raw, &legacy); err != nil {
			return nil, fmt.Errorf(`model: "merges": %v`, err)
		}
		out := make([][2]string, len(legacy))
		for i, line := range legacy {
			a, b, ok := strings.Cut(line, " ")
			if !ok || strings.Contains(b, " ") {
				return nil, fmt.Errorf("model: merge %d (%q) is not two tokens separated by one space", i, line)
			}
			out[i] = [2]string{a, b}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf(`model: "merges" must be a list of "a b" strings or of [a, b] pairs: %v`, err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("model: merge %d has %d elements, want 2", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// ---- post-processors ----

func parsePostProcessor(raw json.RawMessage, tokenID func(string) (int, bool)) (postProcessor, error) {
	typ, err := componentType(raw)
	if err != nil {
		return postProcessor{}, fmt.Errorf("post_processor: %v", err)
	}
	switch typ {
	case "ByteLevel":
		return postProcessor{}, nil
	case "Sequence":
		var v struct {
			Processors []json.RawMessage `json:"processors"`
		}
		if err := unmarshalInto("post_processor", typ, raw, &v); err != nil {
			return postProcessor{}, err
		}
		var p postProcessor
		for _, r := range v.Processors {
			if isNull(r) {
				continue
			}
			q, err := parsePostProcessor(r, tokenID)
			if err != nil {
				return postProcessor{}, err
			}
			p = p.then(q)
		}
		return p, nil
	case "TemplateProcessing":
		type item struct {
			ID string `json:"id"`
		}
		var v struct {
			Single []struct {
				SpecialToken *item `json:"SpecialToken"`
				Sequence     *item `json:"Sequence"`
			} `json:"single"`
			SpecialTokens map[string]struct {
				IDs []int `json:"ids"`
			} `json:"special_tokens"`
		}
		if err := unmarshalInto("post_processor", typ, raw, &v); err != nil {
			return postProcessor{}, err
		}
		p := postProcessor{dropSeq: true}
		for _, it := range v.Single {
			switch {
			case it.Sequence != nil:
				if it.Sequence.ID == "A" && p.dropSeq {
					p.dropSeq = false
				}
			case it.SpecialToken != nil:
				st, ok := v.SpecialTokens[it.SpecialToken.ID]
				if !ok {
					return postProcessor{}, fmt.Errorf("post_processor %q: special token %q is missing from special_tokens", typ, it.SpecialToken.ID)
				}
				if p.dropSeq {
					p.pre = append(p.pre, st.IDs...)
				} else {
					p.post = append(p.post, st.IDs...)
				}
			default:
				return postProcessor{}, fmt.Errorf("post_processor %q: template piece is neither SpecialToken nor Sequence", typ)
			}
		}
		if p.dropSeq { // no sequence slot: everything is "pre"
			p.post = nil
		}
		return p, nil
	case "RobertaProcessing", "BertProcessing":
		var v struct {
			Sep []json.RawMessage `json:"sep"`
			Cls []json.RawMessage `json:"cls"`
		}
		if err := unmarshalInto("post_processor", typ, raw, &v); err != nil {
			return postProcessor{}, err
		}
		get := func(name string, pair []json.RawMessage) (int, error) {
			var id int
			if len(pair) != 2 || json.Unmarshal(pair[1], &id) != nil {
				return 0, fmt.Errorf("post_processor %q: %q must be [token, id]", typ, name)
			}
			return id, nil
		}
		cls, err := get("cls", v.Cls)
		if err != nil {
			return postProcessor{}, err
		}
		sep, err := get("sep", v.Sep)
		if err != nil {
			return postProcessor{}, err
		}
		return postProcessor{pre: []int{cls}, post: []int{sep}}, nil
	case "":
		return postProcessor{}, errors.New(`post_processor: missing "type"`)
	}
	return postProcessor{}, fmt.Errorf("unsupported post_processor type %q (supported: TemplateProcessing, "+
		"ByteLevel, Sequence, RobertaProcessing, BertProcessing)", typ)
}

// ---- decoders ----

func parseDecoder(raw json.RawMessage, opts buildOptions) (decoder, error) {
	typ, err := componentType(raw)
	if err != nil {
		return nil, fmt.Errorf("decoder: %v", err)
	}
	switch typ {
	case "Sequence":
		var v struct {
			Decoders []json.RawMessage `json:"decoders"`
		}
		if err := unmarshalInto("decoder", typ, raw, &v); err != nil {
			return nil, err
		}
		var seq decoderSeq
		for _, r := range v.Decoders {
			if isNull(r) {
				continue
			}
			d, err := parseDecoder(r, opts)
			if err != nil {
				return nil, err
			}
			seq = append(seq, d)
		}
		return seq, nil
	case "ByteLevel":
		return byteLevelDecoder{}, nil
	case "ByteFallback":
		return byteFallbackDecoder{}, nil
	case "Fuse":
		return fuseDecoder{}, nil
	case "Replace":
		var v struct {
			Pattern *patternJSON `json:"pattern"`
			Content string       `json:"content"`
		}
		if err := unmarshalInto("decoder", typ, raw, &v); err != nil {
			return nil, err
		}
		p, err := v.Pattern.build(opts)
		if err != nil {
			return nil, fmt.Errorf("decoder %q: %v", typ, err)
		}
		return replaceDecoder{p, v.Content}, nil
	case "Strip":
		var v struct {
			Content string `json:"content"`
			Start   int    `json:"start"`
			Stop    int    `json:"stop"`
		}
		if err := unmarshalInto("decoder", typ, raw, &v); err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(v.Content) != 1 {
			return nil, fmt.Errorf("decoder %q: content %q is not a single character", typ, v.Content)
		}
		r, _ := utf8.DecodeRuneInString(v.Content)
		return stripDecoder{content: r, start: v.Start, stop: v.Stop}, nil
	case "Metaspace":
		rep, scheme, _, err := parseMetaspace(raw)
		if err != nil {
			return nil, fmt.Errorf("decoder: %v", err)
		}
		return metaspaceDecoder{rep: rep, scheme: scheme}, nil
	case "BPEDecoder":
		v := struct {
			Suffix *string `json:"suffix"`
		}{}
		if err := unmarshalInto("decoder", typ, raw, &v); err != nil {
			return nil, err
		}
		s := "</w>"
		if v.Suffix != nil {
			s = *v.Suffix
		}
		return bpeDecoder{s}, nil
	case "":
		return nil, errors.New(`decoder: missing "type"`)
	}
	return nil, fmt.Errorf("unsupported decoder type %q (supported: Sequence, ByteLevel, ByteFallback, "+
		"Fuse, Replace, Strip, Metaspace, BPEDecoder)", typ)
}
