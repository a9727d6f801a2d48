package tokenizer

import (
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// A fast path for reading tokenizer.json. Most of the file is the model's
// vocabulary and merges (hundreds of thousands of entries), which
// encoding/json decodes slowly through reflection. This scanner reads the
// top level and the model object itself, decoding vocab and merges by hand
// and everything else with encoding/json. On anything unexpected it gives up
// with errNoFastPath, and the caller uses the plain encoding/json path, which
// also produces the error messages.

var errNoFastPath = errors.New("fast JSON path not applicable")

type jsonScanner struct {
	data []byte
	pos  int
	buf  []byte // scratch for unescaped strings
}

func (s *jsonScanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// expect consumes the byte c after optional whitespace.
func (s *jsonScanner) expect(c byte) bool {
	s.skipSpace()
	if s.pos < len(s.data) && s.data[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// peek returns the next non-space byte (0 at the end).
func (s *jsonScanner) peek() byte {
	s.skipSpace()
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

// str reads a JSON string and returns its contents. The result aliases the
// input or the scratch buffer and is valid until the next call.
func (s *jsonScanner) str() ([]byte, bool) {
	if !s.expect('"') {
		return nil, false
	}
	start := s.pos
	for i := start; i < len(s.data); i++ {
		switch c := s.data[i]; {
		case c == '"':
			s.pos = i + 1
			return s.data[start:i], true
		case c == '\\':
			return s.slowStr(start - 1)
		case c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// slowStr decodes a string with escapes, starting at its opening quote,
// using encoding/json.
func (s *jsonScanner) slowStr(open int) ([]byte, bool) {
	i := open + 1
	for ; i < len(s.data); i++ {
		if s.data[i] == '\\' {
			i++
		} else if s.data[i] == '"' {
			break
		}
	}
	if i >= len(s.data) {
		return nil, false
	}
	var v string
	if json.Unmarshal(s.data[open:i+1], &v) != nil {
		return nil, false
	}
	s.pos = i + 1
	s.buf = append(s.buf[:0], v...)
	return s.buf, true
}

// uint reads a non-negative integer that fits in an int32.
func (s *jsonScanner) uint() (int, bool) {
	s.skipSpace()
	n, start := 0, s.pos
	for s.pos < len(s.data) && s.data[s.pos] >= '0' && s.data[s.pos] <= '9' {
		n = n*10 + int(s.data[s.pos]-'0')
		if n > 1<<31-1 {
			return 0, false
		}
		s.pos++
	}
	if s.pos == start || (s.pos < len(s.data) && (s.data[s.pos] == '.' || s.data[s.pos] == 'e' || s.data[s.pos] == 'E')) {
		return 0, false
	}
	return n, true
}

// skipValue skips any JSON value and returns its raw bytes.
func (s *jsonScanner) skipValue() ([]byte, bool) {
	s.skipSpace()
	start := s.pos
	depth := 0
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			if _, ok := s.str(); !ok {
				return nil, false
			}
			if depth == 0 {
				return s.data[start:s.pos], true
			}
			continue
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			if depth == 0 { // end of a literal inside an object or array
				if s.pos == start {
					return nil, false
				}
				return s.data[start:s.pos], true
			}
			depth--
			if depth < 0 {
				return nil, false
			}
			if depth == 0 {
				s.pos++
				return s.data[start:s.pos], true
			}
		case depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if s.pos == start {
				return nil, false
			}
			return s.data[start:s.pos], true
		}
		s.pos++
	}
	if depth == 0 && s.pos > start {
		return s.data[start:s.pos], true
	}
	return nil, false
}

// object calls fn for every key of an object; fn must consume the value.
func (s *jsonScanner) object(fn func(key string) bool) bool {
	if !s.expect('{') {
		return false
	}
	if s.peek() == '}' {
		s.pos++
		return true
	}
	for {
		k, ok := s.str()
		if !ok || !s.expect(':') || !fn(string(k)) {
			return false
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return true
		default:
			return false
		}
	}
}

// array calls fn for every element of an array; fn must consume it.
func (s *jsonScanner) array(fn func() bool) bool {
	if !s.expect('[') {
		return false
	}
	if s.peek() == ']' {
		s.pos++
		return true
	}
	for {
		if !fn() {
			return false
		}
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return true
		default:
			return false
		}
	}
}

// rawInto decodes the next value into v with encoding/json.
func (s *jsonScanner) rawInto(v any) bool {
	raw, ok := s.skipValue()
	return ok && json.Unmarshal(raw, v) == nil
}

// fastParse reads a tokenizer.json whose model is a BPE with a vocab object
// and merges in either format.
func fastParse(data []byte) (*tokenizerJSON, error) {
	s := &jsonScanner{data: data}
	var tj tokenizerJSON
	ok := s.object(func(key string) bool {
		var raw []byte
		var ok bool
		switch key {
		case "model":
			tj.Model, ok = s.model()
			return ok
		case "added_tokens":
			return s.rawInto(&tj.AddedTokens)
		}
		if raw, ok = s.skipValue(); !ok {
			return false
		}
		switch key {
		case "normalizer":
			tj.Normalizer = raw
		case "pre_tokenizer":
			tj.PreTokenizer = raw
		case "post_processor":
			tj.PostProcessor = raw
		case "decoder":
			tj.Decoder = raw
		}
		return true
	})
	if !ok || s.peek() != 0 {
		return nil, errNoFastPath
	}
	return &tj, nil
}

// model reads the model object; vocab is decoded by hand and merges are
// kept raw for parseMerges (or pre-split by hand).
func (s *jsonScanner) model() (*modelJSON, bool) {
	if s.peek() == 'n' { // null
		raw, ok := s.skipValue()
		return nil, ok && string(raw) == "null"
	}
	m := &modelJSON{}
	ok := s.object(func(key string) bool {
		switch key {
		case "vocab":
			if s.peek() != '{' {
				return false
			}
			m.Vocab = make(map[string]int, 1<<15)
			return s.object(func(tok string) bool {
				id, ok := s.uint()
				m.Vocab[tok] = id
				return ok && utf8.ValidString(tok)
			})
		case "merges":
			return s.merges(m)
		case "type":
			return s.rawInto(&m.Type)
		case "unk_token":
			return s.rawInto(&m.UnkToken)
		case "continuing_subword_prefix":
			return s.rawInto(&m.ContinuingSubwordPrefix)
		case "end_of_word_suffix":
			return s.rawInto(&m.EndOfWordSuffix)
		case "fuse_unk":
			return s.rawInto(&m.FuseUnk)
		case "byte_fallback":
			return s.rawInto(&m.ByteFallback)
		case "ignore_merges":
			return s.rawInto(&m.IgnoreMerges)
		}
		_, ok := s.skipValue()
		return ok
	})
	return m, ok
}

// merges reads "a b" strings or [a, b] pairs into m.parsedMerges. Lines
// that are not two tokens separated by one space are left to parseMerges,
// which reports them.
func (s *jsonScanner) merges(m *modelJSON) bool {
	if s.peek() == 'n' {
		raw, ok := s.skipValue()
		return ok && string(raw) == "null"
	}
	out := make([][2]string, 0, 1<<16)
	ok := s.array(func() bool {
		switch s.peek() {
		case '"':
			line, ok := s.str()
			if !ok {
				return false
			}
			sp := -1
			for i, c := range line {
				if c == ' ' {
					if sp >= 0 {
						return false
					}
					sp = i
				}
			}
			if sp < 0 || !utf8.Valid(line) {
				return false
			}
			out = append(out, [2]string{string(line[:sp]), string(line[sp+1:])})
			return true
		case '[':
			var pair [2]string
			n := 0
			ok := s.array(func() bool {
				v, ok := s.str()
				if !ok || n >= 2 || !utf8.Valid(v) {
					return false
				}
				pair[n] = string(v)
				n++
				return true
			})
			out = append(out, pair)
			return ok && n == 2
		}
		return false
	})
	m.parsedMerges = out
	m.hasParsedMerges = true
	return ok
}
