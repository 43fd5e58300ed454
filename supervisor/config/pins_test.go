package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const hashA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
const hashB = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"

func TestPins(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "p.hcl")
	src := "phase \"e\" { plugin = \"encoder\" }\npin \"phased-phase-encoder\" {\n  sha256 = \"" + hashA + "\"\n}\n"
	if err := os.WriteFile(cfgPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if c.Pins["phased-phase-encoder"] != hashA || c.PinnedAt("phased-phase-encoder") != cfgPath+":2:1" {
		t.Fatalf("pins %v at %q", c.Pins, c.PinnedAt("phased-phase-encoder"))
	}
	// No lock file: nothing changes.
	if err := c.ApplyLock(LockPath(cfgPath)); err != nil || len(c.Pins) != 1 {
		t.Fatalf("ApplyLock without a file: %v, %v", err, c.Pins)
	}
	// A lock file written by FormatLock reads back.
	lock := LockPath(cfgPath)
	if lock != filepath.Join(dir, LockFile) || LockPath("") != LockFile {
		t.Fatalf("LockPath: %q, %q", lock, LockPath(""))
	}
	if err := os.WriteFile(lock, FormatLock(map[string]string{"phased-phase-encoder": hashA, "phased-policy-roundrobin": hashB}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.ApplyLock(lock); err != nil || c.Pins["phased-policy-roundrobin"] != hashB || !strings.HasPrefix(c.PinnedAt("phased-policy-roundrobin"), lock+":") {
		t.Fatalf("ApplyLock: %v, %v", err, c.Pins)
	}
	// A lock that contradicts the config names both places.
	if err := os.WriteFile(lock, FormatLock(map[string]string{"phased-phase-encoder": hashB}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ = Load(cfgPath)
	err = c.ApplyLock(lock)
	if err == nil || !strings.Contains(err.Error(), `pin "phased-phase-encoder": sha256 `+hashB+`, but `+cfgPath+`:2:1 pins `+hashA) {
		t.Fatalf("contradicting lock: %v", err)
	}
}

func TestPinErrors(t *testing.T) {
	for _, tc := range []struct{ pin, want string }{
		{`pin "encoder" { sha256 = "` + hashA + `" }`, `pin "encoder": not a plugin binary name; expected phased-phase-NAME or phased-policy-NAME`},
		{`pin "phased-phase-encoder" { sha256 = "ABC" }`, `pin "phased-phase-encoder": sha256 "ABC" is not 64 lower-case hex digits`},
		{`pin "phased-phase-encoder" { sha256 = "` + strings.ToUpper(hashA) + `" }`, `pin "phased-phase-encoder": sha256 "` + strings.ToUpper(hashA) + `" is not 64 lower-case hex digits`},
	} {
		_, err := Parse([]byte("phase \"e\" { plugin = \"encoder\" }\n"+tc.pin+"\n"), "a.hcl")
		if err == nil || !strings.Contains(err.Error(), "a.hcl:2:1: "+tc.want) {
			t.Errorf("%s: %v, want %q", tc.pin, err, tc.want)
		}
	}
}
