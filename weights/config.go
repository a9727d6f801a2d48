package weights

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/squeezeai/sqllm/internal/limitread"
)

// ConfigFileName is the name of a Hugging Face model configuration.
const ConfigFileName = "config.json"

// MaxConfigSize is the largest config.json accepted (real ones are a few kilobytes).
const MaxConfigSize = 16 << 20

// Config is a Hugging Face config.json of the LLaMA family (llama, mistral, qwen2, ...) as written, with
// transformers' defaults filled in for absent fields. It decides nothing about support: the llama package
// validates it and builds its typed Config. Zero means absent where no default is noted.
type Config struct {
	ModelType     string   // "model_type"
	Architectures []string // e.g. ["LlamaForCausalLM"]

	HiddenSize            int
	IntermediateSize      int
	NumHiddenLayers       int
	NumAttentionHeads     int
	NumKeyValueHeads      int // defaults to NumAttentionHeads (no GQA)
	HeadDim               int // defaults to HiddenSize / NumAttentionHeads when absent or null
	VocabSize             int
	MaxPositionEmbeddings int

	RMSNormEps float64 // defaults to 1e-6, transformers' default for llama, mistral and qwen2
	HiddenAct  string  // defaults to "silu"

	// TieWordEmbeddings defaults to false, the default of transformers' LlamaConfig (and MistralConfig,
	// Qwen2Config): a checkpoint with tied embeddings says so.
	TieWordEmbeddings bool

	// AttentionBias defaults to false, except for model_type "qwen2", whose attention always has q/k/v
	// biases (transformers' Qwen2Config has no attention_bias field; its o_proj has no bias, unlike
	// llama's attention_bias, which covers o_proj too). An explicit attention_bias is recorded as written.
	AttentionBias bool
	MLPBias       bool

	BOSTokenIDs []int // bos_token_id: an int, a list, or null (nil)
	EOSTokenIDs []int // eos_token_id: an int, a list, or null (nil)

	// SlidingWindow is 0 when null or absent, and, as in transformers' Qwen2Config, when
	// "use_sliding_window" is false (qwen2 configs carry a window size they do not use).
	SlidingWindow int

	TorchDType string // "dtype" (transformers 5) or "torch_dtype", e.g. "bfloat16"

	RoPE RoPEConfig

	Raw map[string]json.RawMessage // every field of the file, for diagnostics and extensions
}

// RoPEConfig is the rotary embedding's settings, from transformers 5's "rope_parameters" or the classic
// top-level "rope_theta" and "rope_scaling".
type RoPEConfig struct {
	Theta float64 // defaults to 10000
	Type  string  // "rope_type" or legacy "type": default, linear, dynamic, llama3, yarn, ...; defaults to "default"

	Factor                        float64 // "factor", 0 when absent
	LowFreqFactor                 float64 // llama3 "low_freq_factor"
	HighFreqFactor                float64 // llama3 "high_freq_factor"
	OriginalMaxPositionEmbeddings int     // llama3, yarn, dynamic "original_max_position_embeddings"
	AttentionFactor               float64 // yarn "attention_factor"
	BetaFast, BetaSlow            float64 // yarn "beta_fast", "beta_slow"

	Raw map[string]json.RawMessage // the rope_parameters or rope_scaling object; nil when neither is set
}

