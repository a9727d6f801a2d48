// Package tokenizer implements Hugging Face tokenizer.json tokenizers in pure
// Go, reproducing the encodings and decodings of the Rust `tokenizers`
// library for BPE models.
//
// Encoding follows the Rust pipeline: added tokens are split out of the raw
// text first (honouring their special, normalized, lstrip, rstrip and
// single_word flags), each remaining piece is normalized, normalized added
// tokens are split out, the pre-tokenizer cuts the piece into words, the BPE
// model turns every word into ids, and with addSpecialTokens the
// post-processor adds its special tokens (e.g. BOS).
//
// Supported components:
//
//   - model: BPE, with merges as "a b" strings or [a, b] pairs, unk_token,
//     fuse_unk, byte_fallback, ignore_merges, continuing_subword_prefix and
//     end_of_word_suffix (dropout is ignored: encoding is deterministic).
//   - normalizers: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Append,
//     Replace (String or Regex pattern), Strip, StripAccents, BertNormalizer,
//     ByteLevel.
//   - pre-tokenizers: Sequence, Split (String or Regex pattern, behaviours
//     Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous,
//     invert), ByteLevel (add_prefix_space, use_regex), Metaspace
//     (replacement, prepend_scheme always/first/never, split, legacy
//     add_prefix_space), Digits, Whitespace, WhitespaceSplit, Punctuation,
//     BertPreTokenizer.
//   - post-processors: TemplateProcessing (single sequences), ByteLevel,
//     Sequence, RobertaProcessing, BertProcessing.
//   - decoders: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse,
//     Strip, BPEDecoder.
//
// Any other component type (for example a WordPiece or Unigram model or a
// Precompiled normalizer) makes Parse fail with an error naming it.
//
// Regular expressions run on github.com/dlclark/regexp2. The split patterns
// of GPT-2, GPT-4/LLaMA-3 and Qwen2/3 are recognised byte for byte and run by
// equivalent hand-written scanners, which are much faster on long inputs.
// BPE results are kept in a bounded per-word cache. A Tokenizer is safe for
// concurrent use by multiple goroutines.
//
// Not supported: pair encodings, offsets, truncation and padding (ignored),
// BPE dropout (ignored), and models other than BPE. Known differences from
// the Rust library, all outside the golden tests: Metaspace's
// prepend_scheme "first" treats a piece as starting the input even if a Strip
// normalizer removed leading characters; regexes other than the three
// recognised patterns follow .NET (regexp2) rather than Oniguruma semantics,
// which differ in rare corners (for example (?i)s does not match U+017F in
// regexp2; the scanners match it, as Oniguruma does).
package tokenizer

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/squeezeai/sqllm/internal/limitread"
)

// Tokenizer encodes text to token ids and decodes ids to text.
type Tokenizer struct {
	model      *bpeModel
	normalizer normalizer   // nil: none
	preTok     preTokenizer // nil: none
	decoder    decoder      // nil: tokens are joined with spaces
	post       postProcessor

	rawAdded  *addedMatcher // added tokens matched on the raw input
	normAdded *addedMatcher // added tokens matched after normalization

	idToToken []string // by id; "" where hasToken is false
	hasToken  []bool
	special   []bool
	addedIDs  map[string]int // added token content -> id

	// byteDecode holds, for byte-level decoding without other decoders, the
	// raw bytes of every token.
	byteDecode []string
	// byteFallbackDecode is set when the decoder merges <0xXX> tokens, so a
	// stream decoder must wait for the end of a run of them.
	byteFallbackDecode bool

	bosID, eosID   int
	hasBOS, hasEOS bool
}

// buildOptions tunes Parse for tests.
type buildOptions struct {
	noFastScan    bool // use regexp2 even for the well-known split patterns
	noFastJSON    bool // decode with encoding/json only
	cacheCapacity int
}

var defaultOptions = buildOptions{cacheCapacity: cacheCapacity}

