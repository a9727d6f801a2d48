package xla

import "testing"

func TestWithDefaultFlags(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "--xla_gpu_enable_command_buffer="},
		{"--xla_gpu_cuda_data_dir=/x", "--xla_gpu_cuda_data_dir=/x --xla_gpu_enable_command_buffer="},
		// the user's own setting wins, whatever its value
		{"--xla_gpu_enable_command_buffer=FUSION --a=1", "--xla_gpu_enable_command_buffer=FUSION --a=1"},
		{"--xla_gpu_enable_command_buffer=", "--xla_gpu_enable_command_buffer="},
		// a longer flag name that starts the same is another flag
		{"--xla_gpu_enable_command_buffer_x=1", "--xla_gpu_enable_command_buffer_x=1 --xla_gpu_enable_command_buffer="},
	} {
		if got := WithDefaultFlags(tc.in); got != tc.want {
			t.Errorf("WithDefaultFlags(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
