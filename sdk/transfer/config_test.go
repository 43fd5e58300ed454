package transfer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewConfig(t *testing.T) {
	dir := shortDir(t)
	long := filepath.Join(dir, strings.Repeat("d", 60))
	if err := os.Mkdir(long, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a, b := curveKeys(t), curveKeys(t)
	tests := []struct {
		name    string
		cfg     Config
		wantErr []string // substrings of the error; none: no error
	}{
		{"valid", Config{Dir: dir, Name: "encoder.1234"}, nil},
		{"valid with shm dir", Config{Dir: dir, Name: "a_b-c", ShmDir: dir}, nil},
		{"dir too long", Config{Dir: long, Name: "x"},
			[]string{"transfer: config: Dir", "too long", "the unix socket limit is 107", "at most 58 bytes"}},
		{"empty dir", Config{Name: "x"}, []string{"Dir is empty"}},
		{"missing dir", Config{Dir: filepath.Join(dir, "nope"), Name: "x"}, []string{"transfer: config: Dir:", "no such file"}},
		{"dir is a file", Config{Dir: file, Name: "x"}, []string{"is not a directory"}},
		{"missing shm dir", Config{Dir: dir, Name: "x", ShmDir: filepath.Join(dir, "nope")}, []string{"ShmDir"}},
		{"empty name", Config{Dir: dir}, []string{`Name "" must match`}},
		{"slash in name", Config{Dir: dir, Name: "a/b"}, []string{`Name "a/b" must match ^[A-Za-z0-9_.-]{1,64}$`}},
		{"space in name", Config{Dir: dir, Name: "a b"}, []string{"must match"}},
		{"name too long", Config{Dir: dir, Name: strings.Repeat("n", 65)}, []string{"must match"}},
		{"curve", Config{Dir: dir, Name: "x", Curve: &a}, nil},
		{"curve pair mismatched", Config{Dir: dir, Name: "x", Curve: &CurveKeys{Public: a.Public, Secret: b.Secret}},
			[]string{"transfer: config: Curve: the public key is not the secret key's"}},
		{"curve key not z85", Config{Dir: dir, Name: "x", Curve: &CurveKeys{Public: "x", Secret: a.Secret}},
			[]string{"transfer: config: Curve: the public key is not 40 characters of Z85"}},
		{"curve without keys", Config{Dir: dir, Name: "x", Curve: &CurveKeys{}}, []string{"transfer: config: Curve: the public key is not"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.cfg)
			if len(tt.wantErr) == 0 {
				if err != nil || m == nil {
					t.Fatalf("New = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded")
			}
			if strings.Count(err.Error(), "transfer: ") != 1 {
				t.Errorf("error %q: want the prefix once", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// New has no side effects.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("New created files: %v", entries)
	}
}

func TestSweepSegments(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"phased-enc.12-1-5", "phased-enc.12-2-6", "phased-enc.123-1-5", "phased-dec.12-1-5", "other"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n, err := SweepSegments(dir, "enc.12")
	if err != nil || n != 2 {
		t.Fatalf("SweepSegments = %d, %v; want 2", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(left) != 3 {
		t.Fatalf("left %v, want the other instance's, the other pid's and a foreign file", left)
	}
	if _, err := SweepSegments(dir, "../x"); err == nil {
		t.Fatal("a bad name was accepted")
	}
}

// TestSegmentOwner: a segment name is read from the right, so instance
// ids with '.' and '-' in them still give their owner, and a sweep of one
// process never takes another's segments whose name merely starts alike.
func TestSegmentOwner(t *testing.T) {
	for seg, want := range map[string]string{
		"phased-encoder-0.42-17-1":      "encoder-0.42",
		"phased-wan2.1-t2v-0.42-17-1":   "wan2.1-t2v-0.42",
		"phased-wan2.1-t2v-0.42-free-9": "wan2.1-t2v-0.42",
		"phased-a.1-x.5-3-1":            "a.1-x.5",
		"phased-a.1-out-3":              "a.1",
		"phased-a.1-lends-0":            "a.1",
		"phased-a.1-in-3":               "", // in is neither a room, "free", "out" nor "lends"
		"phased-a.1-x-17":               "", // x is neither a room nor "free"
		"phased--1-2":                   "",
		"phased-a-1":                    "",
		"phased-a-free-":                "",
		"phased-a-1-free":               "",
		"other-a.1-1-2":                 "",
		"phased-a/b.1-1-2":              "",
	} {
		got, ok := SegmentOwner(seg)
		if !ok {
			got = ""
		}
		if got != want {
			t.Errorf("SegmentOwner(%q) = %q, %t; want %q", seg, got, ok, want)
		}
	}
	dir := t.TempDir()
	for _, n := range []string{"phased-a.1-3-1", "phased-a.1-free-2", "phased-a.1-out-0", "phased-a.1-lends-0", "phased-a.1-x.5-3-1", "phased-a.1-x.5-free-4", "phased-a.10-1-1"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n, err := SweepSegments(dir, "a.1")
	if err != nil || n != 4 {
		t.Fatalf("SweepSegments(a.1) = %d, %v; want 4", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "phased-*"))
	if len(left) != 3 {
		t.Fatalf("left after the sweep: %q; want the segments of a.1-x.5 and a.10", left)
	}
	for name, want := range map[string][2]any{
		"encoder-0.42":   {"encoder-0", 42},
		"wan2.1-t2v-0.7": {"wan2.1-t2v-0", 7},
		"encoder-0":      {"", 0},
		"encoder-0.x":    {"", 0},
		".5":             {"", 0},
		"encoder-0.-5":   {"", 0},
		"encoder-0.+5":   {"", 0},
	} {
		inst, pid, ok := SplitProcessName(name)
		if inst != want[0] || pid != want[1] || ok != (want[1] != 0) {
			t.Errorf("SplitProcessName(%q) = %q, %d, %t; want %v", name, inst, pid, ok, want)
		}
	}
	if got := ProcessName("wan2.1-t2v-0", 7); got != "wan2.1-t2v-0.7" {
		t.Errorf("ProcessName = %q", got)
	}
}
