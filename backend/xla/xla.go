// Package xla chooses and configures the compute backend: XLA through a PJRT CUDA plugin when one is
// installed (as the jax CUDA wheels ship it) or named by the user, otherwise GoMLX's pure-Go CPU
// backend. Nothing is ever downloaded: the go-xla auto-installer is deliberately not linked in.
package xla

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/gomlx/compute"
	"github.com/gomlx/compute/gobackend"
	goxla "github.com/gomlx/go-xla/compute/xla"
	"github.com/gomlx/go-xla/pjrt"
)

// Kind is which backend to use.
type Kind string

const (
	Auto Kind = "auto" // the CUDA plugin if found and working, else the pure-Go backend
	Go   Kind = "go"   // GoMLX's pure-Go CPU backend
	XLA  Kind = "xla"  // XLA through a PJRT plugin (CUDA); an error when none is found
)

// ParseKind validates a -backend flag value.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(strings.ToLower(s)); k {
	case Auto, Go, XLA:
		return k, nil
	case "":
		return Auto, nil
	}
	return "", fmt.Errorf("unknown backend %q (want auto, go or xla)", s)
}

// PluginEnv is the environment variable naming a PJRT plugin .so explicitly.
const PluginEnv = "PJRT_CUDA_PLUGIN"

// Options select the backend.
type Options struct {
	Kind Kind
	// PluginPath is an explicit PJRT plugin (.so). Empty: $PJRT_CUDA_PLUGIN, an xla:/abs/path in
	// $GOMLX_BACKEND, then an installed jax CUDA plugin.
	PluginPath string
}

// Backend is an opened backend with a description of what was chosen.
type Backend struct {
	compute.Backend
	Kind   Kind   // Go or XLA
	Plugin string // the plugin path for XLA
	// Note explains a fallback (e.g. why the CUDA plugin was not used); empty when none.
	Note string
}

// Describe is a one-line description for reports: backend and device.
func (b *Backend) Describe() string {
	d := b.Backend.DeviceDescription(0)
	if b.Kind == Go {
		s := "go (pure-Go CPU backend, " + d + ")"
		if !SIMDEnabled() {
			s += "; built without GOEXPERIMENT=simd, so matrix products run without AVX2 kernels (about 5x slower)"
		}
		return s
	}
	return fmt.Sprintf("xla (%s, %s)", filepath.Base(b.Plugin), d)
}

// New opens the backend the options ask for.
func New(opts Options) (*Backend, error) {
	kind := opts.Kind
	if kind == "" {
		kind = Auto
	}
	if kind == Go {
		return newGo("")
	}
	plugin, where := FindPlugin(opts.PluginPath)
	if plugin == "" {
		if kind == XLA {
			return nil, fmt.Errorf("backend xla: no PJRT CUDA plugin found (%s); install jax[cuda13] or pass its xla_cuda_plugin.so path", where)
		}
		return newGo("")
	}
	b, err := newXLA(plugin)
	if err != nil {
		if kind == XLA {
			return nil, err
		}
		return newGo(fmt.Sprintf("CUDA plugin %s not usable (%v); using the pure-Go backend", plugin, err))
	}
	return b, nil
}

// GoConfig is the pure-Go backend's configuration. Ops run one at a time (each matrix product still uses
// every core): with several products in flight, compute v0.1.6's worker pool can lose a wake-up and
// deadlock (seen with the eight independent per-layer k-means of a squeeze index).
const GoConfig = "ops_sequential"

// NewGo returns a new pure-Go backend configured as this engine uses it.
func NewGo() (compute.Backend, error) { return gobackend.New(GoConfig) }

func newGo(note string) (*Backend, error) {
	b, err := NewGo()
	if err != nil {
		return nil, fmt.Errorf("backend go: %w", err)
	}
	return &Backend{Backend: b, Kind: Go, Note: note}, nil
}

func newXLA(plugin string) (b *Backend, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("backend xla: loading %s: %v", plugin, p)
		}
	}()
	goxla.EnableAutoInstall(false)
	setCUDADataDir(plugin)
	_ = os.Setenv("XLA_FLAGS", WithDefaultFlags(os.Getenv("XLA_FLAGS")))
	// go-xla warns when the NVIDIA libraries are not in a folder beside the plugin; this package points the
	// loader at them itself (LibraryPathEnv), so the check only adds noise.
	if os.Getenv("GOPJRT_CUDA_CHECKS") == "" {
		_ = os.Setenv("GOPJRT_CUDA_CHECKS", "0")
	}
	// Executions return once enqueued (go-xla patched, third_party/go-xla/PATCHES.md), so the next step can
	// be enqueued while one runs (llama.Sequence.DecodeGreedy). SQLLM_SYNC_EXECUTE=1 waits for each.
	pjrt.SetAsyncExecution(os.Getenv("SQLLM_SYNC_EXECUTE") == "")
	goxla.CompileOptionOverrides = compileOverrides
	// TF32 off: a user who asks for float32 gets float32 products (bf16 is the fast path).
	extra := os.Getenv("SQLLM_XLA_OPTIONS")
	xb, err := goxla.New(plugin + pluginOptions(extra))
	if err != nil {
		if extra != "" {
			return nil, fmt.Errorf("backend xla: loading %s with SQLLM_XLA_OPTIONS=%q: %w", plugin, extra, err)
		}
		return nil, fmt.Errorf("backend xla: loading %s: %w", plugin, err)
	}
	if xb.NumDevices() == 0 {
		xb.Finalize()
		return nil, errors.New("backend xla: the plugin sees no device")
	}
	return &Backend{Backend: xb, Kind: XLA, Plugin: plugin}, nil
}