// ReadConfig reads config.json from a model directory, or the named file.
func ReadConfig(pathOrDir string) (*Config, error) {
	path := pathOrDir
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, ConfigFileName)
	}
	data, err := limitread.File(path, MaxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	c, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("weights: %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses the contents of a config.json.
func ParseConfig(data []byte) (*Config, error) {
	c, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("weights: config: %w", err)
	}
	return c, nil
}

func parseConfig(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil || raw == nil {
		if err == nil {
			err = errors.New("null")
		}
		return nil, fmt.Errorf("not a json object: %w", err)
	}
	r := &fieldReader{m: raw}
	c := &Config{Raw: raw}

	c.ModelType, _ = r.string("model_type")
	c.Architectures = r.strings("architectures")

	c.HiddenSize, _ = r.count("hidden_size")
	c.IntermediateSize, _ = r.count("intermediate_size")
	c.NumHiddenLayers, _ = r.count("num_hidden_layers")
	c.NumAttentionHeads, _ = r.count("num_attention_heads")
	var ok bool
	if c.NumKeyValueHeads, ok = r.count("num_key_value_heads"); !ok {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if c.HeadDim, ok = r.count("head_dim"); !ok && c.NumAttentionHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	c.VocabSize, _ = r.count("vocab_size")
	c.MaxPositionEmbeddings, _ = r.count("max_position_embeddings")

	if c.RMSNormEps, ok = r.float("rms_norm_eps"); !ok {
		c.RMSNormEps = 1e-6
	}
	if c.HiddenAct, ok = r.string("hidden_act"); !ok {
		c.HiddenAct = "silu"
	}
	c.TieWordEmbeddings, _ = r.bool("tie_word_embeddings")
	if c.AttentionBias, ok = r.bool("attention_bias"); !ok {
		c.AttentionBias = c.ModelType == "qwen2"
	}
	c.MLPBias, _ = r.bool("mlp_bias")

	c.BOSTokenIDs = r.tokenIDs("bos_token_id")
	c.EOSTokenIDs = r.tokenIDs("eos_token_id")

	c.SlidingWindow, _ = r.count("sliding_window")
	if use, ok := r.bool("use_sliding_window"); ok && !use {
		c.SlidingWindow = 0
	}

	if c.TorchDType, ok = r.string("dtype"); !ok {
		c.TorchDType, _ = r.string("torch_dtype")
	}

	c.RoPE = r.rope()
	if err := r.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// rope reads rope_parameters (transformers 5), else rope_theta and rope_scaling.
func (r *fieldReader) rope() RoPEConfig {
	rc := RoPEConfig{Theta: 10000, Type: "default"}
	if theta, ok := r.float("rope_theta"); ok {
		rc.Theta = theta
	}
	params, key := r.object("rope_parameters"), "rope_parameters"
	if params == nil {
		params, key = r.object("rope_scaling"), "rope_scaling"
	}
	if params == nil {
		return rc
	}
	rc.Raw = params
	p := &fieldReader{m: params, prefix: key + ".", errs: r.errs}
	defer func() { r.errs = p.errs }()

	_, hasType := params["rope_type"]
	_, hasLegacyType := params["type"]
	_, hasTheta := params["rope_theta"]
	if !hasType && !hasLegacyType && !hasTheta {
		for _, k := range slices.Sorted(maps.Keys(params)) {
			if bytes.HasPrefix(bytes.TrimSpace(params[k]), []byte("{")) {
				p.fail(k, "nested rope parameters per attention type are not supported")
				return rc
			}
		}
	}
	if theta, ok := p.float("rope_theta"); ok {
		rc.Theta = theta
	}
	if t, ok := p.string("rope_type"); ok && t != "" {
		rc.Type = t
	} else if t, ok := p.string("type"); ok && t != "" {
		rc.Type = t
	}
	rc.Factor, _ = p.float("factor")
	rc.LowFreqFactor, _ = p.float("low_freq_factor")
	rc.HighFreqFactor, _ = p.float("high_freq_factor")
	rc.OriginalMaxPositionEmbeddings, _ = p.count("original_max_position_embeddings")
	rc.AttentionFactor, _ = p.float("attention_factor")
	rc.BetaFast, _ = p.float("beta_fast")
	rc.BetaSlow, _ = p.float("beta_slow")
	return rc
}

// fieldReader reads typed fields from a JSON object, collecting an error for each field of the wrong type.
type fieldReader struct {
	m      map[string]json.RawMessage
	prefix string // for nested objects: "rope_scaling."
	errs   []error
}

func (r *fieldReader) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	msgs := make([]string, len(r.errs))
	for i, e := range r.errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

func (r *fieldReader) fail(key, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("field %q: %s", r.prefix+key, fmt.Sprintf(format, args...)))
}

// value decodes the field; ok is false when it is absent or null.
func (r *fieldReader) value(key string) (v any, ok bool) {
	raw, present := r.m[key]
	if !present {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil { // cannot happen: raw came from a valid document
		r.fail(key, "%v", err)
		return nil, false
	}
	return v, v != nil
}

func describe(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			return "a string"
		}
		return "string " + strconv.Quote(v)
	case json.Number:
		return "number " + v.String()
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func (r *fieldReader) string(key string) (string, bool) {
	v, ok := r.value(key)
	if !ok {
		return "", false
	}
	s, isString := v.(string)
	if !isString {
		r.fail(key, "want a string, got %s", describe(v))
		return "", false
	}
	return s, true
}

func (r *fieldReader) strings(key string) []string {
	v, ok := r.value(key)
	if !ok {
		return nil
	}
	list, isList := v.([]any)
	if !isList {
		r.fail(key, "want a list of strings, got %s", describe(v))
		return nil
	}
	out := make([]string, len(list))
	for i, e := range list {
		s, isString := e.(string)
		if !isString {
			r.fail(key, "want a list of strings, got %s at index %d", describe(e), i)
			return nil
		}
		out[i] = s
	}
	return out
}

func (r *fieldReader) float(key string) (float64, bool) {
	v, ok := r.value(key)
	if !ok {
		return 0, false
	}
	n, isNumber := v.(json.Number)
	if !isNumber {
		r.fail(key, "want a number, got %s", describe(v))
		return 0, false
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil {
		r.fail(key, "number %s out of range", n)
		return 0, false
	}
	return f, true
}

// asInt converts a JSON number with an integral value (4096 or 4096.0) to int.
func asInt(v any) (int, bool) {
	n, isNumber := v.(json.Number)
	if !isNumber {
		return 0, false
	}
	if i, err := strconv.ParseInt(string(n), 10, 0); err == nil {
		return int(i), true
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, false
	}
	return int(f), true
}

func (r *fieldReader) int(key string) (int, bool) {
	v, ok := r.value(key)
	if !ok {
		return 0, false
	}
	i, isInt := asInt(v)
	if !isInt {
		r.fail(key, "want an integer, got %s", describe(v))
		return 0, false
	}
	return i, true
}

// count is int for sizes, which must not be negative.
func (r *fieldReader) count(key string) (int, bool) {
	i, ok := r.int(key)
	if ok && i < 0 {
		r.fail(key, "must not be negative, got %d", i)
		return 0, false
	}
	return i, ok
}

func (r *fieldReader) bool(key string) (bool, bool) {
	v, ok := r.value(key)
	if !ok {
		return false, false
	}
	b, isBool := v.(bool)
	if !isBool {
		r.fail(key, "want true or false, got %s", describe(v))
		return false, false
	}
	return b, true
}

// tokenIDs reads an int, a list of ints, or null.
func (r *fieldReader) tokenIDs(key string) []int {
	v, ok := r.value(key)
	if !ok {
		return nil
	}
	if i, isInt := asInt(v); isInt {
		return []int{i}
	}
	list, isList := v.([]any)
	if !isList {
		r.fail(key, "want a token id or a list of them, got %s", describe(v))
		return nil
	}
	ids := make([]int, len(list))
	for j, e := range list {
		i, isInt := asInt(e)
		if !isInt {
			r.fail(key, "want a list of token ids, got %s at index %d", describe(e), j)
			return nil
		}
		ids[j] = i
	}
	return ids
}

// object reads a JSON object field; nil when absent or null.
func (r *fieldReader) object(key string) map[string]json.RawMessage {
	raw, present := r.m[key]
	if !present {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		r.fail(key, "want an object, got %s", abbreviate(raw))
		return nil
	}
	return m
}
