package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// LockFile is the name of the file `supervisor plugins lock` writes beside
// the config (or in the current directory, for the embedded default), and
// that start reads from there: the SHA-256 of each plugin binary.
const LockFile = "phased.lock.hcl"

// pinBlock is one pin, in a config or in the lock file:
//
//	pin "phased-phase-encoder" {
//	  sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//	}
type pinBlock struct {
	Binary   string    `hcl:"binary,label"`
	SHA256   string    `hcl:"sha256"`
	DefRange hcl.Range `hcl:",def_range"`
}

var (
	sha256RE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
	binaryNameRE = regexp.MustCompile(`^phased-(phase|policy)-[a-z][a-z0-9_-]{0,31}$`)
)

// addPins checks pin blocks and adds them to pins, recording in pinnedAt
// where each was given; a binary pinned twice with two hashes is an error
// that names both places.
func addPins(pins map[string]string, pinnedAt map[string]Pos, blocks []pinBlock) []error {
	var errs []error
	for _, b := range blocks {
		at := where(b.DefRange)
		switch {
		case !binaryNameRE.MatchString(b.Binary):
			errs = append(errs, fmt.Errorf("%s: pin %q: not a plugin binary name; expected phased-phase-NAME or phased-policy-NAME", at, b.Binary))
			continue
		case !sha256RE.MatchString(b.SHA256):
			errs = append(errs, fmt.Errorf("%s: pin %q: sha256 %q is not 64 lower-case hex digits (as sha256sum prints)", at, b.Binary, b.SHA256))
			continue
		}
		if old, ok := pins[b.Binary]; ok && old != b.SHA256 {
			errs = append(errs, fmt.Errorf("%s: pin %q: sha256 %s, but %s pins %s", at, b.Binary, b.SHA256, pinnedAt[b.Binary], old))
			continue
		}
		pins[b.Binary], pinnedAt[b.Binary] = b.SHA256, posOf(b.DefRange)
	}
	return errs
}

// LockPath returns where the lock file of a config lives: beside the config
// file, or in the current directory for the embedded default ("").
func LockPath(configPath string) string {
	if configPath == "" {
		return LockFile
	}
	return filepath.Join(filepath.Dir(configPath), LockFile)
}

// ApplyLock reads the lock file at path, if there is one, and adds its pins
// to c's; a pin that contradicts the config's is an error naming both.
func (c *Config) ApplyLock(path string) error {
	src, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock file: %w", err)
	}
	f, diags := hclparse.NewParser().ParseHCL(src, path)
	if diags.HasErrors() {
		return diagError(diags)
	}
	var lock struct {
		Pins []pinBlock `hcl:"pin,block"`
	}
	if diags := gohcl.DecodeBody(f.Body, nil, &lock); diags.HasErrors() {
		return diagError(diags)
	}
	if c.Pins == nil {
		c.Pins, c.pinnedAt = map[string]string{}, map[string]Pos{}
	}
	if errs := addPins(c.Pins, c.pinnedAt, lock.Pins); len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return nil
}

// PinnedAt says where the pin of a binary was given (FILE:LINE:COL).
func (c *Config) PinnedAt(binary string) string { return c.pinnedAt[binary].String() }

// PinPos says where the pin of a binary was given; zero when it has none.
func (c *Config) PinPos(binary string) Pos { return c.pinnedAt[binary] }

// FormatLock returns a lock file pinning each binary to its hash.
func FormatLock(pins map[string]string) []byte {
	var b strings.Builder
	b.WriteString("# Written by `supervisor plugins lock`: the SHA-256 of each plugin binary.\n")
	b.WriteString("# phased refuses to start a pinned plugin whose binary has another hash.\n")
	b.WriteString("# Run `supervisor plugins lock` again after rebuilding or upgrading plugins.\n")
	for _, name := range slices.Sorted(maps.Keys(pins)) {
		fmt.Fprintf(&b, "\npin %q {\n  sha256 = %q\n}\n", name, pins[name])
	}
	return []byte(b.String())
}
