// Package decoder is phased's built-in last phase: it decodes the refined
// latent from the transformer phase into an animated GIF with the built-in
// text-to-video model (package model), writes it to
// <ArtifactDir>/<request id>.gif, and reports it as the request's artifact.
//
// Lifecycle: New builds a Phase without side effects; Configure, called
// once before anything else, sets the model params (DefaultParams when it
// is never called); Info, Inputs and Run are then safe to call
// concurrently. The phase holds no resources, so it has no Close.
package decoder

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// Name is the plugin's name, used in its Info, its errors and the
// supervisor's config (plugin = "decoder").
const Name = "decoder"

// Version is the plugin's own version, reported in its Info.
const Version = "0.1.0"

// MediaType is the media type of the artifacts.
const MediaType = "image/gif"

// MaxIDLen is the longest request id that Run accepts, so that the file
// name fits in the 255 bytes most file systems allow.
const MaxIDLen = 200

// Errors about the request that Run wraps.
var (
	ErrBadID         = errors.New("request id is not a safe file name")
	ErrNoArtifactDir = errors.New("request has no artifact directory")
)

// Phase is the decoder phase. Build it with New.
type Phase struct {
	set atomic.Pointer[settings] // nil until Configure
}

// settings is what Configure sets.
type settings struct {
	params model.Params
	log    hclog.Logger
}

// New returns a decoder with the default model params. It has no side
// effects.
func New() *Phase { return &Phase{} }

// Configure parses cfg.Params with model.ParseParams (see the README for
// the keys) and keeps cfg.Logger.
func (d *Phase) Configure(_ context.Context, cfg sdk.Config) error {
	p, err := model.ParseParams(cfg.Params)
	if err != nil {
		return fmt.Errorf("%s: params: %w", Name, err)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	d.set.Store(&settings{params: p, log: log})
	log.Debug("configured", "params", fmt.Sprintf("%+v", p))
	return nil
}

// ValidateParams checks params as Configure does, without configuring
// anything: one problem per unknown or bad param (model.ParamProblems).
func (d *Phase) ValidateParams(_ context.Context, params map[string]string) ([]sdk.ParamProblem, error) {
	return model.ParamProblems(params), nil
}

// Info describes the plugin.
func (d *Phase) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: Name, Kind: sdk.KindPhase, Version: Version, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

// Inputs returns the latent spec (model.LatentSpec), the transformer's
// output.
func (d *Phase) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	return []tensor.Spec{model.LatentSpec(d.Params())}, nil
}

// Run decodes the input latent with model.Decode and writes the GIF
// atomically and exclusively to <req.ArtifactDir>/<req.ID>.gif (a
// temporary file in the same directory, synced, then hard-linked to its
// name, which fails when a file with other bytes has that name: a result
// is never replaced, and an attempt of the same request that died after
// writing leaves the same bytes, which stand; mode 0666 less the umask;
// the directory is created 0755 if needed; the file and the directory
// are fsynced unless req.NoSync says the supervisor keeps no journal). It returns the artifact with its absolute path,
// SHA-256 and size. req.ID must be 1 to MaxIDLen bytes of [A-Za-z0-9_.-]
// (else ErrBadID) and req.ArtifactDir must be set (else ErrNoArtifactDir).
// When ctx is done before the rename, no file is left and the error wraps
// ctx.Err().
func (d *Phase) Run(ctx context.Context, req sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	set := d.settings()
	p := set.params
	if err := checkID(req.ID); err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	if req.ArtifactDir == "" {
		return sdk.Output{}, fmt.Errorf("%s: %w: set the artifact directory in the config", Name, ErrNoArtifactDir)
	}
	if err := model.CheckInputs([]tensor.Spec{model.LatentSpec(p)}, in); err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	if err := ctx.Err(); err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	data, err := model.Decode(p, in[0].Float32s())
	if err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	path, err := writeFile(ctx, req.ArtifactDir, req.ID+".gif", data, !req.NoSync)
	if err != nil {
		return sdk.Output{}, fmt.Errorf("%s: %w", Name, err)
	}
	sum := sha256.Sum256(data)
	art := &sdk.Artifact{Path: path, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), MediaType: MediaType}
	set.log.Debug("wrote artifact", "request", req.ID, "path", art.Path, "bytes", art.Size)
	return sdk.Output{Artifact: art}, nil
}

// checkID returns an error wrapping ErrBadID unless id is a safe file name.
func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("%w: %q: use 1 to %d bytes", ErrBadID, id, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("%w: %q: use only letters, digits, '_', '.' and '-'", ErrBadID, id)
		}
	}
	return nil
}

// writeFile writes data to dir/name atomically and returns the file's
// absolute path; durable, it fsyncs the file and the directory before it
// returns. name must be a plain file name.
func writeFile(ctx context.Context, dir, name string, data []byte, durable bool) (path string, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("artifact directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("artifact directory: %w", err)
	}
	f, err := createTemp(dir, "."+name+".tmp-")
	if err != nil {
		return "", fmt.Errorf("artifact: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreNotExist(os.Remove(tmp)))
		}
	}()
	_, err = f.Write(data)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("artifact: %w", err)
	}
	if err = ctx.Err(); err != nil {
		return "", err
	}
	path = filepath.Join(dir, name)
	// A link, not a rename: it fails when path exists, so that no
	// result is ever replaced (a rename would, silently). A file with
	// the same bytes is this request's own, written by an attempt that
	// died before it could report it (ids are unique): it stands.
	if err = os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			if old, rerr := os.ReadFile(path); rerr == nil && bytes.Equal(old, data) {
				return path, errors.Join(os.Remove(tmp), syncDir(dir, durable))
			}
			err = fmt.Errorf("%w with other bytes: %s; results are never replaced: move it away, or write to another artifact_dir", ErrArtifactExists, path)
		}
		return "", fmt.Errorf("artifact: %w", err)
	}
	if err = os.Remove(tmp); err != nil {
		return "", fmt.Errorf("artifact: %w", err)
	}
	return path, syncDir(dir, durable)
}

// ErrArtifactExists is wrapped by Run's error when a file already has
// the artifact's name.
var ErrArtifactExists = errors.New("the artifact file exists already")

// createTemp creates a new file prefix+random in dir, with mode 0666 less
// the process's umask, as cp and every tool that writes files for a user
// do (os.CreateTemp makes 0600).
func createTemp(dir, prefix string) (*os.File, error) {
	for range 100 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(dir, prefix+hex.EncodeToString(b[:])), os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o666)
		if !errors.Is(err, os.ErrExist) {
			return f, err
		}
	}
	return nil, fmt.Errorf("no free temporary name in %s", dir)
}

// syncDir makes a new name in dir durable, when durable.
func syncDir(dir string, durable bool) error {
	if !durable {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("artifact directory: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("artifact directory: sync: %w", err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Params returns the model params in use: DefaultParams until Configure.
func (d *Phase) Params() model.Params { return d.settings().params }

func (d *Phase) settings() *settings {
	if s := d.set.Load(); s != nil {
		return s
	}
	return &settings{params: model.DefaultParams(), log: hclog.NewNullLogger()}
}

var (
	_ sdk.Phase           = (*Phase)(nil)
	_ sdk.Configurer      = (*Phase)(nil)
	_ sdk.ParamsValidator = (*Phase)(nil)
)
