package weights

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// llama31 is Meta-Llama-3.1-8B's config.json.
const llama31 = `{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}`

// mistral7b is Mistral-7B-v0.1's config.json.
const mistral7b = `{
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}`

// qwen25 is Qwen2.5-0.5B's config.json.
const qwen25 = `{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}`

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		json string
		want Config // Raw and RoPE.Raw are not compared
	}{
		{"llama 3.1", llama31, Config{
			ModelType: "llama", Architectures: []string{"LlamaForCausalLM"},
			HiddenSize: 4096, IntermediateSize: 14336, NumHiddenLayers: 32, NumAttentionHeads: 32,
			NumKeyValueHeads: 8, HeadDim: 128, VocabSize: 128256, MaxPositionEmbeddings: 131072,
			RMSNormEps: 1e-5, HiddenAct: "silu", BOSTokenIDs: []int{128000}, EOSTokenIDs: []int{128001, 128008, 128009},
			TorchDType: "bfloat16",
			RoPE:       RoPEConfig{Theta: 500000, Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192},
		}},
		{"mistral", mistral7b, Config{
			ModelType: "mistral", Architectures: []string{"MistralForCausalLM"},
			HiddenSize: 4096, IntermediateSize: 14336, NumHiddenLayers: 32, NumAttentionHeads: 32,
			NumKeyValueHeads: 8, HeadDim: 128, VocabSize: 32000, MaxPositionEmbeddings: 32768,
			RMSNormEps: 1e-5, HiddenAct: "silu", BOSTokenIDs: []int{1}, EOSTokenIDs: []int{2},
			SlidingWindow: 4096, TorchDType: "bfloat16", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
		{"qwen2", qwen25, Config{
			ModelType: "qwen2", Architectures: []string{"Qwen2ForCausalLM"},
			HiddenSize: 896, IntermediateSize: 4864, NumHiddenLayers: 24, NumAttentionHeads: 14,
			NumKeyValueHeads: 2, HeadDim: 64, VocabSize: 151936, MaxPositionEmbeddings: 32768,
			RMSNormEps: 1e-6, HiddenAct: "silu", TieWordEmbeddings: true, AttentionBias: true,
			BOSTokenIDs: []int{151643}, EOSTokenIDs: []int{151643}, TorchDType: "bfloat16",
			RoPE: RoPEConfig{Theta: 1e6, Type: "default"},
		}},
		{"defaults", `{"model_type": "llama", "hidden_size": 512, "num_attention_heads": 8}`, Config{
			ModelType: "llama", HiddenSize: 512, NumAttentionHeads: 8, NumKeyValueHeads: 8, HeadDim: 64,
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
		{"nulls", `{"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": null, "head_dim": null,
			"bos_token_id": null, "eos_token_id": null, "sliding_window": null, "rope_scaling": null, "rope_theta": 10000,
			"torch_dtype": null, "tie_word_embeddings": null, "architectures": null}`, Config{
			HiddenSize: 512, NumAttentionHeads: 8, NumKeyValueHeads: 8, HeadDim: 64,
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
		{"explicit head_dim", `{"hidden_size": 512, "num_attention_heads": 8, "head_dim": 128}`, Config{
			HiddenSize: 512, NumAttentionHeads: 8, NumKeyValueHeads: 8, HeadDim: 128,
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
		{"linear legacy type", `{"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}`, Config{
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "linear", Factor: 2},
		}},
		{"dynamic", `{"rope_scaling": {"rope_type": "dynamic", "factor": 4, "original_max_position_embeddings": 4096}}`, Config{
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "dynamic", Factor: 4, OriginalMaxPositionEmbeddings: 4096},
		}},
		{"yarn", `{"rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "beta_fast": 32, "beta_slow": 1, "attention_factor": 0.1}}`, Config{
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "yarn", Factor: 4,
				OriginalMaxPositionEmbeddings: 32768, BetaFast: 32, BetaSlow: 1, AttentionFactor: 0.1},
		}},
		{"rope_parameters", `{"dtype": "float32", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "rope_theta": 5}`, Config{
			RMSNormEps: 1e-6, HiddenAct: "silu", TorchDType: "float32", RoPE: RoPEConfig{Theta: 100000, Type: "default"},
		}},
		{"rope_parameters llama3", `{"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}`, Config{
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 500000, Type: "llama3", Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192},
		}},
		{"rope_parameters without theta", `{"rope_theta": 20000, "rope_parameters": {"rope_type": "default"}}`, Config{
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 20000, Type: "default"},
		}},
		{"eos list, integral floats", `{"eos_token_id": [2, 32000.0], "hidden_size": 4096.0, "torch_dtype": "float16", "dtype": null}`, Config{
			HiddenSize: 4096, EOSTokenIDs: []int{2, 32000}, TorchDType: "float16",
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
		{"qwen2 explicit attention_bias", `{"model_type": "qwen2", "attention_bias": false, "use_sliding_window": true, "sliding_window": 4096}`, Config{
			ModelType: "qwen2", SlidingWindow: 4096,
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
		{"qwen3 parses", `{"model_type": "qwen3", "head_dim": 128, "hidden_size": 2560, "num_attention_heads": 32, "attention_bias": false}`, Config{
			ModelType: "qwen3", HiddenSize: 2560, NumAttentionHeads: 32, NumKeyValueHeads: 32, HeadDim: 128,
			RMSNormEps: 1e-6, HiddenAct: "silu", RoPE: RoPEConfig{Theta: 10000, Type: "default"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Raw) == 0 && tc.json != "{}" {
				t.Error("Raw is empty")
			}
			got := *c
			got.Raw, got.RoPE.Raw = nil, nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		want       []string
	}{
		{"not json", `{"hidden_size": `, []string{"weights: config: not a json object"}},
		{"array", `[1]`, []string{"not a json object"}},
		{"null", `null`, []string{"not a json object"}},
		{"string for int", `{"hidden_size": "4096"}`, []string{`field "hidden_size": want an integer, got string "4096"`}},
		{"fraction for int", `{"num_hidden_layers": 2.5}`, []string{`field "num_hidden_layers": want an integer, got number 2.5`}},
		{"negative size", `{"intermediate_size": -1}`, []string{`field "intermediate_size": must not be negative`}},
		{"string for float", `{"rms_norm_eps": "1e-5"}`, []string{`field "rms_norm_eps": want a number, got string "1e-5"`}},
		{"int for bool", `{"tie_word_embeddings": 1}`, []string{`field "tie_word_embeddings": want true or false, got number 1`}},
		{"eos string", `{"eos_token_id": "</s>"}`, []string{`field "eos_token_id": want a token id or a list of them, got string "</s>"`}},
		{"eos list of strings", `{"eos_token_id": [1, "x"]}`, []string{`field "eos_token_id": want a list of token ids, got string "x" at index 1`}},
		{"architectures", `{"architectures": "LlamaForCausalLM"}`, []string{`field "architectures": want a list of strings`}},
		{"rope_scaling not object", `{"rope_scaling": 8}`, []string{`field "rope_scaling": want an object, got 8`}},
		{"rope factor string", `{"rope_scaling": {"rope_type": "linear", "factor": "2"}}`, []string{`field "rope_scaling.factor": want a number, got string "2"`}},
		{"rope_parameters theta", `{"rope_parameters": {"rope_theta": [1]}}`, []string{`field "rope_parameters.rope_theta": want a number, got an array`}},
		{"per-layer rope_parameters", `{"rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}}`,
			[]string{`field "rope_parameters.full_attention": nested rope parameters per attention type are not supported`}},
		{"several", `{"hidden_size": true, "model_type": 3}`, []string{`field "model_type": want a string, got number 3`, `field "hidden_size": want an integer, got boolean true`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.json))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestReadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	os.WriteFile(path, []byte(`{"hidden_size": "x"}`), 0o644)
	_, err := ReadConfig(dir)
	if err == nil || !strings.Contains(err.Error(), path+`: field "hidden_size"`) {
		t.Errorf("got %v, want an error naming %s", err, path)
	}
	os.WriteFile(path, []byte(llama31), 0o644)
	c, err := ReadConfig(path)
	if err != nil || c.VocabSize != 128256 || string(c.Raw["transformers_version"]) != `"4.43.0.dev0"` {
		t.Errorf("ReadConfig(file): %+v, %v", c, err)
	}
	if _, err := ReadConfig(filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing file: %v", err)
	}
}
