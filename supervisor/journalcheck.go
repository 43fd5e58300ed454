package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrJournalDamaged is wrapped when the journal cannot be read whole.
var ErrJournalDamaged = errors.New("the request journal is damaged")

// CheckJournal checks the journal in the state directory dir before a
// supervisor uses it: that bbolt can open it, that every request in it
// reads back, and bbolt's own consistency check. A journal that does not
// exist yet passes. A damaged file (truncated, overwritten, empty) makes
// bbolt fault on its memory map or panic; here that becomes an error
// wrapping ErrJournalDamaged that says what to do, and the process lives
// on. It returns the number of requests journaled.
func CheckJournal(dir string) (int, error) {
	path := filepath.Join(dir, JournalFile)
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("journal: %w", err)
	case fi.Size() == 0:
		// bbolt would start an empty journal in its place: the request
		// numbers would start again and old artifacts be overwritten.
		return 0, damaged(path, errors.New("the file is empty"))
	}
	n, err := protected(func() (int, error) { return readJournal(path) })
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return 0, fmt.Errorf("%w: %s is locked; stop that supervisor, or give this one another --state-dir", ErrStateDirInUse, path)
	case err != nil:
		return 0, damaged(path, err)
	}
	return n, nil
}

// damaged is the error of a damaged journal at path: what is wrong and
// what to do.
func damaged(path string, cause error) error {
	return fmt.Errorf("%w: %s: %v; run `supervisor journal repair --state-dir %s` to keep the requests that still read and set the damaged file aside, or move it aside yourself to start an empty journal (request ids then start again at r000001)",
		ErrJournalDamaged, path, cause, filepath.Dir(path))
}

// protected runs f in a goroutine of its own in which a memory fault (a
// truncated file under bbolt's map raises SIGBUS) is a panic, and turns
// that or any panic into an error.
func protected[T any](f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		debug.SetPanicOnFault(true)
		defer func() {
			if p := recover(); p != nil {
				var zero T
				done <- result{zero, fmt.Errorf("reading it failed: %v", p)}
			}
		}()
		v, err := f()
		done <- result{v, err}
	}()
	r := <-done
	return r.v, r.err
}

// readJournal opens the journal read-only, reads every request of it and
// runs bbolt's consistency check; it returns the number of requests.
func readJournal(path string) (n int, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	err = db.View(func(tx *bolt.Tx) error {
		reqs, meta := tx.Bucket(bucketRequests), tx.Bucket(bucketMeta)
		if reqs == nil || meta == nil {
			return errors.New("it is not a phased journal: a bucket is missing")
		}
		// Every page of both buckets is read here, in this goroutine,
		// so that a bad page faults or panics here rather than in
		// bbolt's checker below, which runs in a goroutine of its own.
		if err := meta.ForEach(func(k, v []byte) error { return nil }); err != nil {
			return err
		}
		if err := reqs.ForEach(func(k, v []byte) error {
			var info RequestInfo
			if err := json.Unmarshal(v, &info); err != nil {
				return fmt.Errorf("request %q: %w", k, err)
			}
			n++
			return nil
		}); err != nil {
			return err
		}
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	return n, err
}

// RepairJournal keeps what still reads of a damaged journal in the state
// directory dir: it reads every request it can, writes them to a new
// journal, and renames the damaged file to journal.db.damaged-TIME, which
// it returns with the number of requests kept. Request numbering goes on
// after the highest number kept.
func RepairJournal(dir string) (kept int, aside string, err error) {
	path := filepath.Join(dir, JournalFile)
	if _, err := os.Stat(path); err != nil {
		return 0, "", fmt.Errorf("journal: %w", err)
	}
	var infos []RequestInfo // what salvage read before a fault, if one came
	_, _ = protected(func() (struct{}, error) { return struct{}{}, salvage(path, &infos) })
	aside = path + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	if err := os.Rename(path, aside); err != nil {
		return 0, "", fmt.Errorf("journal: set the damaged file aside: %w", err)
	}
	j, _, err := openJournal(dir)
	if err != nil {
		return 0, aside, err
	}
	for _, info := range infos {
		if err := j.put(info); err != nil {
			return kept, aside, errors.Join(err, j.close())
		}
		kept++
	}
	return kept, aside, j.close()
}

// salvage appends to infos the requests of a damaged journal that read,
// in key order, until the first fault or panic (which protected turns
// into an error; infos keeps what was read until then).
func salvage(path string, infos *[]RequestInfo) error {
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		return err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		reqs := tx.Bucket(bucketRequests)
		if reqs == nil {
			return nil
		}
		return reqs.ForEach(func(k, v []byte) error {
			var info RequestInfo
			if json.Unmarshal(v, &info) == nil && info.ID == string(k) {
				*infos = append(*infos, info)
			}
			return nil
		})
	})
}
