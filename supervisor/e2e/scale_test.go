package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phased/phased/supervisor"
)

// TestScale: `supervisor scale` takes a phase out to its max while
// requests run, and the new instances serve; back in to 1 while they
// run, the retired instances' requests finish or are dispatched again
// (with retries = 0: a scale-in spends none), the retired processes and
// their sockets are gone; counts out of bounds are refused; and the
// count a scale set is the one a supervisor started again starts.
func TestScale(t *testing.T) {
	dir := shortDir(t)
	cfg := "retries = 0\nrelease { grace = \"1s\" }\n" +
		strings.Replace(flakyPipeline(t, dir, `restart { backoff = "50ms" }`), "instances = 2", "instances = 1\n  max       = 3", 1)
	cfgPath := writeConfig(t, dir, cfg)
	p := startSupervisor(t, dir, cfgPath)
	ctx := context.Background()

	if _, errOut, code := cli(t, p.socket, "scale", "transformer", "4"); code != 2 ||
		!strings.Contains(errOut, "phase transformer scales from 1 to 3 instances (its min and max in the config), not to 4") {
		t.Errorf("scale past max: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := cli(t, p.socket, "scale", "nope", "2"); code != 3 || !strings.Contains(errOut, `no such phase "nope"`) {
		t.Errorf("scale of an unknown phase: exit %d, stderr %q", code, errOut)
	}

	submit := func(prompt string, seed int64) string {
		t.Helper()
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: prompt, Seed: seed, Steps: 2})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	first := submit("slow: first", 1)
	waitComputing(t, p, first)
	out, errOut, code := cli(t, p.socket, "scale", "transformer", "3")
	if code != 0 || strings.TrimSpace(out) != "transformer: 1 → 3 instances; started transformer-1, transformer-2" {
		t.Fatalf("scale out: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, id := range []string{"transformer-1", "transformer-2"} {
		if is := instanceStatus(t, p, id); is.State != "ready" || is.PID == 0 {
			t.Errorf("%s after scale-out: %+v, want ready", id, is)
		}
	}
	// Round robin places the next ones on every instance, new ones too.
	ids := []string{first}
	used := map[string]bool{}
	for i := range 3 {
		id := submit("slow: during", int64(10+i))
		waitComputing(t, p, id)
		info, err := p.client.Request(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		used[info.Instances["transformer"]] = true
		ids = append(ids, id)
	}
	if !used["transformer-1"] && !used["transformer-2"] {
		t.Errorf("no request placed on a new instance: %v", used)
	}
	retired := []supervisor.InstanceStatus{instanceStatus(t, p, "transformer-1"), instanceStatus(t, p, "transformer-2")}
	out, errOut, code = cli(t, p.socket, "scale", "transformer", "1")
	if code != 0 || strings.TrimSpace(out) != "transformer: 3 → 1 instances; retired transformer-1, transformer-2" {
		t.Fatalf("scale in: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	moved := 0
	for i, id := range ids {
		seed, prompt := int64(1), "slow: first"
		if i > 0 {
			seed, prompt = int64(9+i), "slow: during"
		}
		watchDone(t, p, id, prompt, seed, 2)
		switch _, retry := lastEvent(t, p, id, "retry"); {
		case strings.Contains(retry, "(not counted against retries: its instance was retired by a scale-in): instance transformer-") &&
			strings.Contains(retry, "was retired by a scale-in"):
			moved++
		case retry != "":
			t.Errorf("%s: retry %q; want only retries after a scale-in", id, retry)
		}
	}
	// A Run takes 2 s, the grace is 1 s: what the retired instances ran
	// was dispatched again.
	if moved == 0 {
		t.Error("no request was dispatched again after the scale-in")
	}
	st, err := p.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tr := st.Phases[1]; len(tr.Instances) != 1 || tr.Instances[0].ID != "transformer-0" || tr.Min != 1 || tr.Max != 3 {
		t.Errorf("transformer after scale-in: %+v; want transformer-0 alone, min 1, max 3", tr)
	}
	var pids []int
	for _, in := range retired {
		pids = append(pids, in.PID)
		if running(in.PID) {
			t.Errorf("retired %s (pid %d) still runs", in.ID, in.PID)
		}
		if _, err := os.Stat(filepath.Join(st.RunDir, in.ID)); !os.IsNotExist(err) {
			t.Errorf("retired %s's socket directory is still there (%v)", in.ID, err)
		}
	}
	if l := leftovers(t, filepath.Join(st.RunDir, "transformer-1"), pids); len(l) > 0 {
		t.Errorf("the retired instances left %v", l)
	}

	// The count survives a restart of the supervisor.
	if out, errOut, code := cli(t, p.socket, "scale", "transformer", "2"); code != 0 || !strings.Contains(out, "1 → 2 instances; started transformer-1") {
		t.Fatalf("scale to 2: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	p.release(t)
	p2 := startSupervisor(t, dir, cfgPath)
	if st, err := p2.client.Status(ctx); err != nil || len(st.Phases[1].Instances) != 2 {
		t.Fatalf("after a restart: %v, %+v; want the 2 transformers scale set", err, st.Phases)
	}
	p2.submitAll(t, 2, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "after", Seed: int64(i), Steps: 2}
	})
	p2.release(t)
}