// pluginOptions are the options given to go-xla after the plugin's path: TF32 off and no preallocation, then
// extra, a comma-separated list of go-xla's backend options (SQLLM_XLA_OPTIONS), which override them; for
// example "memory_fraction=0.9": without preallocation XLA's GPU allocator still stops at that fraction of the
// card's memory (0.75 by default; LLaMA-2-7B's prefill at 130,000 tokens ran out of memory where the fraction says,
// at 0.75 and at 0.92, while it wrote every layer's KV cache in one executable: BENCHMARKS.md session 11; written a
// layer at a time since session 12, it runs at the default). An option go-xla does not know fails the backend's
// creation with its name.
func pluginOptions(extra string) string {
	opts := ",tf32=false,preallocate=false"
	if extra = strings.Trim(strings.TrimSpace(extra), ","); extra != "" {
		opts += "," + extra
	}
	return opts
}

// FindPlugin looks for a PJRT CUDA plugin: the explicit path, $PJRT_CUDA_PLUGIN, GOMLX_BACKEND=xla:/abs,
// then jax's CUDA plugin in the Python environments it can see. It returns "" and where it looked
// when there is none.
func FindPlugin(explicit string) (path, searched string) {
	if explicit != "" {
		return explicit, explicit
	}
	if p := os.Getenv(PluginEnv); p != "" {
		return p, "$" + PluginEnv
	}
	if cfg := os.Getenv("GOMLX_BACKEND"); strings.HasPrefix(cfg, "xla:") {
		p, _, _ := strings.Cut(strings.TrimPrefix(cfg, "xla:"), ",")
		if filepath.IsAbs(p) {
			return p, "$GOMLX_BACKEND"
		}
	}
	var dirs []string
	for _, env := range []string{"VIRTUAL_ENV", "CONDA_PREFIX"} {
		if v := os.Getenv(env); v != "" {
			dirs = append(dirs, globSite(v)...)
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, globSite(filepath.Join(home, ".local"))...)
		dirs = append(dirs, globSite(filepath.Join(home, ".pyenv", "versions", "*"))...)
	}
	dirs = append(dirs, globSite("/usr/local")...)
	dirs = append(dirs, globSite("/usr")...)
	dirs = append(dirs, globSite("/opt/conda")...)
	dirs = append(dirs, pythonSiteDirs()...)
	for _, d := range dirs {
		for _, sub := range []string{"xla_cuda13", "xla_cuda12"} {
			p := filepath.Join(d, "jax_plugins", sub, "xla_cuda_plugin.so")
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				if rp, err := filepath.EvalSymlinks(p); err == nil {
					p = rp
				}
				return p, "jax CUDA plugin"
			}
		}
	}
	return "", "no explicit path, no $" + PluginEnv + ", no jax_plugins/xla_cuda13 in site-packages"
}

func globSite(prefix string) []string {
	var out []string
	for _, pat := range []string{"lib/python3*/site-packages", "lib/python3*/dist-packages", "lib/python3/dist-packages"} {
		m, _ := filepath.Glob(filepath.Join(prefix, pat))
		out = append(out, m...)
	}
	return out
}

// pythonSiteDirs asks the python3 on PATH for its site-packages (no network involved).
func pythonSiteDirs() []string {
	py, err := exec.LookPath("python3")
	if err != nil {
		return nil
	}
	out, err := exec.Command(py, "-c", "import site,sys; print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))").Output()
	if err != nil {
		return nil
	}
	var dirs []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(dirs, l) {
			dirs = append(dirs, l)
		}
	}
	return dirs
}

// sitePackages is the site-packages folder holding a plugin at site/jax_plugins/NAME/xla_cuda_plugin.so.
func sitePackages(plugin string) string {
	return filepath.Dir(filepath.Dir(filepath.Dir(plugin)))
}

