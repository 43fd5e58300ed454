package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// ChaosEnv sets how many requests TestChaos sends (`make chaos`: 200); the
// default is the short form CI runs.
const ChaosEnv = "PHASED_CHAOS_REQUESTS"

// chaosPipeline: two instances of each phase, restarted quickly and never
// given up on; retries and max_inflight are the defaults. Every 0.5 s one
// of six instances dies, about ten times the rate any real deployment
// would see: a kill from outside spends no retry (retryBudget).
const chaosPipeline = `
phase "encoder" {
  plugin    = "encoder"
  instances = 2
  restart {
    max         = 10000
    backoff     = "50ms"
    max_backoff = "500ms"
  }
}
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  checkpoint_every = 50 # a killed request resumes at its last multiple of 50 steps
  restart {
    max         = 10000
    backoff     = "50ms"
    max_backoff = "500ms"
  }
}
phase "decoder" {
  plugin    = "decoder"
  instances = 2
  restart {
    max         = 10000
    backoff     = "50ms"
    max_backoff = "500ms"
  }
}
`

// TestChaos sends requests while a random phase instance is killed with
// SIGKILL every 0.5 s, and kills and restarts the supervisor itself once,
// halfway. Every request must end done with the reference artifact, and
// nothing may be left behind: no process, socket file or shm segment. The
// last line it prints is the counts.
func TestChaos(t *testing.T) {
	n := 40
	if v := os.Getenv(ChaosEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2 {
			t.Fatalf("%s=%q: want a number of requests, at least 2", ChaosEnv, v)
		}
	}
	dir := shortDir(t)
	// The supervisor is the code under test, and runs as built (with the
	// race detector under -race); the plugins are built without it: six
	// race-instrumented plugins restarted every 0.5 s starve a 2-core
	// machine until attempts outlast the kill interval.
	plugins := pluginDir
	if raceEnabled {
		plugins = filepath.Join(dir, "plugins")
		cmd := exec.Command("go", "build", "-o", plugins+"/", "./plugins/encoder/cmd/phased-phase-encoder",
			"./plugins/transformer/cmd/phased-phase-transformer", "./plugins/decoder/cmd/phased-phase-decoder",
			"./policies/roundrobin/cmd/phased-policy-roundrobin")
		cmd.Dir = moduleRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build the plugins: %v\n%s", err, out)
		}
	}
	cfgPath := filepath.Join(dir, "phased.hcl")
	src := fmt.Sprintf("plugin_dir = %q\nartifact_dir = %q\n%s", plugins, filepath.Join(dir, "out"), chaosPipeline)
	if err := os.WriteFile(cfgPath, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startSupervisor(t, dir, cfgPath)
	ctx := context.Background()
	sub := func(i int) supervisor.Submission {
		// Hundreds of steps: a request computes for some 10-20 ms, so
		// that some kills land on requests in flight.
		return supervisor.Submission{Prompt: fmt.Sprintf("chaos %d", i), Seed: int64(i), Steps: 300 + 100*(i%3)}
	}
	ids := make([]string, n)
	for i := range n {
		id, err := p.client.Submit(ctx, sub(i))
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids[i] = id
	}

	var mu sync.Mutex
	cur := p
	pids := map[int]uint64{} // every plugin pid seen, with its start time
	killed := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the killer
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			mu.Lock()
			c := cur.client
			mu.Unlock()
			st, err := c.Status(ctx)
			if err != nil {
				continue // the supervisor is being restarted
			}
			var ready []int
			mu.Lock()
			for _, ph := range st.Phases {
				for _, in := range ph.Instances {
					if _, seen := pids[in.PID]; in.PID > 0 && !seen {
						pids[in.PID] = startTime(in.PID)
					}
					if in.State == "ready" && in.PID > 0 {
						ready = append(ready, in.PID)
					}
				}
			}
			if len(ready) > 0 && syscall.Kill(ready[rand.IntN(len(ready))], syscall.SIGKILL) == nil {
				killed++
			}
			mu.Unlock()
		}
	}()
	stopKiller := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopKiller()

	// Halfway, the supervisor itself dies and a new one takes over its
	// state directory.
	var restarted, retried int64
	if !eventually(3*time.Minute, func() bool { return ended(ctx, p, ids) >= n/2 }) {
		t.Fatalf("fewer than %d of %d requests ended within 3 minutes", n/2, n)
	}
	st, err := p.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restarted, retried = restarts(st), st.Retried
	mu.Lock()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.waitExit(10 * time.Second)
	old := maps.Clone(pids)
	mu.Unlock()
	if !eventually(2*time.Second, func() bool {
		for pid, start := range old {
			if same(pid, start) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("plugins outlived the supervisor by more than 2s")
	}
	p2 := startSupervisor(t, dir, cfgPath)
	mu.Lock()
	cur = p2
	mu.Unlock()

	done, failed := 0, 0
	for i, id := range ids {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		info, err := p2.client.Watch(wctx, id, nil)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if info.State != supervisor.StateDone {
			failed++
			t.Errorf("%s: %s, reason %q", id, info.State, info.Reason)
			continue
		}
		s := sub(i)
		got, err := os.ReadFile(info.Artifact)
		if err != nil || !bytes.Equal(got, reference(t, s.Prompt, s.Seed, s.Steps)) {
			failed++
			t.Errorf("%s: artifact %s differs from the reference (%v)", id, info.Artifact, err)
			continue
		}
		done++
	}
	stopKiller()
	st, err = p2.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restarted += restarts(st)
	retried += st.Retried
	resumed, _ := sample(scrape(t, p2), "phased_checkpoint_resumes_total", "phase", "transformer")
	saved, _ := sample(scrape(t, p2), "phased_checkpoint_steps_saved_total", "phase", "transformer")
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			if _, seen := pids[in.PID]; !seen {
				pids[in.PID] = startTime(in.PID)
			}
		}
	}
	p2.release(t)
	all := make([]int, 0, len(pids))
	for pid, start := range pids {
		if same(pid, start) {
			t.Errorf("plugin process %d outlived the release", pid)
		}
		all = append(all, pid)
	}
	if l := leftovers(t, dir, all); len(l) > 0 {
		t.Errorf("left behind: %v", l)
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "ctl", "*")); len(entries) > 0 {
		t.Errorf("control directory not empty: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "checkpoints")); !os.IsNotExist(err) {
		t.Errorf("checkpoints left in the state directory after release: %v", err)
	}
	fmt.Printf("chaos: requests %d, killed %d, restarted %d (+1 supervisor), retried %d, resumed from a checkpoint %v (%v steps not run again, since the supervisor's restart), done %d, failed %d\n",
		n, killed, restarted, retried, resumed, saved, done, failed)
}

// same reports whether the process seen as pid, started at start, still
// runs (and not a later process given the same pid).
func same(pid int, start uint64) bool {
	return running(pid) && startTime(pid) == start
}

// ended counts the requests that have ended.
func ended(ctx context.Context, p *proc, ids []string) int {
	n := 0
	for _, id := range ids {
		if info, err := p.client.Request(ctx, id); err == nil && info.Terminal() {
			n++
		}
	}
	return n
}

// restarts sums the instance restarts in a status.
func restarts(st supervisor.Status) int64 {
	var n int64
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			n += int64(in.Restarts)
		}
	}
	return n
}
