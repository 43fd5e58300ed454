package tensor

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// protocolDoc is the language-neutral protocol specification, whose dtype
// table and checksum examples must match this package.
const protocolDoc = "../../docs/protocol.md"

// docRow is one row of a marked table in protocolDoc: its cells, trimmed
// and without backticks, and its line number.
type docRow struct {
	line  int
	cells []string
}

// docTable returns the rows (header and separator left out) of the table
// that follows the line "<!-- marker -->" in protocolDoc, blank lines
// allowed in between.
func docTable(t *testing.T, marker string) []docRow {
	t.Helper()
	b, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatalf("read the protocol doc: %v", err)
	}
	lines := strings.Split(string(b), "\n")
	i := slices.Index(lines, "<!-- "+marker+" -->")
	if i < 0 {
		t.Fatalf("%s: no line <!-- %s --> marking a table", protocolDoc, marker)
	}
	for i++; i < len(lines) && strings.TrimSpace(lines[i]) == ""; i++ {
	}
	var rows []docRow
	for ; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
		var cells []string
		for _, c := range strings.Split(strings.Trim(strings.TrimSpace(lines[i]), "|"), "|") {
			cells = append(cells, strings.Trim(strings.TrimSpace(c), "`"))
		}
		rows = append(rows, docRow{line: i + 1, cells: cells})
	}
	if len(rows) < 3 {
		t.Fatalf("%s: the table after <!-- %s --> has no rows", protocolDoc, marker)
	}
	return rows[2:]
}

// at formats a doc line for an error.
func (r docRow) at() string { return fmt.Sprintf("%s:%d", protocolDoc, r.line) }

// TestProtocolDocDTypes checks the dtype table of the protocol doc against
// DType, both ways: every row names a valid dtype with its number, name
// and size, and every valid dtype has a row.
func TestProtocolDocDTypes(t *testing.T) {
	rows := docTable(t, "dtype-table")
	seen := map[DType]int{}
	for _, r := range rows {
		if len(r.cells) < 3 {
			t.Errorf("%s: want | number | name | bytes per element | ..., got %q", r.at(), r.cells)
			continue
		}
		n, err := strconv.ParseUint(r.cells[0], 10, 32)
		if err != nil {
			t.Errorf("%s: dtype number %q: %v", r.at(), r.cells[0], err)
			continue
		}
		d := DType(n)
		if prev, ok := seen[d]; ok {
			t.Errorf("%s: dtype %d is listed twice (also line %d)", r.at(), n, prev)
		}
		seen[d] = r.line
		if !d.Valid() {
			t.Errorf("%s: the doc lists dtype %d (%s), which the code does not know", r.at(), n, r.cells[1])
			continue
		}
		if r.cells[1] != d.String() {
			t.Errorf("%s: dtype %d: the doc names it %q, the code %q", r.at(), n, r.cells[1], d.String())
		}
		if size := strconv.FormatInt(d.Size(), 10); r.cells[2] != size {
			t.Errorf("%s: dtype %d (%s): the doc says %s bytes per element, the code %s", r.at(), n, d, r.cells[2], size)
		}
	}
	// Every valid dtype is listed. Valid dtypes are consecutive from 1;
	// look well past the last one in case a gap is ever left.
	for d := DType(0); d < 256; d++ {
		if _, ok := seen[d]; d.Valid() && !ok {
			t.Errorf("%s: the dtype table lacks dtype %d (%s, %d bytes)", protocolDoc, uint32(d), d, d.Size())
		}
	}
}

// rangeInput is the Python expression of the doc's long checksum inputs.
var rangeInput = regexp.MustCompile(`^bytes\(i % 251 for i in range\((\d+)\)\)$`)

// checksumInput builds the input a row of the checksum examples describes.
func checksumInput(desc string) ([]byte, bool) {
	switch desc {
	case `b""`:
		return []byte{}, true
	case `b"abc"`:
		return []byte("abc"), true
	}
	m := rangeInput.FindStringSubmatch(desc)
	if m == nil {
		return nil, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return nil, false
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b, true
}

// TestProtocolDocChecksums checks the worked checksum values of the
// protocol doc, which implementers in other languages test theirs with,
// and the block size it states.
func TestProtocolDocChecksums(t *testing.T) {
	for _, r := range docTable(t, "checksum-examples") {
		if len(r.cells) < 4 {
			t.Errorf("%s: want | input | bytes | hex | decimal |, got %q", r.at(), r.cells)
			continue
		}
		b, ok := checksumInput(r.cells[0])
		if !ok {
			t.Errorf("%s: input %q: the test cannot build it (use b\"\", b\"abc\" or bytes(i %% 251 for i in range(N)))", r.at(), r.cells[0])
			continue
		}
		if got := strconv.Itoa(len(b)); r.cells[1] != got {
			t.Errorf("%s: input %s is %s bytes, the doc says %s", r.at(), r.cells[0], got, r.cells[1])
		}
		sum := Checksum(b)
		if got := fmt.Sprintf("%016x", sum); r.cells[2] != got {
			t.Errorf("%s: checksum of %s: the doc says %s, the code computes %s", r.at(), r.cells[0], r.cells[2], got)
		}
		if got := strconv.FormatUint(sum, 10); r.cells[3] != got {
			t.Errorf("%s: checksum of %s: the doc says %s (decimal), the code computes %s", r.at(), r.cells[0], r.cells[3], got)
		}
	}
}
