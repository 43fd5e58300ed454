package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
)

// ErrPluginNotFound is wrapped when no binary of the wanted name is in the
// plugin directory.
var ErrPluginNotFound = errors.New("plugin not found")

// Catalog finds plugin binaries in a plugin directory by name:
// phased-phase-NAME and phased-policy-NAME, Terraform style.
type Catalog struct {
	Dir string
}

// BinaryName returns the file name of a plugin binary.
func BinaryName(kind sdk.Kind, name string) string {
	return "phased-" + string(kind) + "-" + name
}

// Find returns the path of the plugin binary of the given kind and name. The
// error names the plugin, the directory searched and what is there.
func (c Catalog) Find(kind sdk.Kind, name string) (string, error) {
	path := filepath.Join(c.Dir, BinaryName(kind, name))
	fi, err := os.Stat(path)
	if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return path, nil
	}
	what := "is not an executable file"
	if errors.Is(err, os.ErrNotExist) {
		what = "does not exist"
	}
	return "", fmt.Errorf("%w: %s plugin %q: %s %s; %s", ErrPluginNotFound, kind, name, path, what, c.describe())
}

// describe says what the plugin directory holds, for errors.
func (c Catalog) describe() string {
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return fmt.Sprintf("the plugin directory %s cannot be read (%v); build the plugins with `make build` or set plugin_dir", c.Dir, err)
	}
	var found []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "phased-") {
			found = append(found, e.Name())
		}
	}
	if len(found) == 0 {
		return fmt.Sprintf("the plugin directory %s holds no phased-* plugin", c.Dir)
	}
	sort.Strings(found)
	return fmt.Sprintf("plugins in %s: %s", c.Dir, strings.Join(found, ", "))
}

// PluginInfo describes one plugin binary of a plugin directory, as
// `supervisor plugins` lists it.
type PluginInfo struct {
	Binary      string `json:"binary"` // phased-KIND-NAME
	Kind        string `json:"kind"`
	Name        string `json:"name"`
	Path        string `json:"path"`
	SHA256      string `json:"sha256"`
	Version     string `json:"version,omitempty"`
	APIVersions []int  `json:"api_versions,omitempty"`
	Pin         string `json:"pin,omitempty"`   // the pinned SHA-256, if any
	Error       string `json:"error,omitempty"` // why it could not be asked
}

// Inspect hashes every phased plugin binary in the catalog's directory and
// starts each one briefly to ask its Info (version, API versions). pins,
// if given, are reported beside the hashes. Binaries that fail to start
// are listed with the error.
func (c Catalog) Inspect(ctx context.Context, pins map[string]string) ([]PluginInfo, error) {
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("plugin directory: %w", err)
	}
	sockets, err := os.MkdirTemp("", "phased-inspect-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockets)
	var out []PluginInfo
	for _, e := range entries {
		for _, kind := range []sdk.Kind{sdk.KindPhase, sdk.KindPolicy, sdk.KindScaler} {
			name, ok := strings.CutPrefix(e.Name(), BinaryName(kind, ""))
			if !ok || name == "" {
				continue
			}
			path, err := c.Find(kind, name)
			if err != nil {
				continue
			}
			pi := PluginInfo{Binary: e.Name(), Kind: string(kind), Name: name, Path: path, Pin: pins[e.Name()]}
			if pi.SHA256, err = FileSHA256(path); err != nil {
				pi.Error = err.Error()
				out = append(out, pi)
				continue
			}
			proc, err := startProcess(ctx, processConfig{
				Name: name, Path: path, Kind: kind, APIVersion: sdk.APIVersion(kind), Logger: hclog.NewNullLogger(),
				SocketDir: sockets, StartTimeout: 10 * time.Second, LogLevel: "error",
			})
			if err != nil {
				pi.Error = err.Error()
			} else {
				pi.Version, pi.APIVersions = proc.info.Version, proc.info.APIVersions
				proc.kill()
			}
			out = append(out, pi)
		}
	}
	return out, nil
}

// List returns the names of the plugins of a kind in the directory,
// sorted.
func (c Catalog) List(kind sdk.Kind) []string {
	entries, err := os.ReadDir(c.Dir)
	if err != nil {
		return nil
	}
	var out []string
	prefix := BinaryName(kind, "")
	for _, e := range entries {
		if name, ok := strings.CutPrefix(e.Name(), prefix); ok && name != "" {
			if _, err := c.Find(kind, name); err == nil {
				out = append(out, name)
			}
		}
	}
	return out
}
