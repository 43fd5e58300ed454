package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestJournal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	j, epoch, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if epoch != 1 {
		t.Errorf("first epoch %d, want 1", epoch)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	// A second supervisor on the same directory is refused while the
	// first holds it.
	if _, _, err := openJournal(dir); !errors.Is(err, ErrStateDirInUse) {
		t.Errorf("second open: %v, want ErrStateDirInUse", err)
	}
	now := time.Unix(1700000000, 0).UTC()
	running := RequestInfo{ID: "r000002", State: StateRunning, Prompt: "p", Seed: 3, Steps: 4, Key: "k", Submitted: now,
		Events: []Event{{What: "accepted"}}}
	done := RequestInfo{ID: "r000001", State: StateDone, Prompt: "q", Steps: 1, Artifact: "/a.gif", SHA256: "ab", Submitted: now, Finished: &now}
	for _, info := range []RequestInfo{running, done} {
		if err := j.put(info); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.put(RequestInfo{ID: "r000009", State: StateQueued}); err != nil {
		t.Fatal(err)
	}
	if err := j.forget([]string{"r000009"}); err != nil {
		t.Fatal(err)
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}

	j, epoch, err = openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	if epoch != 2 {
		t.Errorf("second epoch %d, want 2", epoch)
	}
	infos, last, err := j.load()
	if err != nil {
		t.Fatal(err)
	}
	running.Events = nil // not journaled
	if want := []RequestInfo{done, running}; !reflect.DeepEqual(infos, want) {
		t.Errorf("loaded %+v\nwant %+v", infos, want)
	}
	if last != 9 {
		t.Errorf("last request number %d, want 9 (forgotten ids are not given again)", last)
	}
}

func TestJournalCorrupt(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, JournalFile), []byte("not a bolt database, but long enough to be read as one......"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	_, _, err := openJournal(dir)
	if err == nil {
		t.Fatal("opened a corrupt journal")
	}
	for _, want := range []string{filepath.Join(dir, JournalFile), "move it aside"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestRequestNumber(t *testing.T) {
	for id, want := range map[string]uint64{"r000042": 42, "r1": 1, "x": 0, "": 0, "r-1": 0} {
		if got := requestNumber(id); got != want {
			t.Errorf("requestNumber(%q) = %d, want %d", id, got, want)
		}
	}
}

// BenchmarkJournalPut is what journaling adds to every submit (and again
// to every end): one bbolt transaction, fsynced.
func BenchmarkJournalPut(b *testing.B) {
	j, _, err := openJournal(filepath.Join(b.TempDir(), "state"))
	if err != nil {
		b.Fatal(err)
	}
	defer j.close()
	info := RequestInfo{State: StateQueued, Prompt: "a red fox running through fresh snow", Seed: 7, Steps: 20, Submitted: time.Now()}
	b.ResetTimer()
	for i := range b.N {
		info.ID = fmt.Sprintf("r%06d", i+1)
		if err := j.put(info); err != nil {
			b.Fatal(err)
		}
	}
}
