package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// TestCheckpointResume: the transformer (the flaky plugin, which is the
// built-in transformer paced at 80 ms a step) is killed once its request
// reports step 15 of 20. With checkpoint_every = 5 the retry, on the
// other instance, resumes at step 15 (at least 10), the artifact is the
// reference's bytes, and the request's checkpoints are gone once it
// ended and nothing is left after release. Without checkpoints the retry
// starts at 0. It logs the steps run again after the kill in both cases:
// the "work lost to a kill" figure of docs/reliability.md.
func TestCheckpointResume(t *testing.T) {
	rerun := map[int]int{}
	for _, every := range []int{5, 0} {
		dir := shortDir(t)
		cfg := `
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin           = "flaky"
  instances        = 2
  checkpoint_every = ` + fmt.Sprint(every) + `
  params           = { marker_dir = "` + dir + `", pace = "80ms" }
  restart { backoff = "50ms" }
}
phase "decoder" { plugin = "decoder" }
`
		p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		const prompt, seed, steps = "resume me", 11, 20
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: prompt, Seed: seed, Steps: steps})
		if err != nil {
			t.Fatal(err)
		}
		killed := 0
		_, err = p.client.Watch(ctx, id, func(info supervisor.RequestInfo) {
			if killed != 0 || info.Attempts != 1 {
				return
			}
			for _, pp := range info.Progress {
				if pp.Phase == "transformer" && pp.Done >= 15 {
					killed = instanceStatus(t, p, pp.Instance).PID
					if err := syscall.Kill(killed, syscall.SIGKILL); err != nil {
						t.Errorf("kill %s: %v", pp.Instance, err)
					}
				}
			}
		})
		cancel()
		if err != nil || killed == 0 {
			t.Fatalf("checkpoint_every %d: watch: %v; killed pid %d", every, err, killed)
		}
		info := watchDone(t, p, id, prompt, seed, steps)
		full, err := p.client.Request(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		// The transformer's run spans, one per attempt: steps reported
		// done, and where each began.
		var runs []supervisor.Span
		for _, s := range full.Timeline {
			if s.Name == supervisor.SpanRun && s.Phase == "transformer" {
				runs = append(runs, s)
			}
		}
		if info.Attempts != 2 || len(runs) != 2 {
			t.Fatalf("checkpoint_every %d: %d attempts, transformer runs %+v; want 2", every, info.Attempts, runs)
		}
		killedAt, resumed := runs[0].Done, runs[1].ResumedFrom
		if killedAt < 15 || runs[1].Done != steps {
			t.Fatalf("checkpoint_every %d: killed after step %d, the retry reported %d of %d", every, killedAt, runs[1].Done, steps)
		}
		switch {
		case every > 0 && resumed < 10:
			t.Errorf("checkpoint_every 5: the retry resumed at step %d, want 10 or more", resumed)
		case every > 0:
			if _, ev := lastEvent(t, p, id, "resumed"); ev != fmt.Sprintf("at step %d of 20, from the request's checkpoint", resumed) {
				t.Errorf("resumed event %q", ev)
			}
		case resumed != 0:
			t.Errorf("without checkpoints the retry resumed at step %d", resumed)
		}
		rerun[every] = killedAt - resumed
		// Removed once the request ended; none left after release.
		ckpts := filepath.Join(dir, "state", "checkpoints")
		if _, err := os.Stat(filepath.Join(ckpts, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("checkpoint_every %d: the ended request's checkpoints: %v, want none", every, err)
		}
		p.release(t)
		if _, err := os.Stat(ckpts); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("checkpoint_every %d: after release %s: %v, want none", every, ckpts, err)
		}
	}
	t.Logf("work lost to a kill at step 15 of 20: %d steps run again with checkpoint_every = 5, %d from step 0", rerun[5], rerun[0])
	if rerun[5] >= rerun[0] {
		t.Errorf("steps run again: %d with checkpoints, %d without", rerun[5], rerun[0])
	}
}
