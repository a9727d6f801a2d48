package weights

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpenSafetensors writes a file made of the header's length, the header and a data section, and
// checks that OpenFile either fails or returns a checkpoint whose every tensor can be read in full.
func FuzzOpenSafetensors(f *testing.F) {
	f.Add([]byte(`{}`), uint16(0), false)
	f.Add([]byte(`{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`), uint16(8), false)
	f.Add([]byte(`{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}`), uint16(14), false)
	f.Add([]byte(`{"a":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},"c":{"dtype":"BOOL","shape":[0],"data_offsets":[16,16]}}`), uint16(16), false)
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`), uint16(12), false)
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`), uint16(8), false)
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[9223372036854775807],"data_offsets":[0,4]}}`), uint16(4), false)
	f.Add([]byte(`{"a":`), uint16(0), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{', '}'}, uint16(3), true)
	f.Fuzz(func(t *testing.T, header []byte, dataLen uint16, rawPrefix bool) {
		// rawPrefix: the first 8 bytes are the header length as is, so lengths need not be consistent.
		var file []byte
		if rawPrefix {
			file = append(file, header...)
		} else {
			file = binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
			file = append(file, header...)
		}
		data := make([]byte, dataLen)
		for i := range data {
			data[i] = byte(i * 37)
		}
		file = append(file, data...)
		path := filepath.Join(t.TempDir(), "f.safetensors")
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := OpenFile(path)
		if err != nil {
			return
		}
		defer c.Close()
		for _, name := range c.Names() {
			raw, info, err := c.Raw(name)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) != info.NumBytes() {
				t.Fatalf("%s: %d bytes, want %d", name, len(raw), info.NumBytes())
			}
			var sum byte // touch every byte
			for _, b := range raw {
				sum += b
			}
			_ = sum
			if info.DType.IsFloat() {
				f32, err := c.Float32(name)
				if err != nil || len(f32) != info.NumElements() {
					t.Fatalf("%s: Float32: %d elements, %v", name, len(f32), err)
				}
				b16, err := c.BFloat16(name)
				if err != nil || len(b16) != info.NumElements() {
					t.Fatalf("%s: BFloat16: %d elements, %v", name, len(b16), err)
				}
			}
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		llama31, mistral7b, qwen25, `{}`, `null`, `[]`, `{"head_dim": null}`,
		`{"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4}}`,
		`{"rope_parameters": {"full_attention": {}}}`,
		`{"eos_token_id": [1, 2.0, 3e0], "num_attention_heads": 0, "hidden_size": 7}`,
		`{"hidden_size": 1e400}`, `{"vocab_size": -9223372036854775808}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err == nil && c == nil {
			t.Fatal("nil config without error")
		}
	})
}
