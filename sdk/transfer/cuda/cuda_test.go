package cuda

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestCheckRange(t *testing.T) {
	const size = 4096
	cases := []struct {
		name    string
		off, n  int64
		wantErr string // "" when the range is inside
	}{
		{"whole", 0, size, ""},
		{"empty at start", 0, 0, ""},
		{"empty at end", size, 0, ""},
		{"last byte", size - 1, 1, ""},
		{"one byte past the end", size - 1, 2, "bytes [4095, 4097) are outside the 4096-byte buffer"},
		{"offset past the end", size + 1, 0, "bytes [4097, 4097) are outside"},
		{"longer than the buffer", 0, size + 1, "bytes [0, 4097) are outside"},
		{"negative offset", -1, 1, "negative offset -1"},
		{"negative length", 0, -1, "length -1"},
		{"offset plus length overflows", 1, math.MaxInt64, "are outside the 4096-byte buffer"},
		{"huge offset", math.MaxInt64, math.MaxInt64, "are outside the 4096-byte buffer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRange("copy", size, tc.off, tc.n)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("checkRange(%d, %d) = %v, want nil", tc.off, tc.n, err)
				}
				return
			}
			if !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("checkRange(%d, %d) = %v, want ErrOutOfRange", tc.off, tc.n, err)
			}
			if !strings.HasPrefix(err.Error(), "cuda: copy: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("checkRange(%d, %d) = %q, want the prefix \"cuda: copy: \" and %q", tc.off, tc.n, err, tc.wantErr)
			}
		})
	}
}

func TestHandleRoundTrip(t *testing.T) {
	var h Handle
	for i := range h {
		h[i] = byte(255 - i)
	}
	got, err := ParseHandle(h.String())
	if err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Fatalf("ParseHandle(%s) = %s", h, got)
	}
	if len(h.String()) != 2*HandleSize {
		t.Fatalf("String has %d digits, want %d", len(h.String()), 2*HandleSize)
	}
}

func TestParseHandleErrors(t *testing.T) {
	cases := []struct {
		name, in, wantErr string
	}{
		{"empty", "", "want 128 hex digits, got 0"},
		{"short", strings.Repeat("ab", 63), "got 126"},
		{"long", strings.Repeat("ab", 65), "got 130"},
		{"not hex", strings.Repeat("zz", 64), "invalid byte"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseHandle(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ParseHandle(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
}
