package twoproc

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/phased/phased/sdk/transfer"
)

// runDir returns a new short directory for room sockets, removed when the
// test ends.
func runDir(tb testing.TB) string {
	tb.Helper()
	// In memory, as the supervisor's run directory: a socket file on a
	// disk file system costs an inode allocation per bind.
	dir, err := os.MkdirTemp(transfer.DefaultShmDir, "2p")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startManager starts a Manager named name.PID in dir, released when the
// test ends.
func startManager(tb testing.TB, dir, name string) *transfer.Manager {
	return startManagerWith(tb, transfer.Config{Dir: dir, Name: fmt.Sprintf("%s.%d", name, os.Getpid())})
}

// startManagerWith starts a Manager of cfg, released when the test ends.
func startManagerWith(tb testing.TB, cfg transfer.Config) *transfer.Manager {
	tb.Helper()
	m, err := transfer.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := m.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := m.Release(context.Background()); err != nil {
			tb.Error(err)
		}
	})
	return m
}
