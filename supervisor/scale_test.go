package supervisor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/phased/phased/supervisor/config"
)

// TestScaleFile: the counts Scale keeps in the state directory are the
// ones a supervisor started again starts with, within min and max, unless
// the config's instances changed since; a damaged file is ignored.
func TestScaleFile(t *testing.T) {
	dir := t.TempDir()
	s := New(config.Default(), Options{StateDir: dir})
	tr := config.Phase{Name: "transformer", Instances: 2, Min: 1, Max: 4}
	enc := config.Phase{Name: "encoder", Instances: 1, Min: 1, Max: 1}
	if n := s.startCount(tr, s.loadScale()); n != 2 {
		t.Fatalf("no file: %d instances, want the config's 2", n)
	}
	if err := s.saveScale(&phase{cfg: tr}, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.saveScale(&phase{cfg: enc}, 1); err != nil {
		t.Fatal(err)
	}
	counts := s.loadScale()
	if n := s.startCount(tr, counts); n != 3 {
		t.Errorf("scaled to 3: starts %d", n)
	}
	narrower := tr
	narrower.Max = 2
	if n := s.startCount(narrower, counts); n != 2 {
		t.Errorf("scaled to 3, max now 2: starts %d, want 2", n)
	}
	changed := tr
	changed.Instances, changed.Max = 4, 4
	if n := s.startCount(changed, counts); n != 4 {
		t.Errorf("the config's instances changed to 4: starts %d, want the config's", n)
	}
	if _, err := os.Stat(filepath.Join(dir, scaleFile+".new")); !os.IsNotExist(err) {
		t.Errorf("the file written aside is left: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, scaleFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := s.startCount(tr, s.loadScale()); n != 2 {
		t.Errorf("a damaged file: starts %d, want the config's 2", n)
	}
}
