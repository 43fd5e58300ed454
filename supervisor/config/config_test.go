package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	c := Default()
	var names []string
	for _, p := range c.Phases {
		names = append(names, p.Name)
		if p.Instances != 1 || p.Policy != DefaultPolicy || p.Plugin != p.Name || p.StartTimeout != DefaultStartTimeout {
			t.Errorf("phase %+v: want one instance of plugin %q with policy %q", p, p.Name, DefaultPolicy)
		}
	}
	if want := []string{"encoder", "transformer", "decoder"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("phases %v, want %v", names, want)
	}
	if c.Backend != BackendAuto || c.Grace != DefaultGrace || c.ArtifactDir != DefaultArtifactDir {
		t.Fatalf("defaults %+v", c)
	}
	if got := c.Policies(); !reflect.DeepEqual(got, []string{"roundrobin"}) {
		t.Fatalf("policies %v", got)
	}
}

func TestParseFull(t *testing.T) {
	src := `
plugin_dir   = "/opt/phased/plugins"
artifact_dir = "/tmp/art"
params = { frames = 4, height = "16" }
release { grace = "5s" }
phase "encoder"     { plugin = "encoder" }
phase "transformer" {
  plugin        = "transformer"
  instances     = 2
  policy        = "roundrobin"
  start_timeout = "2m"
  params        = { height = 8 }
}
phase "decoder" {
  plugin = "decoder"
  policy = "leastloaded"
}
`
	c, err := Parse([]byte(src), "full.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.PluginDir != "/opt/phased/plugins" || c.ArtifactDir != "/tmp/art" || c.Grace != 5*time.Second {
		t.Fatalf("top level %+v", c)
	}
	tr := c.Phases[1]
	if tr.Instances != 2 || tr.StartTimeout != 2*time.Minute {
		t.Fatalf("transformer %+v", tr)
	}
	if got, want := c.PhaseParams(tr), map[string]string{"frames": "4", "height": "8"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("params %v, want %v", got, want)
	}
	if got, want := c.Policies(), []string{"roundrobin", "leastloaded"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("policies %v, want %v", got, want)
	}
}

func TestParseReliability(t *testing.T) {
	src := `
retries = 4
max_queue = 50
default_deadline = "15m"
poison_crashes = 3
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin        = "transformer"
  ready_timeout = "10m"
  hang_timeout  = "30s"
  checkpoint_every = 5
  max_rooms        = 8
  max_input_bytes  = 100000000
  batch {
    max_size = 4
    max_wait = "5ms"
  }
  restart {
    max         = 3
    window      = "2m"
    backoff     = "1s"
    max_backoff = "8s"
  }
}
`
	c, err := Parse([]byte(src), "r.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if enc := c.Phases[0]; enc.Min != 1 || enc.Max != 1 {
		t.Errorf("encoder min %d, max %d; want 1, its instances", enc.Min, enc.Max)
	}
	if c.Retries != 4 || c.MaxQueue != 50 || c.DefaultDeadline != 15*time.Minute || c.PoisonCrashes != 3 {
		t.Errorf("retries %d, max_queue %d, default_deadline %s, poison_crashes %d; want 4, 50, 15m, 3", c.Retries, c.MaxQueue, c.DefaultDeadline, c.PoisonCrashes)
	}
	enc, tr := c.Phases[0], c.Phases[1]
	if enc.ReadyTimeout != DefaultReadyTimeout || enc.HangTimeout != DefaultHangTimeout || enc.Restart != DefaultRestart() {
		t.Errorf("encoder defaults: %+v", enc)
	}
	want := Restart{Max: 3, Window: 2 * time.Minute, Backoff: time.Second, MaxBackoff: 8 * time.Second, Jitter: DefaultRestartJitter}
	if tr.CheckpointEvery != 5 || tr.MaxRooms != 8 || tr.MaxInputBytes != 100_000_000 || tr.Batch != (Batch{MaxSize: 4, MaxWait: 5 * time.Millisecond}) {
		t.Errorf("transformer: checkpoint_every %d, max_rooms %d, max_input_bytes %d, batch %+v", tr.CheckpointEvery, tr.MaxRooms, tr.MaxInputBytes, tr.Batch)
	}
	if enc.CheckpointEvery != 0 || enc.MaxRooms != 0 || enc.MaxInputBytes != 0 || enc.Batch != (Batch{}) {
		t.Errorf("encoder: checkpoint_every %d, max_rooms %d, batch %+v; want none", enc.CheckpointEvery, enc.MaxRooms, enc.Batch)
	}
	if tr.ReadyTimeout != 10*time.Minute || tr.HangTimeout != 30*time.Second || tr.Restart != want {
		t.Errorf("transformer: ready %s, hang %s, restart %+v; want 10m, 30s, %+v", tr.ReadyTimeout, tr.HangTimeout, tr.Restart, want)
	}
	if d := Default(); d.Retries != DefaultRetries || d.MaxQueue != DefaultMaxQueue || d.DefaultDeadline != 0 || d.PoisonCrashes != DefaultPoisonCrashes || d.Phases[0].Restart != DefaultRestart() {
		t.Errorf("default config: retries %d, max_queue %d, restart %+v", d.Retries, d.MaxQueue, d.Phases[0].Restart)
	}
}