// Load reads a tokenizer.json file, or the tokenizer.json of a model
// directory. A path ending in ".gz" is decompressed. If a
// tokenizer_config.json lies beside the file (NAME.tokenizer_config.json for
// NAME.tokenizer.json), its eos_token is used for EOS.
func Load(path string) (*Tokenizer, error) {
	file := path
	if fi, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("tokenizer: %v", err)
	} else if fi.IsDir() {
		file = filepath.Join(path, "tokenizer.json")
	}
	data, err := limitread.File(file, fileLimit)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	if strings.HasSuffix(file, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %v", file, err)
		}
		if data, err = io.ReadAll(io.LimitReader(zr, fileLimit+1)); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %v", file, err)
		}
		if int64(len(data)) > fileLimit {
			return nil, fmt.Errorf("tokenizer: %s: %w (decompresses to more than %d bytes)", file, errTooLarge, fileLimit)
		}
	}
	t, err := parse(data, defaultOptions)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", file, err)
	}
	if cfg, cfgPath, err := readConfig(file); err == nil {
		if err := t.applyConfig(cfg); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %v", cfgPath, err)
		}
	} else if errors.Is(err, errTooLarge) {
		return nil, fmt.Errorf("tokenizer: %v", err)
	}
	return t, nil
}

// readConfig reads the tokenizer_config.json beside a tokenizer file:
// for ".../NAME.tokenizer.json[.gz]" that is ".../NAME.tokenizer_config.json",
// otherwise ".../tokenizer_config.json".
func readConfig(file string) ([]byte, string, error) {
	dir, base := filepath.Split(file)
	prefix := ""
	for _, suffix := range []string{"tokenizer.json", "tokenizer.json.gz"} {
		if p, ok := strings.CutSuffix(base, suffix); ok {
			prefix = p
		}
	}
	path := filepath.Join(dir, prefix+"tokenizer_config.json")
	data, err := limitread.File(path, fileLimit)
	return data, path, err
}

// MaxFileSize is the largest tokenizer.json (after decompression) and tokenizer_config.json accepted;
// real ones are below 50 MB.
const MaxFileSize = 256 << 20

var fileLimit int64 = MaxFileSize // lowered by tests

var errTooLarge = limitread.ErrTooLarge

// Parse builds a Tokenizer from the contents of a tokenizer.json file.
func Parse(data []byte) (*Tokenizer, error) {
	t, err := parse(data, defaultOptions)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: tokenizer.json: %v", err)
	}
	return t, nil
}

func parse(data []byte, opts buildOptions) (*Tokenizer, error) {
	tj, err := decodeJSON(data, opts)
	if err != nil {
		return nil, err
	}
	if tj.Model == nil {
		return nil, errors.New(`missing "model"`)
	}
	t := &Tokenizer{}
	if t.model, err = parseModel(tj.Model, opts); err != nil {
		return nil, err
	}
	if !isNull(tj.Normalizer) {
		if t.normalizer, err = parseNormalizer(tj.Normalizer, opts); err != nil {
			return nil, err
		}
	}
	if !isNull(tj.PreTokenizer) {
		if t.preTok, err = parsePreTokenizer(tj.PreTokenizer, opts); err != nil {
			return nil, err
		}
		t.preTok = t.setupByteLevel(t.preTok)
	}
	if !isNull(tj.Decoder) {
		if t.decoder, err = parseDecoder(tj.Decoder, opts); err != nil {
			return nil, err
		}
	}
	if err := t.buildVocab(tj.AddedTokens); err != nil {
		return nil, err
	}
	if !isNull(tj.PostProcessor) {
		if t.post, err = parsePostProcessor(tj.PostProcessor, t.TokenToID); err != nil {
			return nil, err
		}
		for _, id := range append(append([]int(nil), t.post.pre...), t.post.post...) {
			if _, ok := t.IDToToken(id); !ok {
				return nil, fmt.Errorf("post_processor: token id %d is not in the vocabulary", id)
			}
		}
		if len(t.post.pre) > 0 {
			t.bosID, t.hasBOS = t.post.pre[0], true
		}
	}
	t.model.setupSplitBefore()
	t.setupDecoding()
	return t, nil
}

