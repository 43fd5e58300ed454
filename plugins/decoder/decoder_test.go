package decoder_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

func TestInfoAndInputs(t *testing.T) {
	d := decoder.New()
	info, err := d.Info(context.Background())
	if err != nil || info.Name != decoder.Name || info.Kind != sdk.KindPhase || info.Version != "0.1.0" || !slices.Equal(info.APIVersions, []int{sdk.PhaseAPIVersion}) {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	in, err := d.Inputs(context.Background(), sdk.Request{ID: "r"})
	if err != nil || len(in) != 1 || !in[0].Equal(model.LatentSpec(model.DefaultParams())) {
		t.Fatalf("Inputs = %v, %v", in, err)
	}
}

func TestConfigureErrors(t *testing.T) {
	tests := []struct {
		params  map[string]string
		wantErr string
	}{
		{map[string]string{"Frames": "3"}, `decoder: params: Frames = "3": unknown param`},
		{map[string]string{"scale": "0"}, `decoder: params: scale = "0": must be a positive integer`},
	}
	for _, tt := range tests {
		err := decoder.New().Configure(context.Background(), sdk.Config{Params: tt.params})
		if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
			t.Errorf("Configure(%v) = %v, want %q", tt.params, err, tt.wantErr)
		}
	}
}

// phases are the three built-in phases, configured alike.
type phases struct {
	enc *encoder.Phase
	tr  *transformer.Phase
	dec *decoder.Phase
}

func newPhases(t *testing.T, params map[string]string) phases {
	t.Helper()
	ps := phases{encoder.New(), transformer.New(), decoder.New()}
	for _, c := range []sdk.Configurer{ps.enc, ps.tr, ps.dec} {
		if err := c.Configure(context.Background(), sdk.Config{Params: params}); err != nil {
			t.Fatal(err)
		}
	}
	return ps
}

// run chains the three phases in process, as the SDK runtime would.
func (ps phases) run(ctx context.Context, req sdk.Request) (*sdk.Artifact, error) {
	return sdk.RunLocal(ctx, req, ps.enc, ps.tr, ps.dec)
}

func TestPipelineMatchesReference(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		params map[string]string
		req    sdk.Request
	}{
		{"demo", nil, sdk.Request{ID: "req-1", Prompt: "a red fox in the snow", Seed: 42, Steps: 20}},
		{"no steps", nil, sdk.Request{ID: "req-2", Prompt: "a red fox in the snow", Seed: 42}},
		{"small, nested dir", map[string]string{"frames": "2", "height": "5", "width": "7", "scale": "3", "delay": "4"},
			sdk.Request{ID: "Req_3.v2", Prompt: "", Seed: -7, Steps: 3, ArtifactDir: filepath.Join(dir, "a", "b")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			if req.ArtifactDir == "" {
				req.ArtifactDir = dir
			}
			ps := newPhases(t, tt.params)
			art, err := ps.run(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			want, err := model.Reference(context.Background(), ps.dec.Params(), req.Prompt, req.Seed, req.Steps)
			if err != nil {
				t.Fatal(err)
			}
			if wantPath := filepath.Join(req.ArtifactDir, req.ID+".gif"); art.Path != wantPath || !filepath.IsAbs(art.Path) {
				t.Fatalf("path %q, want %q", art.Path, wantPath)
			}
			got, err := os.ReadFile(art.Path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("the artifact (%d bytes) differs from model.Reference (%d bytes)", len(got), len(want))
			}
			sum := sha256.Sum256(want)
			if art.SHA256 != hex.EncodeToString(sum[:]) || art.Size != int64(len(want)) || art.MediaType != "image/gif" {
				t.Fatalf("artifact %+v, want sha256 %x, size %d, image/gif", art, sum, len(want))
			}
			fi, err := os.Stat(art.Path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("mode %v, want 0644", fi.Mode().Perm())
			}
			assertNoTemp(t, req.ArtifactDir)
		})
	}
}

// TestNeverReplaces: a second request with the id of an existing
// artifact fails with ErrArtifactExists; the first file keeps its bytes
// and no temporary file is left. The same request again (an attempt
// after one that died once it had written) finds its own bytes: it
// succeeds.
func TestNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	ps := newPhases(t, map[string]string{"frames": "2", "height": "5", "width": "7"})
	req := sdk.Request{ID: "same", Prompt: "one", Seed: 1, Steps: 1, ArtifactDir: dir}
	art, err := ps.run(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(art.Path)
	if err != nil {
		t.Fatal(err)
	}
	req.NoSync = true // without fsync: the same bytes, the same rule
	again, err := ps.run(context.Background(), req)
	if err != nil || again.Path != art.Path || again.SHA256 != art.SHA256 {
		t.Fatalf("the same request again: %+v, %v", again, err)
	}
	req.Prompt, req.Seed = "two", 2
	_, err = ps.run(context.Background(), req)
	if !errors.Is(err, decoder.ErrArtifactExists) || !strings.Contains(err.Error(), art.Path) {
		t.Fatalf("second write: %v; want ErrArtifactExists naming %s", err, art.Path)
	}
	if got, _ := os.ReadFile(art.Path); !bytes.Equal(got, first) {
		t.Fatal("the first artifact was replaced")
	}
	assertNoTemp(t, dir)
}

