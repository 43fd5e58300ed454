// Package doctest reads the marked tables of the project's docs, for the
// tests that hold a doc to the code: a table is the one that follows a
// line <!-- marker --> (blank lines allowed in between).
package doctest

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// Row is one row of a marked table: its cells, trimmed and without
// backticks, and where it is.
type Row struct {
	Path  string
	Line  int
	Cells []string
}

// At says where the row is, PATH:LINE, for an error.
func (r Row) At() string { return fmt.Sprintf("%s:%d", r.Path, r.Line) }

// Lines returns the lines of the doc at path.
func Lines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return strings.Split(string(b), "\n")
}

// After returns the index of the first line that is not blank after the
// line <!-- marker --> of lines, the doc at path.
func After(t testing.TB, path string, lines []string, marker string) int {
	t.Helper()
	i := slices.Index(lines, "<!-- "+marker+" -->")
	if i < 0 {
		t.Fatalf("%s: no line <!-- %s --> marking a table", path, marker)
	}
	for i++; i < len(lines) && strings.TrimSpace(lines[i]) == ""; i++ {
	}
	return i
}

// Table returns the rows of the table marked marker in the doc at path,
// its header and separator left out; each row must have at least
// minCells cells.
func Table(t testing.TB, path, marker string, minCells int) []Row {
	t.Helper()
	lines := Lines(t, path)
	var rows []Row
	for i := After(t, path, lines, marker); i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
		var cells []string
		for _, c := range strings.Split(strings.Trim(strings.TrimSpace(lines[i]), "|"), "|") {
			cells = append(cells, strings.Trim(strings.TrimSpace(c), "`"))
		}
		rows = append(rows, Row{Path: path, Line: i + 1, Cells: cells})
	}
	if len(rows) < 3 {
		t.Fatalf("%s: the table after <!-- %s --> has no rows", path, marker)
	}
	rows = rows[2:]
	for _, r := range rows {
		if len(r.Cells) < minCells {
			t.Fatalf("%s: table %s: want at least %d cells, got %q", r.At(), marker, minCells, r.Cells)
		}
	}
	return rows
}
