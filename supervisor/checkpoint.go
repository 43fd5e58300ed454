package supervisor

import (
	"os"
	"path/filepath"

	"github.com/phased/phased/sdk"
)

// Checkpoints (docs/protocol.md 8.4): a phase whose config sets
// checkpoint_every saves its state into a file the supervisor names, one
// directory per request, and the Run of the request's next attempt, on
// any instance, resumes from it. The supervisor only makes and removes
// the directories; the bytes go from one phase process to the file and
// from the file to the next one.

// checkpointsDir is the directory of every request's checkpoints: in the
// state directory when there is a journal (a request dispatched again
// after a supervisor restart resumes too), else in the run directory.
func (s *Supervisor) checkpointsDir() string {
	switch {
	case s.journal != nil:
		return filepath.Join(s.opts.StateDir, "checkpoints")
	case s.runDir != "":
		return filepath.Join(s.runDir, "checkpoints")
	}
	return "" // not started
}

// checkpoints returns, per phase, the checkpoint spec of the request's
// Runs (zero for a phase without checkpoint_every), making the request's
// directory when some phase has one. A directory that cannot be made
// means no checkpoints for the request, with a warning, not a failure.
func (s *Supervisor) checkpoints(r *request) []sdk.CheckpointSpec {
	specs := make([]sdk.CheckpointSpec, len(s.phases))
	base := s.checkpointsDir()
	if base == "" {
		return specs
	}
	dir := filepath.Join(base, r.id)
	made := false
	for i, ph := range s.phases {
		if ph.cfg.CheckpointEvery <= 0 {
			continue
		}
		if !made {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				s.logger.Warn("no checkpoints for the request", "request", r.id, "error", err)
				return make([]sdk.CheckpointSpec, len(s.phases))
			}
			made = true
		}
		specs[i] = sdk.CheckpointSpec{Path: filepath.Join(dir, ph.cfg.Name+".ckpt"), Every: ph.cfg.CheckpointEvery}
	}
	return specs
}

// dropCheckpoints removes the checkpoints of a request that ended. A
// cancelled Run may be writing one as it does (its temporary file then
// makes the directory's removal fail): it is tried once more, and what
// is left goes at release.
func (s *Supervisor) dropCheckpoints(r *request) {
	base := s.checkpointsDir()
	if base == "" {
		return
	}
	dir := filepath.Join(base, r.id)
	err := os.RemoveAll(dir)
	if err != nil {
		err = os.RemoveAll(dir)
	}
	if err != nil {
		s.logger.Warn("removing the request's checkpoints; what is left goes at release", "request", r.id, "error", err)
	}
}

// pruneCheckpoints removes, at start, the checkpoints of every request
// that is not dispatched again (it ended while the supervisor was down,
// or is unknown).
func (s *Supervisor) pruneCheckpoints(infos []RequestInfo) {
	base := s.checkpointsDir()
	if base == "" {
		return
	}
	entries, err := os.ReadDir(base)
	if err != nil {
		return // none yet
	}
	keep := make(map[string]bool, len(infos))
	for _, info := range infos {
		keep[info.ID] = !info.Terminal()
	}
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(base, e.Name())); err != nil {
				s.logger.Warn("removing the checkpoints of an ended request", "request", e.Name(), "error", err)
			}
		}
	}
}

// removeCheckpoints removes every checkpoint, at release: each request
// removed its own when it ended, so this only sweeps what a late save of
// a cancelled Run left behind.
func (s *Supervisor) removeCheckpoints() error {
	if base := s.checkpointsDir(); base != "" {
		return os.RemoveAll(base)
	}
	return nil
}
