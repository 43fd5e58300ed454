package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk/transfer"
)

// pidFile, in a run directory, holds the pid of the supervisor using it, so
// that the next start can tell a run directory left by a supervisor that
// died (kill -9, a crash, a power cut) from one in use; a second line,
// createdMark, says that the supervisor created the directory (rather than
// being given it as run_dir), so that all of it may go.
const (
	pidFile     = "supervisor.pid"
	createdMark = "created"
)

// groupsFile, in a run directory, lists the process group of every plugin
// the supervisor started, one pid a line: the plugins die with the
// supervisor (parent-death signal), but processes they started
// themselves do not; the next start kills what is left of those groups.
const groupsFile = "plugin-groups"

// noteGroup appends a plugin's process group to the run directory's list.
func noteGroup(runDir string, pid int) error {
	f, err := os.OpenFile(filepath.Join(runDir, groupsFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, pid)
	return errors.Join(err, f.Close())
}

// killStaleGroups kills what is left of the plugin process groups listed
// in a dead supervisor's run directory, and returns how many groups had
// processes left. A group whose leader runs is not touched: the plugin
// died with its supervisor, so a live process with its pid is another
// one that was given the pid since.
func killStaleGroups(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, groupsFile))
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Fields(string(b)) {
		pgid, err := strconv.Atoi(line)
		if err != nil || pgid <= 1 || transfer.ProcessAlive(pgid) {
			continue
		}
		if syscall.Kill(-pgid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// The supervisor makes its run directory (phased.XXXXXXXX) in the
// first of runParents that is a directory: a memory file system first,
// since every room binds socket files there, and binding one on a disk
// file system allocates an inode (0.5 ms on this project's ext4 VM, the
// most expensive step of opening a room; 20 µs on tmpfs).
var runParents = []string{"/dev/shm", os.TempDir()}

const runDirPrefix = "phased."

// runDirPatterns are what the run directories of this and earlier
// versions (/tmp/phased-XXXXXXXX) look like, for the sweep.
func runDirPatterns() []string {
	var ps []string
	for _, p := range runParents {
		ps = append(ps, filepath.Join(p, runDirPrefix+"*"))
	}
	return append(ps, "/tmp/phased-*")
}

// newRunDir makes a private run directory in the first usable parent.
func newRunDir() (string, error) {
	var errs []error
	for _, p := range runParents {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			continue
		}
		dir, err := os.MkdirTemp(p, runDirPrefix)
		if err == nil {
			return dir, nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("no directory for the run's sockets in %v: %w", runParents, errors.Join(errs...))
}

// sweepStale removes what supervisors of this user that died without
// releasing left behind: their run directories (with every socket file in
// them) and the shared-memory segments of their plugin processes. It keeps
// anything whose process is alive, and anything not marked as phased's.
// It logs what it removed and returns the errors it met, which do not stop
// the start.
func (s *Supervisor) sweepStale() error { return sweepStale(s.logger, s.cfg.RunDir) }

// sweepStale is Supervisor.sweepStale for any process that keeps a run
// directory of phased's (the supervisor, an agent), with its configured
// run directory ("" none).
func sweepStale(logger hclog.Logger, runDir string) error {
	var errs []error
	var dirs []string
	for _, pattern := range runDirPatterns() {
		found, _ := filepath.Glob(pattern)
		dirs = append(dirs, found...)
	}
	slices.Sort(dirs)
	for _, dir := range slices.Compact(dirs) {
		pid, created, ok := stalePID(dir)
		if !ok || !created {
			continue
		}
		if n := killStaleGroups(dir); n > 0 {
			logger.Warn("killed processes that plugins of a supervisor that did not release had started", "groups", n, "pid", pid)
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove the stale run directory %s: %w", dir, err))
			continue
		}
		logger.Warn("removed the run directory of a supervisor that did not release", "dir", dir, "pid", pid)
	}
	// A configured run_dir is the user's: only what a supervisor puts
	// there goes.
	if dir := runDir; dir != "" {
		if pid, _, ok := stalePID(dir); ok {
			if n := killStaleGroups(dir); n > 0 {
				logger.Warn("killed processes that plugins of a supervisor that did not release had started", "groups", n, "pid", pid)
			}
			if err := removeRunContents(dir); err != nil {
				errs = append(errs, err)
			} else {
				logger.Warn("removed the sockets a supervisor that did not release left in run_dir", "dir", dir, "pid", pid)
			}
		}
	}
	n, err := sweepDeadSegments(transfer.DefaultShmDir)
	if err != nil {
		errs = append(errs, err)
	}
	if n > 0 {
		logger.Warn("removed shared-memory segments of plugin processes that died", "count", n, "dir", transfer.DefaultShmDir)
	}
	return errors.Join(errs...)
}

// instanceDirRE is what an instance's directory in a run directory looks
// like: PHASE-INDEX.
var instanceDirRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}-[0-9]+$`)

// removeRunContents removes from a run directory what a supervisor puts
// there: its pid file, go-plugin's socket directory and the instances'
// socket directories.
func removeRunContents(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if n := e.Name(); n == pidFile || n == groupsFile || e.IsDir() && (n == "plugin" || instanceDirRE.MatchString(n)) {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, n)))
		}
	}
	return errors.Join(errs...)
}

// stalePID reports whether dir is a run directory of this user whose
// supervisor is dead, that supervisor's pid, and whether it created the
// directory.
func stalePID(dir string) (pid int, created, ok bool) {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || !ownedByMe(fi) {
		return 0, false, false
	}
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, false, false
	}
	first, rest, _ := strings.Cut(string(b), "\n")
	pid, err = strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 || pid == os.Getpid() || transfer.ProcessAlive(pid) {
		return 0, false, false
	}
	return pid, strings.TrimSpace(rest) == createdMark, true
}

// writePIDFile marks dir as the run directory of this process. The file
// is created, never opened through a link or over an existing one: a
// pid file left there is a live supervisor's (a dead one's was swept).
func writePIDFile(dir string, created bool) error {
	content := strconv.Itoa(os.Getpid()) + "\n"
	if created {
		content += createdMark + "\n"
	}
	path := filepath.Join(dir, pidFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, os.ErrExist) {
		b, _ := os.ReadFile(path)
		return fmt.Errorf("%s is in use: %s holds pid %s of a supervisor that runs; give each supervisor its own run_dir", dir, pidFile, strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	}
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	return errors.Join(err, f.Close())
}

// sweepDeadSegments removes the segments in shmDir that a plugin process
// of this user left when it died: their names are
// phased-INSTANCE.PID-..., and PID no longer runs.
func sweepDeadSegments(shmDir string) (int, error) {
	entries, err := os.ReadDir(shmDir)
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", shmDir, err)
	}
	n := 0
	var errs []error
	for _, e := range entries {
		pid, ok := segmentPID(e.Name())
		if !ok || transfer.ProcessAlive(pid) {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() || !ownedByMe(fi) {
			continue
		}
		if err := os.Remove(filepath.Join(shmDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// segmentPID returns the pid of the plugin process whose transfer manager
// made a segment: its name is phased-INSTANCE.PID-ROOM-GEN,
// phased-INSTANCE.PID-free-N, or one of its output segments and lend
// table, phased-INSTANCE.PID-out-N and -lends-0 (transfer.ProcessName,
// transfer.SegmentOwner), and an instance id may hold '.' and '-' itself.
func segmentPID(name string) (int, bool) {
	owner, ok := transfer.SegmentOwner(name)
	if !ok {
		return 0, false
	}
	_, pid, ok := transfer.SplitProcessName(owner)
	return pid, ok
}

func ownedByMe(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}
