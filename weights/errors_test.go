package weights

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawFile writes a safetensors file made of a header length, a header and data, and returns its path.
func rawFile(t testing.TB, dir, name string, headerLen uint64, header string, data []byte) string {
	t.Helper()
	b := binary.LittleEndian.AppendUint64(nil, headerLen)
	b = append(append(b, header...), data...)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func wantError(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	if msg := strings.TrimPrefix(err.Error(), "weights: "); msg == err.Error() {
		t.Errorf("error %q lacks the weights: prefix", err)
	}
}

func TestOpenFileErrors(t *testing.T) {
	data16 := make([]byte, 16)
	for _, tc := range []struct {
		name      string
		headerLen int64 // -1: len(header)
		header    string
		data      []byte
		want      []string
	}{
		{"header length larger than file", 1000, `{}`, nil, []string{"header length 1000 larger than the file allows (size 10)"}},
		{"header length over limit", 200_000_000, `{}`, nil, []string{"header length 200000000 exceeds the limit"}},
		{"header length too small", 1, `{}`, nil, []string{"header length 1 is too small"}},
		{"bad json", -1, `{"a": {"dtype": `, nil, []string{"header is not valid json"}},
		{"trailing garbage", -1, `{} x`, nil, []string{"header is not valid json"}},
		{"not an object", -1, `[1, 2]`, nil, []string{"header is not valid json", "want an object"}},
		{"invalid utf-8", -1, "{\"\xff\": 1}", nil, []string{"not valid utf-8"}},
		{"duplicate tensor", -1, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, data16, []string{`duplicate key "a"`}},
		{"entry not an object", -1, `{"a": 3}`, nil, []string{`tensor "a"`, "not a json object"}},
		{"missing dtype", -1, `{"a":{"shape":[1],"data_offsets":[0,4]}}`, data16, []string{`tensor "a": missing dtype`}},
		{"missing shape", -1, `{"a":{"dtype":"F32","data_offsets":[0,4]}}`, data16, []string{`tensor "a": missing shape`}},
		{"null shape", -1, `{"a":{"dtype":"F32","shape":null,"data_offsets":[0,4]}}`, data16, []string{`tensor "a": bad shape null`}},
		{"missing offsets", -1, `{"a":{"dtype":"F32","shape":[1]}}`, data16, []string{`tensor "a": missing data_offsets`}},
		{"unknown dtype", -1, `{"a":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,4]}}`, data16, []string{`unsupported dtype "Q4_K"`}},
		{"dtype not a string", -1, `{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, data16, []string{`tensor "a": bad dtype 4`}},
		{"negative dim", -1, `{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, data16, []string{"bad dimension -1"}},
		{"fractional dim", -1, `{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, data16, []string{`tensor "a": bad shape [1.5]`}},
		{"huge shape", -1, `{"a":{"dtype":"F32","shape":[1000000000,1000000000,1000000000],"data_offsets":[0,4]}}`, data16, []string{"too large"}},
		{"three offsets", -1, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, data16, []string{"must be [begin, end]"}},
		{"reversed offsets", -1, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}`, data16, []string{"bad data_offsets [8, 4]"}},
		{"negative offset", -1, `{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, data16, []string{"bad data_offsets [-4, 0]"}},
		{"offsets out of range", -1, `{"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}`, data16, []string{`tensor "a": data [`, "beyond end of file"}},
		{"size mismatch", -1, `{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}`, data16, []string{`tensor "a": shape [3] of F32 needs 12 bytes, but data_offsets [0, 16) hold 16`}},
		{"overlap", -1, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}`, data16, []string{`tensors "a" [0, 8) and "b" [4, 12) overlap`}},
		{"same offsets", -1, `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, data16, []string{"overlap"}},
		{"metadata not strings", -1, `{"__metadata__":{"n":1}}`, nil, []string{"__metadata__ is not an object of strings"}},
		{"empty name", -1, `{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, data16, []string{"empty tensor name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := uint64(tc.headerLen)
			if tc.headerLen < 0 {
				n = uint64(len(tc.header))
			}
			path := rawFile(t, t.TempDir(), "x.safetensors", n, tc.header, tc.data)
			c, err := OpenFile(path)
			if err == nil {
				c.Close()
			}
			wantError(t, err, append(tc.want, path)...)
		})
	}
}

func TestOpenFileEdgeCases(t *testing.T) {
	dir := t.TempDir()
	// Tolerated: padding, unknown entry fields, gaps, trailing bytes, empty tensors sharing an offset.
	header := `{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8],"extra":true},` +
		`"e1":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]},"e2":{"dtype":"F32","shape":[3,0],"data_offsets":[4,4]}}    `
	c, err := OpenFile(rawFile(t, dir, "ok.safetensors", uint64(len(header)), header, make([]byte, 12)))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Names(); len(got) != 3 {
		t.Errorf("names %v", got)
	}
	c.Close()

	// Empty header: a valid checkpoint without tensors.
	c, err = OpenFile(rawFile(t, dir, "empty.safetensors", 2, "{}", nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Names()) != 0 {
		t.Error("tensors in an empty file")
	}
	c.Close()

	// Too short, a directory, missing.
	short := filepath.Join(dir, "short.safetensors")
	os.WriteFile(short, []byte{1, 2, 3}, 0o644)
	_, err = OpenFile(short)
	wantError(t, err, short, "file too short")
	_, err = OpenFile(dir)
	wantError(t, err, "not a regular file")
	_, err = OpenFile(filepath.Join(dir, "missing.safetensors"))
	wantError(t, err, "missing.safetensors")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v is not ErrNotExist", err)
	}
}

func TestTruncatedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	if err := Write(path, []WriteTensor{
		{Name: "a", DType: F32, Shape: []int{4}, Data: make([]byte, 16)},
		{Name: "model.layers.3.mlp.up_proj.weight", DType: BF16, Shape: []int{2, 8}, Data: make([]byte, 32)},
	}, nil); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if err := os.Truncate(path, st.Size()-10); err != nil {
		t.Fatal(err)
	}
	_, err := OpenFile(path)
	wantError(t, err, path, `tensor "model.layers.3.mlp.up_proj.weight": data [`, "beyond end of file (size")
}

// shardedDir writes two shards and an index with the given weight_map JSON, and returns the directory.
func shardedDir(t *testing.T, weightMap string) string {
	t.Helper()
	dir := t.TempDir()
	for _, s := range []struct{ file, tensor string }{
		{"model-00001-of-00002.safetensors", "a"},
		{"model-00002-of-00002.safetensors", "b"},
	} {
		if err := Write(filepath.Join(dir, s.file), []WriteTensor{
			{Name: s.tensor, DType: F32, Shape: []int{2}, Data: make([]byte, 8)},
			{Name: s.tensor + ".extra", DType: F32, Shape: []int{1}, Data: make([]byte, 4)},
		}, nil); err != nil {
			t.Fatal(err)
		}
	}
	index := `{"metadata": {"total_size": 16}, "weight_map": ` + weightMap + `}`
	if err := os.WriteFile(filepath.Join(dir, IndexFileName), []byte(index), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestShardedErrors(t *testing.T) {
	good := `{"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}`
	c, err := OpenDir(shardedDir(t, good))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Names(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("names %v: want the index's tensors only", got)
	}
	c.Close()

	for _, tc := range []struct {
		name, weightMap string
		want            []string
	}{
		{"parent", `{"a": "../x.safetensors"}`, []string{`shard "../x.safetensors"`, "index file points outside the directory"}},
		{"absolute", `{"a": "/abs/x.safetensors"}`, []string{`"/abs/x.safetensors"`, "index file points outside the directory"}},
		{"subdirectory", `{"a": "sub/x.safetensors"}`, []string{"index file points outside the directory"}},
		{"backslash", `{"a": "..\\x.safetensors"}`, []string{"index file points outside the directory"}},
		{"dotdot", `{"a": ".."}`, []string{"index file points outside the directory"}},
		{"empty shard name", `{"a": ""}`, []string{"index file points outside the directory"}},
		{"missing shard", `{"a": "model-00001-of-00002.safetensors", "b": "model-00003-of-00003.safetensors"}`,
			[]string{IndexFileName, `shard "model-00003-of-00003.safetensors" (holding tensor "b") does not exist`}},
		{"tensor not in shard", `{"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}`,
			[]string{"model-00001-of-00002.safetensors", `tensor "b" listed in model.safetensors.index.json is not in this file`}},
		{"shard not a string", `{"a": 1}`, []string{`tensor "a": shard 1 is not a string`}},
		{"empty weight_map", `{}`, []string{"weight_map is empty"}},
		{"weight_map not an object", `[]`, []string{"bad weight_map"}},
		{"duplicate tensor", `{"a": "model-00001-of-00002.safetensors", "a": "model-00001-of-00002.safetensors"}`, []string{`duplicate key "a"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenDir(shardedDir(t, tc.weightMap))
			wantError(t, err, tc.want...)
		})
	}

	t.Run("no weight_map", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"metadata": {}}`), 0o644)
		_, err := OpenDir(dir)
		wantError(t, err, "index file has no weight_map")
	})

	t.Run("truncated shard", func(t *testing.T) {
		dir := shardedDir(t, good)
		shard := filepath.Join(dir, "model-00002-of-00002.safetensors")
		st, _ := os.Stat(shard)
		os.Truncate(shard, st.Size()-2)
		_, err := OpenDir(dir)
		wantError(t, err, shard, `tensor "b.extra"`, "beyond end of file")
	})
}

func TestOpenDirChoices(t *testing.T) {
	dir := t.TempDir()
	_, err := OpenDir(dir)
	wantError(t, err, "no model.safetensors.index.json, model.safetensors or other *.safetensors file")

	one := []WriteTensor{{Name: "x", DType: F32, Shape: []int{1}, Data: make([]byte, 4)}}
	Write(filepath.Join(dir, "weights.safetensors"), one, nil)
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	Write(filepath.Join(dir, "other.safetensors"), one, nil)
	_, err = OpenDir(dir)
	wantError(t, err, "several safetensors files (other.safetensors, weights.safetensors)")

	// model.safetensors wins over the others.
	Write(filepath.Join(dir, "model.safetensors"), append(one, WriteTensor{Name: "y", DType: F32, Data: make([]byte, 4)}), nil)
	c, err = OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Names()) != 2 {
		t.Errorf("opened %v, want model.safetensors", c.Files())
	}
	c.Close()

	_, err = OpenDir(filepath.Join(dir, "model.safetensors"))
	wantError(t, err, "not a directory")
}

func TestCheckShapes(t *testing.T) {
	c, err := OpenDir(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	expected := tinyModelShapes()
	delete(expected, "model.layers.7.mlp.up_proj.weight")                   // so the checkpoint has an unexpected tensor
	expected["lm_head.weight"] = []int{8192, 384}                           // missing
	expected["model.layers.0.self_attn.q_proj.weight"] = []int{384, 512}    // mis-shaped
	expected["model.layers.0.self_attn.k_proj.weight"] = []int{1, 128, 384} // mis-shaped rank
	err = c.CheckShapes(expected, nil)
	want := "weights: checkpoint does not match the model: missing lm_head.weight; " +
		"unexpected model.layers.7.mlp.up_proj.weight; " +
		"model.layers.0.self_attn.k_proj.weight has shape [128 384], want [1 128 384]; " +
		"model.layers.0.self_attn.q_proj.weight has shape [384 384], want [384 512]"
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
	var me *MismatchError
	if !errors.As(err, &me) || len(me.Missing) != 1 || len(me.Unexpected) != 1 || len(me.Misshaped) != 2 {
		t.Errorf("MismatchError %+v", me)
	}

	// ignore tolerates extras, never missing tensors.
	delete(expected, "lm_head.weight")
	expected["model.layers.0.self_attn.q_proj.weight"] = []int{384, 384}
	expected["model.layers.0.self_attn.k_proj.weight"] = []int{128, 384}
	if err := c.CheckShapes(expected, func(name string) bool { return strings.HasSuffix(name, "up_proj.weight") }); err != nil {
		t.Errorf("with ignore: %v", err)
	}

	// Long lists are cut at ten entries.
	err = c.CheckShapes(map[string][]int{}, nil)
	if err == nil || !strings.HasSuffix(err.Error(), " and 64 more") || strings.Count(err.Error(), ", ") != 9 {
		t.Errorf("long list: %v", err)
	}
}
