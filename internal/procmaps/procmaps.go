// Package procmaps reads this process's memory mappings
// (/proc/self/maps), for tests that check how shared-memory files are
// mapped: by whom, read-only or not, and whether any mapping is left.
package procmaps

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// Of returns the lines of /proc/self/maps that map a file whose path
// holds s.
func Of(tb testing.TB, s string) []string {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// Perms returns the permissions of those mappings, sorted and joined by
// spaces, e.g. "r--s rw-s".
func Perms(tb testing.TB, s string) string {
	tb.Helper()
	lines := Of(tb, s)
	perms := make([]string, len(lines))
	for i, l := range lines {
		perms[i] = strings.Fields(l)[1]
	}
	slices.Sort(perms)
	return strings.Join(perms, " ")
}