// decodeJSON reads the top level of tokenizer.json, through the fast path
// when possible.
func decodeJSON(data []byte, opts buildOptions) (*tokenizerJSON, error) {
	if !opts.noFastJSON {
		if tj, err := fastParse(data); err == nil {
			return tj, nil
		}
	}
	var tj tokenizerJSON
	if err := json.Unmarshal(data, &tj); err != nil {
		// Either the JSON is malformed, or some part does not have the shape
		// expected (for example the model of an unsupported type).
		var loose struct {
			Model json.RawMessage `json:"model"`
		}
		if json.Unmarshal(data, &loose) != nil {
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
		if typ, _ := componentType(loose.Model); typ != "BPE" && typ != "" {
			return nil, unsupportedModel(typ)
		}
		return nil, fmt.Errorf("invalid tokenizer.json: %v", err)
	}
	return &tj, nil
}

// setupByteLevel defers the byte-to-rune mapping of a final ByteLevel
// pre-tokenizer to the model (which then works on raw bytes) and drops the
// pre-tokenizer entirely when nothing else is left for it to do.
func (t *Tokenizer) setupByteLevel(p preTokenizer) preTokenizer {
	last := p
	var seq preTokSeq
	if s, ok := p.(preTokSeq); ok && len(s) > 0 {
		seq, last = s, s[len(s)-1]
	}
	b, ok := last.(*byteLevelPre)
	if !ok {
		return p
	}
	b.deferMap = true
	m := t.model
	m.byteMode = true
	m.byteIDsFull = m.prefix == "" && m.suffix == ""
	for i := 0; i < 256; i++ {
		id, ok := m.vocab[byteToString[i]]
		if !ok {
			m.byteIDsFull = false
			break
		}
		m.byteIDs[i] = int32(id)
	}
	if b.addPrefixSpace || b.splitter != nil {
		return p
	}
	if seq == nil {
		return nil
	}
	if len(seq) == 2 {
		return seq[0]
	}
	return seq[:len(seq)-1]
}

func (t *Tokenizer) buildVocab(added []addedToken) error {
	size := 0
	for _, id := range t.model.vocab {
		size = max(size, id+1)
	}
	for _, a := range added {
		if a.ID < 0 || a.ID > maxTokenID {
			return fmt.Errorf("added token %q has id %d, outside 0..%d", a.Content, a.ID, maxTokenID)
		}
		size = max(size, a.ID+1)
	}
	t.idToToken = make([]string, size)
	t.hasToken = make([]bool, size)
	t.special = make([]bool, size)
	for tok, id := range t.model.vocab {
		t.idToToken[id], t.hasToken[id] = tok, true
	}
	t.addedIDs = make(map[string]int, len(added))
	raw := &addedMatcher{trie: newTokenTrie()}
	nrm := &addedMatcher{trie: newTokenTrie()}
	// Special tokens are registered before the others, as in the Rust
	// AddedVocabulary.
	for pass := 0; pass < 2; pass++ {
		for i := range added {
			a := &added[i]
			if a.Content == "" || a.Special != (pass == 0) {
				continue
			}
			t.idToToken[a.ID], t.hasToken[a.ID] = a.Content, true
			t.special[a.ID] = a.Special
			if _, dup := t.addedIDs[a.Content]; !dup {
				t.addedIDs[a.Content] = a.ID
			}
			if a.Normalized {
				content := a.Content
				if t.normalizer != nil {
					content = t.normalizer.normalize(content)
				}
				nrm.trie.add(content, len(nrm.tokens))
				nrm.tokens = append(nrm.tokens, a)
			} else {
				raw.trie.add(a.Content, len(raw.tokens))
				raw.tokens = append(raw.tokens, a)
			}
		}
	}
	t.rawAdded, t.normAdded = raw, nrm
	return nil
}

// setupDecoding precomputes what Decode and the stream decoder need.
func (t *Tokenizer) setupDecoding() {
	hasFallback := func(d decoder) bool {
		_, ok := d.(byteFallbackDecoder)
		return ok
	}
	switch d := t.decoder.(type) {
	case byteLevelDecoder:
		t.byteDecode = make([]string, len(t.idToToken))
		for id, tok := range t.idToToken {
			if t.hasToken[id] {
				t.byteDecode[id] = string(byteLevelDecodeToken(nil, tok))
			}
		}
	case decoderSeq:
		for _, x := range d {
			if hasFallback(x) {
				t.byteFallbackDecode = true
			}
		}
	default:
		t.byteFallbackDecode = hasFallback(d)
	}
}

// applyConfig reads the eos_token of a tokenizer_config.json.
func (t *Tokenizer) applyConfig(data []byte) error {
	var cfg struct {
		EOS json.RawMessage `json:"eos_token"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("invalid JSON: %v", err)
	}
	if isNull(cfg.EOS) {
		return nil
	}
	var name string
	if json.Unmarshal(cfg.EOS, &name) != nil {
		var obj struct {
			Content string `json:"content"`
		}
		if json.Unmarshal(cfg.EOS, &obj) != nil {
			return nil
		}
		name = obj.Content
	}
	if id, ok := t.TokenToID(name); ok {
		t.eosID, t.hasEOS = id, true
	}
	return nil
}

// Encode converts text to token ids. With addSpecialTokens the
// post-processor's special tokens (for example BOS) are added. Invalid UTF-8
// in text is replaced by U+FFFD first.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) []int {
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	e := encoder{t: t, ids: make([]int, 0, len(text)/2+16)}
	post := addSpecialTokens && (len(t.post.pre) > 0 || len(t.post.post) > 0 || t.post.dropSeq)
	if post {
		e.ids = append(e.ids, t.post.pre...)
		if t.post.dropSeq {
			return append(e.ids, t.post.post...)
		}
	}
	var segs [16]segment
	for _, sg := range t.rawAdded.split(segs[:0], text) {
		if sg.id >= 0 {
			e.ids = append(e.ids, sg.id)
			continue
		}
		e.segment(text[sg.start:sg.end], sg.start == 0)
	}
	if post {
		e.ids = append(e.ids, t.post.post...)
	}
	return e.ids
}

// encoder holds the state of one Encode call.
type encoder struct {
	t      *Tokenizer
	ids    []int
	emitFn func(piece)
}

// emit runs the model on one pre-tokenized word.
func (e *encoder) emit(p piece) { e.ids = e.t.model.tokenize(e.ids, p.text) }

// segment encodes text that lies between raw added tokens.
func (e *encoder) segment(s string, atStart bool) {
	t := e.t
	if t.normalizer != nil {
		s = t.normalizer.normalize(s)
	}
	if e.emitFn == nil {
		e.emitFn = e.emit
	}
	var segs [16]segment
	for _, sg := range t.normAdded.split(segs[:0], s) {
		if sg.id >= 0 {
			e.ids = append(e.ids, sg.id)
			continue
		}
		p := piece{s[sg.start:sg.end], atStart && sg.start == 0}
		if t.preTok == nil {
			e.emit(p)
		} else {
			t.preTok.each(p, e.emitFn)
		}
	}
}

// Decode converts ids to text. Ids that are not in the vocabulary are
// ignored; with skipSpecialTokens, special tokens are left out.
func (t *Tokenizer) Decode(ids []int, skipSpecialTokens bool) string {
	if t.byteDecode != nil {
		var buf []byte
		for _, id := range ids {
			if t.keep(id, skipSpecialTokens) {
				buf = append(buf, t.byteDecode[id]...)
			}
		}
		return lossyUTF8(buf)
	}
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		if t.keep(id, skipSpecialTokens) {
			toks = append(toks, t.idToToken[id])
		}
	}
	return t.decodeTokens(toks)
}

// keep reports whether id takes part in decoding.
func (t *Tokenizer) keep(id int, skipSpecial bool) bool {
	return id >= 0 && id < len(t.hasToken) && t.hasToken[id] && !(skipSpecial && t.special[id])
}

func (t *Tokenizer) decodeTokens(toks []string) string {
	if t.decoder == nil {
		return strings.Join(toks, " ")
	}
	return strings.Join(t.decoder.decodeChain(toks), "")
}

// VocabSize returns the size of the vocabulary including added tokens (the
// largest id plus one).
func (t *Tokenizer) VocabSize() int { return len(t.idToToken) }

// TokenToID returns the id of a token (added tokens first, then the model
// vocabulary).
func (t *Tokenizer) TokenToID(tok string) (int, bool) {
	if id, ok := t.addedIDs[tok]; ok {
		return id, true
	}
	id, ok := t.model.vocab[tok]
	return id, ok
}

// IDToToken returns the token string of an id.
func (t *Tokenizer) IDToToken(id int) (string, bool) {
	if id < 0 || id >= len(t.idToToken) || !t.hasToken[id] {
		return "", false
	}
	return t.idToToken[id], true
}

// IsSpecial reports whether id is a special added token.
func (t *Tokenizer) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.special) && t.special[id]
}

// BOS returns the first token the post-processor prepends, if any.
func (t *Tokenizer) BOS() (int, bool) { return t.bosID, t.hasBOS }

// EOS returns the id of the eos_token named by the tokenizer_config.json
// found beside the loaded file, if any.
func (t *Tokenizer) EOS() (int, bool) { return t.eosID, t.hasEOS }
