package tensor

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/phased/phased/internal/doctest"
)

// protocolDoc is the language-neutral protocol specification, whose dtype
// table and checksum examples must match this package.
const protocolDoc = "../../docs/protocol.md"

// TestProtocolDocDTypes checks the dtype table of the protocol doc against
// DType, both ways: every row names a valid dtype with its number, name
// and size, and every valid dtype has a row.
func TestProtocolDocDTypes(t *testing.T) {
	rows := doctest.Table(t, protocolDoc, "dtype-table", 3)
	seen := map[DType]int{}
	for _, r := range rows {
		n, err := strconv.ParseUint(r.Cells[0], 10, 32)
		if err != nil {
			t.Errorf("%s: dtype number %q: %v", r.At(), r.Cells[0], err)
			continue
		}
		d := DType(n)
		if prev, ok := seen[d]; ok {
			t.Errorf("%s: dtype %d is listed twice (also line %d)", r.At(), n, prev)
		}
		seen[d] = r.Line
		if !d.Valid() {
			t.Errorf("%s: the doc lists dtype %d (%s), which the code does not know", r.At(), n, r.Cells[1])
			continue
		}
		if r.Cells[1] != d.String() {
			t.Errorf("%s: dtype %d: the doc names it %q, the code %q", r.At(), n, r.Cells[1], d.String())
		}
		if size := strconv.FormatInt(d.Size(), 10); r.Cells[2] != size {
			t.Errorf("%s: dtype %d (%s): the doc says %s bytes per element, the code %s", r.At(), n, d, r.Cells[2], size)
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
	for _, r := range doctest.Table(t, protocolDoc, "checksum-examples", 4) {
		b, ok := checksumInput(r.Cells[0])
		if !ok {
			t.Errorf("%s: input %q: the test cannot build it (use b\"\", b\"abc\" or bytes(i %% 251 for i in range(N)))", r.At(), r.Cells[0])
			continue
		}
		if got := strconv.Itoa(len(b)); r.Cells[1] != got {
			t.Errorf("%s: input %s is %s bytes, the doc says %s", r.At(), r.Cells[0], got, r.Cells[1])
		}
		sum := Checksum(b)
		if got := fmt.Sprintf("%016x", sum); r.Cells[2] != got {
			t.Errorf("%s: checksum of %s: the doc says %s, the code computes %s", r.At(), r.Cells[0], r.Cells[2], got)
		}
		if got := strconv.FormatUint(sum, 10); r.Cells[3] != got {
			t.Errorf("%s: checksum of %s: the doc says %s (decimal), the code computes %s", r.At(), r.Cells[0], r.Cells[3], got)
		}
	}
}
