package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor/config"
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
	if last != "r000009" {
		t.Errorf("last request id %q, want r000009 (forgotten ids are not given again)", last)
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

func TestLegacyNumber(t *testing.T) {
	for id, want := range map[string]uint64{"r000042": 42, "r1": 1, "x": 0, "": 0, "r-1": 0, "01JDX3M5Q8W4ZC2V7K9N0B6H1T": 0} {
		if got := legacyNumber(id); got != want {
			t.Errorf("legacyNumber(%q) = %d, want %d", id, got, want)
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

// journalWith writes a journal of n done requests in a new state
// directory and returns the directory.
func journalWith(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	j, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		now := time.Unix(1700000000, 0).UTC()
		info := RequestInfo{ID: fmt.Sprintf("r%06d", i+1), State: StateDone, Prompt: strings.Repeat("p", 3000), Steps: 1, Submitted: now, Finished: &now}
		if err := j.put(info); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestDamagedJournal: a truncated journal (which made bbolt fault on its
// memory map, SIGBUS, killing the process), one with 4 KiB of noise inside
// (a bbolt panic) and an empty one (which bbolt would silently start
// afresh, numbering requests from 1 again) are refused at start with an
// error that says what to do, and start leaves nothing behind.
func TestDamagedJournal(t *testing.T) {
	damage := map[string]func(path string) error{
		"truncated": func(path string) error {
			fi, err := os.Stat(path)
			if err != nil {
				return err
			}
			return os.Truncate(path, fi.Size()/2)
		},
		"noise": func(path string) error {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			noise := make([]byte, 4096)
			for i := range noise {
				noise[i] = byte(i*7919 + 13)
			}
			_, err = f.WriteAt(noise, 4*4096)
			return errors.Join(err, f.Close())
		},
		"empty": func(path string) error { return os.Truncate(path, 0) },
		// Its pages beyond the first four are gone: reading them through
		// bbolt's memory map raises SIGBUS.
		"cut": func(path string) error { return os.Truncate(path, 4*4096) },
	}
	for name, spoil := range damage {
		t.Run(name, func(t *testing.T) {
			dir := journalWith(t, 40)
			if err := spoil(filepath.Join(dir, JournalFile)); err != nil {
				t.Fatal(err)
			}
			cfg := config.Default()
			cfg.RunDir, cfg.PluginDir = filepath.Join(t.TempDir(), "run"), t.TempDir()
			err := New(cfg, Options{StateDir: dir}).Start(context.Background())
			for _, want := range []string{"the request journal is damaged: " + filepath.Join(dir, JournalFile), "supervisor journal repair --state-dir " + dir} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("Start on a %s journal: %v; want %q", name, err, want)
				}
			}
			if left, _ := os.ReadDir(cfg.RunDir); len(left) != 0 {
				t.Errorf("the failed start left %d entries in its run_dir", len(left))
			}
		})
	}
}

// TestRepairJournal: repair keeps what reads, sets the damaged file aside,
// and numbering goes on after the highest id kept.
func TestRepairJournal(t *testing.T) {
	dir := journalWith(t, 40)
	path := filepath.Join(dir, JournalFile)
	if n, err := CheckJournal(dir); err != nil || n != 40 {
		t.Fatalf("CheckJournal of a sound journal: %d, %v", n, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 6*4096); err != nil { // a zeroed page
		t.Fatal(err)
	}
	f.Close()
	if _, err := CheckJournal(dir); !errors.Is(err, ErrJournalDamaged) {
		t.Fatalf("CheckJournal after a page was zeroed: %v", err)
	}
	kept, aside, err := RepairJournal(dir)
	if err != nil || kept == 0 || kept > 40 || !strings.HasPrefix(aside, path+".damaged-") {
		t.Fatalf("RepairJournal: kept %d, aside %q, %v", kept, aside, err)
	}
	if _, err := os.Stat(aside); err != nil {
		t.Fatalf("the damaged file: %v", err)
	}
	if n, err := CheckJournal(dir); err != nil || n != kept {
		t.Fatalf("CheckJournal after repair: %d, %v; want %d", n, err, kept)
	}
	j, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	infos, last, err := j.load()
	if err != nil || len(infos) != kept || last != infos[len(infos)-1].ID {
		t.Fatalf("the repaired journal: %d requests, last id %q, %v", len(infos), last, err)
	}
}

// TestStateDirFull: on a full file system (a small tmpfs, so root only) a
// journal write fails with ErrStateFull, which the API answers 507; the
// end of a request is journaled before it is reported, trying again until
// there is room.
func TestStateDirFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to mount a small tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	j, _, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	// Fill the file system.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = f.Write(make([]byte, 4096))
	}
	f.Close()
	big := RequestInfo{ID: "r000001", State: StateQueued, Prompt: strings.Repeat("p", 64<<10), Steps: 1}
	err = j.put(big)
	if !errors.Is(err, ErrStateFull) || statusOf(fmt.Errorf("request not accepted: %w", err)) != 507 {
		t.Fatalf("put on a full state dir: %v (status %d); want ErrStateFull, 507", err, statusOf(err))
	}

	s := New(config.Default(), Options{})
	s.journal = j
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer s.cancel()
	r := &request{id: "r000002", changed: make(chan struct{})}
	end := RequestInfo{ID: "r000002", State: StateDone, Prompt: strings.Repeat("q", 64<<10), Artifact: "/out/r000002.gif"}
	journaled := make(chan struct{})
	go func() {
		s.ended(r, end)
		close(journaled)
	}()
	// It says why it waits, and waits.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(fmt.Sprint(r.snapshot().Events), "its end is not journaled yet") {
		if time.Now().After(deadline) {
			t.Fatal("no event says the end waits for the journal")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-journaled:
		t.Fatal("ended returned while the state dir is full")
	default:
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	<-journaled
	infos, _, err := j.load()
	if err != nil || len(infos) != 1 || infos[0].ID != "r000002" || infos[0].State != StateDone {
		t.Fatalf("journal after the room came back: %+v, %v", infos, err)
	}
}