func TestHopBackend(t *testing.T) {
	src := `
phase "encoder" { plugin = "encoder" }
phase "dit"     {
  plugin = "transformer"
  device = "cuda"
}
phase "vae"     {
  plugin = "decoder"
  device = "cuda"
}
phase "remote"  {
  plugin = "decoder"
  host   = "gpu-b"
  device = "cuda"
}
`
	c, err := Parse([]byte(src), "hops.hcl")
	if err != nil {
		t.Fatal(err)
	}
	ph := c.Phases
	tests := []struct {
		backend  string
		from, to int
		want     string
	}{
		{BackendAuto, 0, 1, "shm"},  // same host, the encoder holds host buffers
		{BackendAuto, 1, 2, "cuda"}, // same host, both on the device
		{BackendAuto, 2, 3, "zmq"},  // another host
		{"shm", 2, 3, "shm"},        // a named backend is used for every hop
	}
	for _, tt := range tests {
		c.Backend = tt.backend
		if got := c.HopBackend(ph[tt.from], ph[tt.to]); string(got) != tt.want {
			t.Errorf("backend %s, hop %s → %s: %s, want %s", tt.backend, ph[tt.from].Name, ph[tt.to].Name, got, tt.want)
		}
	}
}

func TestControl(t *testing.T) {
	if c := Default(); c.Control != (Control{}) {
		t.Fatalf("default control %+v; want TCP off", c.Control)
	}
	src := "control {\n  listen     = \"127.0.0.1:7070\"\n  token_file = \"/etc/phased/token\"\n}\nphase \"t\" { plugin = \"t\" }\n"
	c, err := Parse([]byte(src), "a.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Control{Listen: "127.0.0.1:7070", TokenFile: "/etc/phased/token"}); c.Control != want {
		t.Fatalf("control %+v, want %+v", c.Control, want)
	}
	c, err = Parse([]byte(`{"control": {"listen": "[::1]:0"}, "phase": {"t": {"plugin": "t"}}}`), "c.json")
	if err != nil || c.Control != (Control{Listen: "[::1]:0"}) {
		t.Fatalf("json control %+v, %v", c.Control, err)
	}
}

