package xla

import "testing"

func TestWithDefaultFlags(t *testing.T) {
	const cb = "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN"
	const min1 = "--xla_gpu_graph_min_graph_size=1"
	for _, tc := range []struct{ in, want string }{
		{"", cb + " " + min1},
		{"--xla_gpu_cuda_data_dir=/x", "--xla_gpu_cuda_data_dir=/x " + cb + " " + min1},
		// the user's own setting wins, whatever its value
		{"--xla_gpu_enable_command_buffer=FUSION --a=1", "--xla_gpu_enable_command_buffer=FUSION --a=1 " + min1},
		{"--xla_gpu_enable_command_buffer= --xla_gpu_graph_min_graph_size=5", "--xla_gpu_enable_command_buffer= --xla_gpu_graph_min_graph_size=5"},
		// a longer flag name that starts the same is another flag
		{"--xla_gpu_enable_command_buffer_x=1", "--xla_gpu_enable_command_buffer_x=1 " + cb + " " + min1},
	} {
		if got := WithDefaultFlags(tc.in); got != tc.want {
			t.Errorf("WithDefaultFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestCompileOverrides: only computations named with GraphMarker may form command buffers.
func TestCompileOverrides(t *testing.T) {
	for _, tc := range []struct {
		name   string
		graphs bool
	}{{"step_cudagraph#0", true}, {"prefill_device_token_cudagraph#3", true}, {"step#0", false}, {"prefill#1", false}, {"cluster/82/0/82/10#0", false}} {
		o := compileOverrides(tc.name)
		if got := o == nil; got != tc.graphs {
			t.Errorf("%s: graphs %v, want %v (overrides %v)", tc.name, got, tc.graphs, o)
		}
		if !tc.graphs && o["xla_gpu_graph_min_graph_size"] != int64(1<<30) {
			t.Errorf("%s: overrides %v", tc.name, o)
		}
	}
}

// TestPluginOptions: SQLLM_XLA_OPTIONS' options follow the defaults (go-xla keeps the last value of an option), with
// stray commas and spaces dropped.
func TestPluginOptions(t *testing.T) {
	const def = ",tf32=false,preallocate=false"
	for _, tc := range []struct{ in, want string }{
		{"", def},
		{"  ", def},
		{"memory_fraction=0.9", def + ",memory_fraction=0.9"},
		{",memory_fraction=0.9,allocator=cuda_async, ", def + ",memory_fraction=0.9,allocator=cuda_async"},
		{"preallocate=true", def + ",preallocate=true"},
	} {
		if got := pluginOptions(tc.in); got != tc.want {
			t.Errorf("pluginOptions(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
