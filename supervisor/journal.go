package supervisor

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// JournalFile is the name of the request journal in the state directory.
const JournalFile = "journal.db"

// The journal's buckets and meta keys.
var (
	bucketRequests = []byte("requests") // request id → RequestInfo (JSON, no events)
	bucketMeta     = []byte("meta")
	keyEpoch       = []byte("epoch")   // uint64: supervisor starts on this state dir
	keyLastID      = []byte("last_id") // the greatest request id given (see ids.go)
)

// journal is the supervisor's durable record of accepted requests: an
// embedded bbolt database in the state directory. A request is written
// (and fsynced) before Submit returns, and again when it ends, so that a
// supervisor started after a crash finishes or fails every request the
// crashed one accepted. bbolt locks the file: two supervisors cannot share
// a state directory.
type journal struct {
	db     *bolt.DB
	path   string
	writes func(time.Duration) // observes each write's time; nil: none
}

// ErrStateDirInUse is returned when another supervisor holds the journal.
var ErrStateDirInUse = errors.New("the state directory is in use by another supervisor")

// openJournal opens (or creates) the journal in dir, created 0700, and
// counts one more supervisor start (the epoch).
func openJournal(dir string) (*journal, uint64, error) {
	if err := privateDir(dir); err != nil {
		return nil, 0, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(dir, JournalFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, 0, fmt.Errorf("%w: %s is locked; stop that supervisor, or give this one another --state-dir", ErrStateDirInUse, path)
		}
		return nil, 0, fmt.Errorf("journal %s: %w; move it aside to start with an empty journal", path, err)
	}
	var epoch uint64
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketRequests); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		epoch = getUint(meta, keyEpoch) + 1
		return meta.Put(keyEpoch, putUint(epoch))
	})
	if err != nil {
		db.Close()
		return nil, 0, fmt.Errorf("journal %s: %w", path, err)
	}
	return &journal{db: db, path: path}, epoch, nil
}

// load returns every journaled request, oldest first, and the greatest
// request id given on this state directory (also of requests forgotten
// since).
func (j *journal) load() ([]RequestInfo, string, error) {
	var infos []RequestInfo
	var last string
	err := j.db.View(func(tx *bolt.Tx) error {
		last = string(tx.Bucket(bucketMeta).Get(keyLastID))
		return tx.Bucket(bucketRequests).ForEach(func(k, v []byte) error {
			var info RequestInfo
			if err := json.Unmarshal(v, &info); err != nil {
				return fmt.Errorf("request %q: %w", k, err)
			}
			infos = append(infos, info)
			return nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("journal %s: %w", j.path, err)
	}
	sort.Slice(infos, func(a, b int) bool { return idLess(infos[a].ID, infos[b].ID) })
	return infos, last, nil
}

// put writes a request (without its events) and returns once it is on
// disk.
func (j *journal) put(info RequestInfo) error {
	info.Events = nil
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	start := time.Now()
	defer func() {
		if j.writes != nil {
			j.writes(time.Since(start))
		}
	}()
	err = j.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if last := string(meta.Get(keyLastID)); last == "" || idLess(last, info.ID) {
			if err := meta.Put(keyLastID, []byte(info.ID)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketRequests).Put([]byte(info.ID), b)
	})
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: journal %s: %w", ErrStateFull, j.path, err)
	case err != nil:
		return fmt.Errorf("journal %s: %w", j.path, err)
	}
	return nil
}

// ErrStateFull is wrapped by the journal's errors when its file system is
// full: free space there (or give another --state-dir).
var ErrStateFull = errors.New("the state directory is full")

// forget deletes requests the supervisor no longer remembers.
func (j *journal) forget(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	return j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRequests)
		for _, id := range ids {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (j *journal) close() error { return j.db.Close() }

func getUint(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// DefaultStateDir is where `supervisor start` keeps its journal unless
// --state-dir says: $PHASED_STATE_DIR, else $XDG_STATE_HOME/phased, else
// ~/.local/state/phased.
func DefaultStateDir() string {
	if d := os.Getenv("PHASED_STATE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "phased")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), fmt.Sprintf("phased-state-%d", os.Getuid()))
	}
	return filepath.Join(home, ".local", "state", "phased")
}

// ReasonRecoveryFailed is the reason of a journaled request that a new
// supervisor could not dispatch again.
const ReasonRecoveryFailed = "the supervisor restarted while the request ran, and could not dispatch it again"

// openState opens the journal of Options.StateDir, if one is set, and
// takes from it the room epoch and the request numbering; it returns the
// journaled requests to recover once the pipeline runs.
func (s *Supervisor) openState() ([]RequestInfo, error) {
	if s.opts.StateDir == "" {
		return nil, nil
	}
	if err := privateDir(s.opts.StateDir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if _, err := CheckJournal(s.opts.StateDir); err != nil {
		return nil, err
	}
	j, epoch, err := openJournal(s.opts.StateDir)
	if err != nil {
		return nil, err
	}
	infos, last, err := j.load()
	if err != nil {
		j.close()
		return nil, err
	}
	j.writes = func(d time.Duration) { s.metrics.journalWrite.Observe(d.Seconds()) }
	s.journal = j
	// Room ids are unique across supervisor starts on one state
	// directory: each start takes its own block of 2^32 ids.
	s.nextRoom.Store(epoch << 32)
	s.ids.seen(last)
	for _, info := range infos {
		s.ids.seen(info.ID)
	}
	return infos, nil
}

// recover takes the journaled requests back: ended ones are remembered
// for status, the others are dispatched again. s.mu is held.
func (s *Supervisor) recover(infos []RequestInfo) {
	s.pruneCheckpoints(infos)
	n := 0
	for _, info := range infos {
		r := s.newRequest(info)
		s.remember(r)
		if info.Terminal() {
			r.cancel()
			close(r.done)
			continue
		}
		n++
		r.info.State, r.info.Instances, r.info.Rooms, r.info.Backends = StateQueued, nil, nil, nil
		r.info.Events = []Event{{Time: time.Now(), What: "recovered", Detail: "the supervisor restarted before the request ended; it is dispatched again"}}
		s.inflight.Add(1)
		s.queue.join(r)
		go func() {
			defer s.inflight.Done()
			s.process(r)
		}()
	}
	if n > 0 {
		s.logger.Info("recovered requests from the journal", "dispatched_again", n, "ended", len(infos)-n, "journal", s.journal.path)
	}
}

// ended journals a request's end, before it is reported: while the state
// directory is full (or the journal fails otherwise) it tries again, with
// a backoff up to endRetryMax, and says so in the request's events, until
// it succeeds or the supervisor releases (then the request ends
// unjournaled, and a supervisor started on the same state directory
// dispatches it again).
func (s *Supervisor) ended(r *request, end RequestInfo) {
	if s.journal == nil {
		return
	}
	for delay := endRetryMin; ; delay = min(2*delay, endRetryMax) {
		err := s.journal.put(end)
		if err == nil {
			return
		}
		s.logger.Error("journal the end of a request; trying again: it is reported ended once journaled", "request", r.id, "error", err, "in", delay)
		r.event(Event{What: "journal", Detail: fmt.Sprintf("its end is not journaled yet: %v; trying again in %s", err, delay)})
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			s.logger.Error("a request ends unjournaled: a supervisor started on this state directory will dispatch it again", "request", r.id)
			return
		}
	}
}

// The backoff of ended.
const (
	endRetryMin = 100 * time.Millisecond
	endRetryMax = 10 * time.Second
)