func TestParseJSON(t *testing.T) {
	src := `{"phase": {"encoder": {"plugin": "encoder"}, "decoder": {"plugin": "decoder", "instances": 3}}}`
	c, err := Parse([]byte(src), "c.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Phases) != 2 || c.Phases[1].Name != "decoder" || c.Phases[1].Instances != 3 {
		t.Fatalf("phases %+v", c.Phases)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, file, src string
		want            []string
	}{
		{"syntax", "a.hcl", "phase \"encoder\" {\n  plugin = \n}\n", []string{"a.hcl:2:", "Invalid expression"}},
		{"unknown attribute", "a.hcl", "phase \"encoder\" {\n  plugin = \"encoder\"\n  instance = 2\n}\n", []string{"a.hcl:3:3", `An argument named "instance" is not expected here`, `Did you mean "instances"?`}},
		{"wrong type", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  instances = \"two\"\n}\n", []string{"a.hcl:3:", "a number is required"}},
		{"missing plugin", "a.hcl", "phase \"t\" {\n}\n", []string{"a.hcl:1:", `The argument "plugin" is required`}},
		{"missing label", "a.hcl", "phase {\n  plugin = \"t\"\n}\n", []string{"a.hcl:1:", "Missing name for phase"}},
		{"no phases", "a.hcl", "backend = \"shm\"\n", []string{"a.hcl: no phase blocks"}},
		{"zero instances", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  instances = 0\n}\n", []string{`a.hcl:1:1: phase "t": instances = 0 runs every instance on agents, which needs a cluster block`}},
		{"negative instances", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  instances = -1\n}\n", []string{`a.hcl:1:1: phase "t": instances must be between 0 (all on agents) and 64, got -1`}},
		{"weights per instance", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  instances = 2\n  weights = [3]\n}\n", []string{`a.hcl:1:1: phase "t": weights has 1 values for 2 instances; give one per instance`}},
		{"weight out of range", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  weights = [0]\n}\n", []string{`phase "t": weights[0] is 0; each weight must be between 1 and 1000`}},
		{"reserved label", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  labels = { weight = \"2\" }\n}\n", []string{`phase "t": labels: "weight" is reserved: give weights = [...] instead`}},
		{"duplicate phase", "a.hcl", "phase \"t\" { plugin = \"t\" }\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl:2:1: phase "t" is defined twice; first at a.hcl:1:1`}},
		{"bad plugin name", "a.hcl", "phase \"t\" { plugin = \"../evil\" }\n", []string{`phase "t": plugin "../evil" is not a valid name`}},
		{"bad backend", "a.hcl", "backend = \"rdma\"\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: backend "rdma" is not supported; expected one of: auto, shm, zmq, cuda`}},
		{"bad address", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  address = \"tcp://x:1\"\n}\n", []string{`a.hcl:1:1: phase "t": address "tcp://x:1": expected a host name or IP address`}},
		{"bad peer timeout", "a.hcl", "peer_timeout = \"0s\"\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: peer_timeout: "0s" is not a positive duration`}},
		{"bad max inflight", "a.hcl", "max_inflight = 0\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: max_inflight must be between 1 and 100000, got 0`}},
		{"bad max queue", "a.hcl", "max_queue = 0\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: max_queue must be between 1 and 1000000, got 0`}},
		{"max below instances", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  instances = 3\n  max = 2\n}\n", []string{`a.hcl:1:1: phase "t": min 1, instances 3, max 2: want 1 <= min <= instances <= max <= 64`}},
		{"min zero", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  min = 0\n}\n", []string{`phase "t": min 0, instances 1, max 1: want 1 <= min <= instances <= max <= 64`}},
		{"bad poison crashes", "a.hcl", "poison_crashes = 0\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: poison_crashes must be between 1 and 100, got 0`}},
		{"bad default deadline", "a.hcl", "default_deadline = \"soon\"\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: default_deadline: "soon" is not a positive duration; expected e.g. "30s" or "2m"`}},
		{"default deadline too long", "a.hcl", "default_deadline = \"1000h\"\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: default_deadline must be at most 720h0m0s, got 1000h0m0s`}},
		{"bad device", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  device = \"tpu\"\n}\n", []string{`a.hcl:1:1: phase "t": device "tpu" is not supported; expected one of: cpu, cuda`}},
		{"bad grace", "a.hcl", "release {\n  grace = \"soon\"\n}\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl:1:1: release: grace: "soon" is not a positive duration`}},
		{"bad start timeout", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  start_timeout = \"-1s\"\n}\n", []string{`phase "t": start_timeout: "-1s" is not a positive duration`}},
		{"bad retries", "a.hcl", "retries = 11\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl: retries must be between 0 and 10, got 11`}},
		{"bad hang timeout", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  hang_timeout = \"never\"\n}\n", []string{`phase "t": hang_timeout: "never" is not a positive duration`}},
		{"zero cpus", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  cpus = 0\n}\n", []string{`a.hcl:1:1: phase "t": cpus must be between 1 and 1024, got 0; leave it out for the host's share`}},
		{"batch size", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  batch {\n    max_size = 0\n  }\n}\n", []string{`a.hcl:1:1: phase "t": batch: max_size must be between 1 (no batching) and 1024, got 0`}},
		{"batch wait", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  batch {\n    max_size = 4\n    max_wait = \"soon\"\n  }\n}\n", []string{`phase "t": batch: max_wait "soon": want a duration from 0s to 1m0s`}},
		{"batch above max_rooms", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  max_rooms = 2\n  batch {\n    max_size = 4\n  }\n}\n", []string{`phase "t": batch: max_size 4 is more than max_rooms 2: a batch could never fill`}},
		{"negative credits", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  max_input_bytes = -1\n}\n", []string{`phase "t": max_rooms 0, max_input_bytes -1: want 0 (no limit) to 1000000 and to 1125899906842624`}},
		{"negative checkpoint_every", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  checkpoint_every = -5\n}\n", []string{`a.hcl:1:1: phase "t": checkpoint_every must be between 0 (no checkpoints) and 1000000 steps, got -5`}},
		{"fractional cpus", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  cpus = 1.5\n}\n", []string{"a.hcl:3:10", "value must be a whole number"}},
		{"bad ready timeout", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  ready_timeout = \"0s\"\n}\n", []string{`phase "t": ready_timeout: "0s" is not a positive duration`}},
		{"bad restart max", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  restart {\n    max = -1\n  }\n}\n", []string{`a.hcl:3:3: phase "t": restart: max must be between 0 and 10000, got -1`}},
		{"restart backoffs", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  restart {\n    backoff = \"2s\"\n    max_backoff = \"1s\"\n  }\n}\n", []string{`phase "t": restart: max_backoff (1s) is less than backoff (2s)`}},
		{"restart typo", "a.hcl", "phase \"t\" {\n  plugin = \"t\"\n  restart {\n    windw = \"1m\"\n  }\n}\n", []string{"a.hcl:4:5", `An argument named "windw" is not expected here`}},
		{"control listen without port", "a.hcl", "control {\n  listen = \"127.0.0.1\"\n}\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl:1:1: control: listen "127.0.0.1" is not HOST:PORT; expected e.g. "127.0.0.1:7070"`}},
		{"control listen bad port", "a.hcl", "control {\n  listen = \"localhost:http\"\n}\nphase \"t\" { plugin = \"t\" }\n", []string{`a.hcl:1:1: control: listen "localhost:http" is not HOST:PORT`}},
		{"control unknown attribute", "a.hcl", "control {\n  token = \"x\"\n}\nphase \"t\" { plugin = \"t\" }\n", []string{"a.hcl:2:3", `An argument named "token" is not expected here`}},
		{"json syntax", "c.json", `{"phase": {"t": {"plugin": 1,}}}`, []string{"c.json:1:"}},
		{"json missing plugin", "c.json", `{"phase": {"t": {}}}`, []string{"c.json:1:", `The argument "plugin" is required`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.src), tt.file)
			if err == nil {
				t.Fatal("parsed; want an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "phased.hcl")
	if err := os.WriteFile(path, DefaultSource(), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Phases) != 3 {
		t.Fatalf("phases %+v", c.Phases)
	}
	_, err = Load(filepath.Join(dir, "missing.hcl"))
	if err == nil || !strings.Contains(err.Error(), "missing.hcl") || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("error %v, want the path and 'no such file'", err)
	}
}

// TestExamples loads every config under examples/configs.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/configs/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example configs found (%v)", err)
	}
	for _, f := range files {
		c, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(c.Phases) < 2 {
			t.Errorf("%s: %d phases", f, len(c.Phases))
		}
	}
}

func TestInstanceLabels(t *testing.T) {
	c, err := Parse([]byte("phase \"t\" {\n  plugin = \"t\"\n  instances = 2\n  labels = { zone = \"a\" }\n  weights = [5, 1]\n}\nphase \"u\" { plugin = \"u\" }\n"), "a.hcl")
	if err != nil {
		t.Fatal(err)
	}
	got := c.Phases[0].InstanceLabels(1)
	if len(got) != 2 || got["zone"] != "a" || got["weight"] != "1" {
		t.Fatalf("labels of t[1]: %v", got)
	}
	got["zone"] = "changed"
	if c.Phases[0].InstanceLabels(0)["zone"] != "a" || c.Phases[0].InstanceLabels(0)["weight"] != "5" {
		t.Fatal("InstanceLabels shares its map, or weight of t[0]")
	}
	if c.Phases[1].InstanceLabels(0) != nil {
		t.Fatal("a phase without labels or weights has labels")
	}
}

// TestRestartRules: the top-level restart block is the policies' rule and
// the default of every phase; a phase's own block overrides what it names.
func TestRestartRules(t *testing.T) {
	src := `
restart {
  max    = 9
  jitter = 0.5
}
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin = "transformer"
  restart {
    backoff = "1s"
  }
}
`
	c, err := Parse([]byte(src), "r.hcl")
	if err != nil {
		t.Fatal(err)
	}
	top := Restart{Max: 9, Window: DefaultRestartWindow, Backoff: DefaultRestartBackoff, MaxBackoff: DefaultRestartMaxBackoff, Jitter: 0.5}
	if c.Restart != top || c.Phases[0].Restart != top {
		t.Errorf("top level %+v, encoder %+v; want %+v", c.Restart, c.Phases[0].Restart, top)
	}
	tr := top
	tr.Backoff = time.Second
	if c.Phases[1].Restart != tr {
		t.Errorf("transformer %+v; want %+v", c.Phases[1].Restart, tr)
	}
	if d := Default(); d.Restart != DefaultRestart() {
		t.Errorf("default config: restart %+v", d.Restart)
	}
	// A bad top-level rule is reported once, where it is, not again at a
	// phase that sets other fields of its own.
	_, err = Parse([]byte("restart {\n  jitter = 1.5\n}\nphase \"t\" {\n  plugin = \"t\"\n  restart {\n    max = 3\n  }\n}\n"), "once.hcl")
	if err == nil || strings.Count(err.Error(), "jitter") != 1 || !strings.Contains(err.Error(), "once.hcl:1:1: restart: jitter") {
		t.Errorf("a bad top-level jitter and a phase's block: %v", err)
	}
	for src, want := range map[string]string{
		"restart {\n  jitter = 1.5\n}\nphase \"t\" { plugin = \"t\" }\n":                              "j.hcl:1:1: restart: jitter must be between 0 and 1 (a fraction of each backoff), got 1.5",
		"phase \"t\" {\n  plugin = \"t\"\n  restart {\n    jitter = -0.1\n  }\n}\n":                   `j.hcl:3:3: phase "t": restart: jitter must be between 0 and 1 (a fraction of each backoff), got -0.1`,
		"restart {\n  window = \"soon\"\n}\nphase \"t\" { plugin = \"t\" }\n":                         `j.hcl:1:1: restart: window: "soon" is not a positive duration`,
		"restart {\n  backoff = \"20s\"\n  max_backoff = \"1s\"\n}\nphase \"t\" { plugin = \"t\" }\n": "j.hcl:1:1: restart: max_backoff (1s) is less than backoff (20s)",
	} {
		_, err := Parse([]byte(src), "j.hcl")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", src, err, want)
		}
	}
}

// TestPositions: a config says where each phase, plugin, policy and
// param is, in HCL and in JSON, so that problems found later (a plugin
// missing, a param its plugin refuses) point at their line.
func TestPositions(t *testing.T) {
	src := `policy = "random"
params = { frames = 4, height = "8" }
phase "encoder" {
  plugin = "encoder"
}
phase "transformer" {
  plugin = "transformer"
  policy = "p2c"
  params = {
    fraems = 3
    height = 16
  }
}
`
	c, err := Parse([]byte(src), "p.hcl")
	if err != nil {
		t.Fatal(err)
	}
	enc, tr := c.Phases[0], c.Phases[1]
	pos := func(line, col int) Pos { return Pos{Filename: "p.hcl", Line: line, Column: col} }
	for _, tt := range []struct {
		what      string
		got, want Pos
	}{
		{"encoder block", enc.At.Block, pos(3, 1)},
		{"encoder plugin", enc.At.Plugin, pos(4, 3)},
		{"encoder policy: the top-level one", enc.At.Policy, pos(1, 1)},
		{"transformer policy", tr.At.Policy, pos(8, 3)},
		{"transformer params", tr.At.Params, pos(9, 3)},
		{"its own param", c.ParamAt(tr, "fraems"), pos(10, 5)},
		{"its own param over a top-level one", c.ParamAt(tr, "height"), pos(11, 5)},
		{"a top-level param it inherits", c.ParamAt(tr, "frames"), pos(2, 12)},
		{"a param it does not give", c.ParamAt(tr, "width"), pos(9, 3)},
		{"no params of its own", c.ParamAt(enc, ""), pos(3, 1)},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: at %s, want %s", tt.what, tt.got, tt.want)
		}
	}
	if got, want := c.PhaseParams(tr), map[string]string{"fraems": "3", "frames": "4", "height": "16"}; !reflect.DeepEqual(got, want) {
		t.Errorf("params %v, want %v", got, want)
	}
	// Without a policy attribute anywhere, the default policy is named
	// by the phase block.
	if d := Default(); d.Phases[1].At.Policy != d.Phases[1].At.Block || d.Phases[1].At.Block.String() != DefaultName+":7:1" {
		t.Errorf("default config: transformer at %+v", d.Phases[1].At)
	}
	j, err := Parse([]byte(`{"params": {"frames": 3}, "phase": {"e": {"plugin": "encoder", "params": {"fraems": "3"}}}}`), "p.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := j.ParamAt(j.Phases[0], "fraems").String(); got != "p.json:1:75" {
		t.Errorf("JSON: fraems at %s", got)
	}
	if got := j.ParamAt(j.Phases[0], "frames").String(); got != "p.json:1:13" {
		t.Errorf("JSON: frames at %s", got)
	}
	if _, err := Parse([]byte("phase \"e\" {\n  plugin = \"e\"\n  params = { a = [1] }\n}\n"), "b.hcl"); err == nil ||
		!strings.Contains(err.Error(), `b.hcl:3:12: Unsuitable value type`) || strings.Count(err.Error(), "invalid config") != 1 {
		t.Errorf("params of the wrong type: %v", err)
	}
}

// TestCPUs: a phase's cpus rule its instances; without it, every
// process the supervisor starts (instances, policies, itself) gets an
// equal share of the host's CPUs, at least 1.
func TestCPUs(t *testing.T) {
	cfg, err := Parse([]byte(`
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  cpus      = 6
}
phase "decoder" {
  plugin = "decoder"
  policy = "leastloaded"
}
`), "c.hcl")
	if err != nil {
		t.Fatal(err)
	}
	// 4 instances, 2 policies, the supervisor: 7 processes.
	for _, c := range []struct{ ncpu, share int }{{1, 1}, {2, 1}, {7, 1}, {14, 2}, {16, 2}, {128, 18}} {
		if got := cfg.CPUShare(c.ncpu); got != c.share {
			t.Errorf("CPUShare(%d) = %d, want %d", c.ncpu, got, c.share)
		}
	}
	if got := cfg.CPUsOf(cfg.Phases[1], 2); got != 6 {
		t.Errorf("the transformer's cpus: %d, want its own 6", got)
	}
	if got := cfg.CPUsOf(cfg.Phases[0], 16); got != 2 {
		t.Errorf("the encoder's cpus: %d, want the share of 16, 2", got)
	}
}

// TestScalerBlock: the scaler block's name, interval and params, its
// defaults, and its errors.
func TestScalerBlock(t *testing.T) {
	c, err := Parse([]byte(`
scaler {
  name     = "threshold"
  interval = "2s"
  params   = { cooldown = "10s" }
}
phase "t" { plugin = "t" }
`), "s.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.Scaler.Name != "threshold" || c.Scaler.Interval != 2*time.Second || c.Scaler.Params["cooldown"] != "10s" {
		t.Errorf("scaler %+v", c.Scaler)
	}
	if d := Default(); d.Scaler.Name != "" || d.Scaler.Interval != DefaultScalerInterval {
		t.Errorf("default scaler %+v; want none, every %s", d.Scaler, DefaultScalerInterval)
	}
	for src, want := range map[string]string{
		"scaler {\n  name = \"Bad\"\n}\nphase \"t\" { plugin = \"t\" }\n":                     `s.hcl:1:1: scaler: name "Bad" is not a valid name`,
		"scaler {\n  name = \"q\"\n  interval = \"1ms\"\n}\nphase \"t\" { plugin = \"t\" }\n": `s.hcl:1:1: scaler: interval must be at least 100ms, got 1ms`,
	} {
		if _, err := Parse([]byte(src), "s.hcl"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}
