package supervisor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/supervisor/config"
)

// TestValidate drives Validate with the real plugin binaries, built
// here: a valid config, a missing plugin, bad params, a pin that does
// not match (and Start refusing it before any plugin starts), and a
// plugin that cannot check its params.
func TestValidate(t *testing.T) {
	plugins := buildPlugins(t)
	ctx := context.Background()
	dir := t.TempDir()
	// load writes src to a config file in dir and parses it with the lock
	// file beside it applied, as start does.
	load := func(t *testing.T, name, src string) *config.Config {
		t.Helper()
		path := filepath.Join(dir, name)
		src = "plugin_dir = \"" + plugins + "\"\n" + src
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.ApplyLock(config.LockPath(path)); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	lines := func(ps []Problem) string {
		var b strings.Builder
		for _, p := range ps {
			b.WriteString(p.String() + "\n")
		}
		return b.String()
	}

	t.Run("valid", func(t *testing.T) {
		cfg := load(t, "valid.hcl", `params = { frames = 3 }
phase "encoder" {
  plugin = "encoder"
}
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  params    = { height = 16 }
}
phase "decoder" {
  plugin = "decoder"
}
`)
		if ps := Validate(ctx, cfg, ValidateOptions{}); len(ps) != 0 {
			t.Fatalf("problems with a valid config:\n%s", lines(ps))
		}
	})

	t.Run("missing plugin", func(t *testing.T) {
		file := filepath.Join(dir, "missing.hcl")
		cfg := load(t, "missing.hcl", `phase "encoder" {
  plugin = "encoder"
}
phase "decoder" {
  plugin = "decodr"
  params = { fraems = 2 }
}
`)
		ps := Validate(ctx, cfg, ValidateOptions{})
		want := file + `:6:3: phase "decoder": plugin not found: phase plugin "decodr": ` + filepath.Join(plugins, "phased-phase-decodr") + " does not exist; plugins in " + plugins + ": phased-phase-decoder, phased-phase-encoder, "
		if len(ps) != 1 || !strings.HasPrefix(ps[0].String(), want) || !HasErrors(ps) {
			t.Fatalf("problems:\n%s\nwant one starting %q", lines(ps), want)
		}
	})

	t.Run("bad params", func(t *testing.T) {
		file := filepath.Join(dir, "params.hcl")
		cfg := load(t, "params.hcl", `params = {
  frames = "x"
}
phase "encoder" {
  plugin = "encoder"
}
phase "transformer" {
  plugin = "transformer"
  params = {
    height = 16
    stpes  = 3
  }
}
phase "decoder" {
  plugin = "decoder"
  params = { widht = 8 }
}
`)
		ps := Validate(ctx, cfg, ValidateOptions{})
		known := "known params are channels, context_dim, context_len, delay, frames, height, scale, width"
		want := file + `:3:3: phases "encoder", "transformer", "decoder": frames = "x": not an integer` + "\n" +
			file + `:12:5: phase "transformer": stpes = "3": unknown param; the ` + known + "\n" +
			file + `:17:14: phase "decoder": widht = "8": unknown param; did you mean "width"? The ` + known + "\n"
		if got := lines(ps); got != want {
			t.Fatalf("problems:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("pin mismatch", func(t *testing.T) {
		file := filepath.Join(dir, "pinned.hcl")
		bad := strings.Repeat("0", 64)
		good, err := FileSHA256(filepath.Join(plugins, "phased-phase-encoder"))
		if err != nil {
			t.Fatal(err)
		}
		cfg := load(t, "pinned.hcl", `pin "phased-phase-encoder" {
  sha256 = "`+good+`"
}
pin "phased-phase-decoder" {
  sha256 = "`+bad+`"
}
phase "encoder" {
  plugin = "encoder"
}
phase "transformer" {
  plugin = "transformer"
}
phase "decoder" {
  plugin = "decoder"
}
`)
		ps := Validate(ctx, cfg, ValidateOptions{})
		decoder := filepath.Join(plugins, "phased-phase-decoder")
		sum, err := FileSHA256(decoder)
		if err != nil {
			t.Fatal(err)
		}
		want := file + `:5:1: phase "decoder": plugin binary does not match its pin: phase plugin decoder: ` + decoder + " has SHA-256 " + sum +
			", but " + file + ":5:1 pins " + bad + "; install the pinned build, or run `supervisor plugins lock` to pin this one\n"
		if got := lines(ps); got != want {
			t.Fatalf("problems:\n%s\nwant:\n%s", got, want)
		}

		// Start refuses it before it starts any plugin: the policy and
		// the instances upstream of the decoder included.
		logs := &syncBuffer{}
		logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: logs})
		err = New(cfg, Options{Logger: logger}).Start(ctx)
		if !errors.Is(err, ErrPinMismatch) || !strings.HasPrefix(err.Error(), `phase "decoder": plugin binary does not match its pin`) {
			t.Fatalf("Start: %v; want the decoder's pin refused", err)
		}
		if n := strings.Count(logs.String(), "plugin started"); n != 0 {
			t.Fatalf("Start started %d plugins before it refused the pin:\n%s", n, logs)
		}
	})

	t.Run("a plugin that cannot check its params", func(t *testing.T) {
		if err := exec.Command("/usr/bin/python3", "-c", "import grpc, google.protobuf, zmq, numpy, xxhash, cryptography").Run(); err != nil {
			t.Skipf("a Python phase needs /usr/bin/python3 with the Python SDK's packages (make deps): %v", err)
		}
		own := t.TempDir()
		for _, name := range []string{"phased-phase-encoder", "phased-policy-roundrobin"} {
			if err := os.Symlink(filepath.Join(plugins, name), filepath.Join(own, name)); err != nil {
				t.Fatal(err)
			}
		}
		sdkDir, err := filepath.Abs(filepath.Join("..", "sdk", "python"))
		if err != nil {
			t.Fatal(err)
		}
		script := "#!/usr/bin/python3\nimport sys\nsys.path.insert(0, " + pyQuote(sdkDir) + ")\nimport phased\n\n\n" +
			"class Plain(phased.Phase):\n    name = \"plain\"\n\n    def inputs(self, request, params):\n        return []\n\n\n" +
			"phased.serve(Plain())\n"
		if err := os.WriteFile(filepath.Join(own, "phased-phase-plain"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "plain.hcl")
		src := `phase "encoder" {
  plugin = "encoder"
}
phase "plain" {
  plugin = "plain"
  params = { anything = 1 }
}
`
		if err := os.WriteFile(file, []byte("plugin_dir = \""+own+"\"\n"+src), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		ps := Validate(ctx, cfg, ValidateOptions{})
		want := file + `:7:3: note: phase "plain": phase plugin "plain" cannot check its params before it loads; they are checked at start` + "\n"
		if got := lines(ps); got != want || HasErrors(ps) {
			t.Fatalf("problems:\n%s\nwant:\n%s", got, want)
		}
	})
}

// buildPlugins builds the built-in phase plugins and the round-robin
// policy into a directory of the test's.
func buildPlugins(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the plugin binaries")
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"./plugins/encoder/cmd/phased-phase-encoder", "./plugins/transformer/cmd/phased-phase-transformer",
		"./plugins/decoder/cmd/phased-phase-decoder", "./policies/roundrobin/cmd/phased-policy-roundrobin")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the plugins: %v\n%s", err, out)
	}
	return dir
}

// pyQuote is s as a Python string literal.
func pyQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