// assertNoTemp fails if dir holds anything but .gif files.
func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.IsDir() && filepath.Ext(e.Name()) != ".gif" {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

func TestPipelineRelativeDir(t *testing.T) {
	t.Chdir(t.TempDir())
	art, err := newPhases(t, nil).run(context.Background(), sdk.Request{ID: "rel", Prompt: "p", Seed: 1, Steps: 1, ArtifactDir: "out"})
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(art.Path) || filepath.Base(filepath.Dir(art.Path)) != "out" {
		t.Fatalf("path %q, want an absolute path in out/", art.Path)
	}
}

func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	p := model.DefaultParams()
	_, latent := model.Encode(p, "p", 1)
	ls := model.LatentSpec(p)
	lt, err := tensor.FromFloat32(ls.Name, ls.Shape, latent)
	if err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		req     sdk.Request
		in      []tensor.Tensor
		wantIs  error
		wantErr string
	}{
		{"traversal", context.Background(), sdk.Request{ID: "../x", ArtifactDir: dir}, []tensor.Tensor{lt}, decoder.ErrBadID,
			`decoder: request id is not a safe file name: "../x": use only letters, digits, '_', '.' and '-'`},
		{"slash", context.Background(), sdk.Request{ID: "a/b", ArtifactDir: dir}, []tensor.Tensor{lt}, decoder.ErrBadID, `"a/b"`},
		{"empty id", context.Background(), sdk.Request{ID: "", ArtifactDir: dir}, []tensor.Tensor{lt}, decoder.ErrBadID, `"": use 1 to 200 bytes`},
		{"long id", context.Background(), sdk.Request{ID: strings.Repeat("a", 201), ArtifactDir: dir}, []tensor.Tensor{lt}, decoder.ErrBadID, "use 1 to 200 bytes"},
		{"no dir", context.Background(), sdk.Request{ID: "r"}, []tensor.Tensor{lt}, decoder.ErrNoArtifactDir,
			"decoder: request has no artifact directory: set the artifact directory in the config"},
		{"no input", context.Background(), sdk.Request{ID: "r", ArtifactDir: dir}, nil, model.ErrBadInput, "got 0 input tensors, want 1"},
		{"cancelled", cancelled, sdk.Request{ID: "r", ArtifactDir: dir}, []tensor.Tensor{lt}, context.Canceled, "decoder: context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := decoder.New().Run(tt.ctx, tt.req, tt.in)
			if !errors.Is(err, tt.wantIs) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Run = %+v, %v; want %v containing %q", out, err, tt.wantIs, tt.wantErr)
			}
		})
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("failed runs left %d files in the artifact dir", len(ents))
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "x.gif")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("x.gif written outside the artifact dir: %v", err)
	}
}

func TestRunUnwritableDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p := model.DefaultParams()
	_, latent := model.Encode(p, "p", 1)
	ls := model.LatentSpec(p)
	lt, _ := tensor.FromFloat32(ls.Name, ls.Shape, latent)
	_, err := decoder.New().Run(context.Background(), sdk.Request{ID: "r", ArtifactDir: filepath.Join(file, "sub")}, []tensor.Tensor{lt})
	if err == nil || !strings.HasPrefix(err.Error(), "decoder: artifact directory: ") {
		t.Fatalf("err = %v, want decoder: artifact directory: ...", err)
	}
}

// TestArtifactFollowsUmask: the artifact's mode is 0666 less the umask,
// as cp makes files: 0640 under umask 027, 0644 under 022.
func TestArtifactFollowsUmask(t *testing.T) {
	for umask, want := range map[int]os.FileMode{0o027: 0o640, 0o022: 0o644, 0o077: 0o600} {
		old := syscall.Umask(umask)
		art, err := newPhases(t, nil).run(context.Background(), sdk.Request{ID: "u1", Prompt: "p", Seed: 1, Steps: 1, ArtifactDir: t.TempDir()})
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		path := art.Path
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("umask %03o: mode %v (%v), want %v", umask, fi.Mode().Perm(), err, want)
		}
		assertNoTemp(t, filepath.Dir(path))
	}
}