// DefaultFlags are the XLA flags this engine runs with unless XLA_FLAGS sets them otherwise.
//
// Command buffers (CUDA graphs) for fusions, cuBLAS, custom calls and cuDNN, from one command up; which
// executables form them is chosen per computation (compileOverrides): only those named with GraphMarker.
// A step's kernels are then launched as one graph instead of one by one; its buffers change on every
// call, so XLA updates the graph each time, which costs less than the launches for small steps and more
// for large ones. On an H100 (2026-11-26, LLaMA-2-7B shape, bf16, 32K fixed context; scripts/gpu/
// cmdbuf_squeeze.sh), with graphs for every executable: a squeezed decode step (~1,700 kernels, host-bound)
// 17.8 → 9.4 ms, the 8K+64 memory-hit TTFT 10.7 → 9.9 ms, a dense decode step unchanged (11.8 / 11.7),
// but the 512-token user-input step 58 → 68 ms dense and 78 → 84 ms squeezed (87 vs 58 after the split-K
// change). XLA_FLAGS=--xla_gpu_enable_command_buffer= turns them off for every executable.
var DefaultFlags = []string{"--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN",
	"--xla_gpu_graph_min_graph_size=1"}

// GraphMarker in a computation's name asks for command buffers (CUDA graphs); the engine's runner names its
// steps of at most a few dozen rows with it (decode steps, short user inputs).
const GraphMarker = "cudagraph"

// compileOverrides are the per-computation XLA options (third_party/go-xla's CompileOptionOverrides): a
// computation not named with GraphMarker forms no command buffer (a minimum graph size no computation
// reaches).
func compileOverrides(name string) map[string]any {
	if strings.Contains(name, GraphMarker) {
		return nil
	}
	return map[string]any{"xla_gpu_graph_min_graph_size": int64(1 << 30)}
}

// WithDefaultFlags returns flags (an XLA_FLAGS value) with every DefaultFlags entry whose flag it does not
// already set appended.
func WithDefaultFlags(flags string) string {
	for _, f := range DefaultFlags {
		name, _, _ := strings.Cut(f, "=")
		set := slices.ContainsFunc(strings.Fields(flags), func(g string) bool {
			n, _, _ := strings.Cut(g, "=")
			return n == name
		})
		if !set {
			flags = strings.TrimSpace(flags + " " + f)
		}
	}
	return flags
}

// setCUDADataDir points XLA at ptxas/libdevice from the NVIDIA wheels next to the plugin, unless the user
// already set it.
func setCUDADataDir(plugin string) {
	if strings.Contains(os.Getenv("XLA_FLAGS"), "xla_gpu_cuda_data_dir") {
		return
	}
	for _, sub := range []string{"cu13", "cuda_nvcc"} {
		d := filepath.Join(sitePackages(plugin), "nvidia", sub)
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			flags := strings.TrimSpace(os.Getenv("XLA_FLAGS") + " --xla_gpu_cuda_data_dir=" + d)
			_ = os.Setenv("XLA_FLAGS", flags)
			return
		}
	}
}

// LibraryPathEnv returns the LD_LIBRARY_PATH that lets the plugin find the CUDA libraries of the NVIDIA
// wheels installed beside it, and whether the current process already has it. The dynamic loader reads
// LD_LIBRARY_PATH only at process start, so a command-line tool re-executes itself with it (see
// ReexecWithLibraryPath).
func LibraryPathEnv(plugin string) (value string, ok bool) {
	libs, _ := filepath.Glob(filepath.Join(sitePackages(plugin), "nvidia", "*", "lib"))
	cur := os.Getenv("LD_LIBRARY_PATH")
	parts := strings.Split(cur, ":")
	ok = true
	for _, l := range libs {
		if !slices.Contains(parts, l) {
			ok = false
			parts = append([]string{l}, parts...)
		}
	}
	return strings.Trim(strings.Join(parts, ":"), ":"), ok
}

// ReexecWithLibraryPath re-executes the current program with LD_LIBRARY_PATH set for the CUDA plugin when
// a plugin would be used and the path is missing. It returns only when no re-exec is needed (or it failed).
func ReexecWithLibraryPath(opts Options) {
	if opts.Kind == Go || os.Getenv("SQLLM_REEXEC") != "" {
		return
	}
	plugin, _ := FindPlugin(opts.PluginPath)
	if plugin == "" {
		return
	}
	lp, ok := LibraryPathEnv(plugin)
	if ok {
		return
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	env := append(os.Environ(), "LD_LIBRARY_PATH="+lp, "SQLLM_REEXEC=1")
	_ = execve(self, os.Args, env)
}

// SIMDEnabled reports whether this binary was built with GOEXPERIMENT=simd, which enables the pure-Go
// backend's AVX2/AVX-512 matrix kernels.
func SIMDEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "GOEXPERIMENT" && slices.Contains(strings.Split(s.Value, ","), "simd") {
			return true
		}
	}
	return false
}
