package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

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
