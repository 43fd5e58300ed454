// Package e2e tests phased end to end with the real binaries: the
// supervisor, the built-in phase plugins and the round-robin policy, built
// once by TestMain, started as real processes, talking over real sockets
// and shared memory.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
)

var (
	binDir        string // holds supervisor and plugins/
	supervisorBin string
	pluginDir     string
	moduleRoot    string // the repository, where go build runs
)

func TestMain(m *testing.M) {
	// As bin/supervisor does: the supervisor the benchmarks start runs
	// in this process.
	sdk.SetGCFloor(hclog.NewNullLogger())
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "phased-e2e-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	binDir, pluginDir = dir, filepath.Join(dir, "plugins")
	supervisorBin = filepath.Join(dir, "supervisor")
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return 0, fmt.Errorf("go list -m: %w", err)
	}
	moduleRoot = strings.TrimSpace(string(root))
	args := []string{"build"}
	if raceEnabled {
		args = append(args, "-race")
	}
	builds := [][]string{
		{"-o", binDir + "/", "./supervisor/cmd/supervisor"},
		{"-o", pluginDir + "/", "./plugins/encoder/cmd/phased-phase-encoder", "./plugins/transformer/cmd/phased-phase-transformer",
			"./plugins/decoder/cmd/phased-phase-decoder", "./policies/...", "./scalers/..."},
		{"-o", filepath.Join(dir, "badplugin"), "./supervisor/e2e/testdata/badplugin"},
		{"-o", filepath.Join(pluginDir, "phased-policy-faulty"), "./supervisor/e2e/testdata/faultypolicy"},
		{"-o", filepath.Join(pluginDir, "phased-phase-forker"), "./supervisor/e2e/testdata/forker"},
		{"-o", filepath.Join(pluginDir, "phased-phase-flaky"), "./supervisor/e2e/testdata/flaky"},
	}
	for _, b := range builds {
		cmd := exec.Command("go", append(args, b...)...)
		cmd.Dir = moduleRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("go build %v: %v\n%s", b, err, out)
		}
	}
	// The faulty policy under the name that makes it slow to start.
	if err := os.Symlink(filepath.Join(pluginDir, "phased-policy-faulty"), filepath.Join(pluginDir, "phased-policy-gated")); err != nil {
		return 0, err
	}
	if err := linkPythonPhases(pluginDir); err != nil {
		return 0, err
	}
	if raceEnabled {
		// A race-built process sleeps GORACE's atexit_sleep_ms (1 s by
		// default) before it exits: every plugin, supervisor and CLI
		// call of the suite would pay it (a release of a pipeline took
		// 6 s, 0.13 s without). Children inherit this environment; a
		// user's own GORACE options come after, so theirs win. Races
		// are still reported (harness: a plugin's in the supervisor's
		// log fails its test).
		os.Setenv("GORACE", strings.TrimSpace("atexit_sleep_ms=0 "+os.Getenv("GORACE")))
	}
	return m.Run(), nil
}
