package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk/scalertest"
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

// burst sends waves of "slow:" requests to p (a transformer Run of
// 300 ms, one at a time per instance, as on a GPU), waits for them,
// checks each ends done with the reference bytes, and returns each one's
// time from its submission to its end. (Requests are placed at once,
// max_inflight being far above the burst: they queue at the instance, in
// its Run, and their time is their wait plus 300 ms.) While it runs it
// samples the transformer's instance count; peak is the most.
func burst(t *testing.T, p *proc) (took, waited []time.Duration, peak int) {
	t.Helper()
	ctx := context.Background()
	const waves, perWave = 4, 6
	stop := make(chan struct{})
	peaked := make(chan int)
	go func() {
		most := 0
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if st, err := p.client.Status(ctx); err == nil {
				most = max(most, len(st.Phases[1].Instances))
			}
			select {
			case <-stop:
				peaked <- most
				return
			case <-tick.C:
			}
		}
	}()
	var ids []string
	for w := range waves {
		for i := range perWave {
			id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "slow: burst", Seed: int64(w*perWave + i), Steps: 2})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i, id := range ids {
		info := watchDone(t, p, id, "slow: burst", int64(i), 2)
		took = append(took, info.Finished.Sub(info.Submitted))
		// Its queue wait: until an instance took it (the end of its
		// last schedule span; with max_rooms = 1 an instance takes one
		// request at a time, and the others wait for its credit).
		full, err := p.client.Request(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var placed time.Time
		for _, s := range full.Timeline {
			if s.Name == supervisor.SpanSchedule && s.End != nil {
				placed = *s.End
			}
		}
		waited = append(waited, placed.Sub(info.Submitted))
	}
	close(stop)
	return took, waited, <-peaked
}

// p99 is the 99th percentile of ds.
func p99(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, len(s)*99/100)]
}

// TestAutoscale: the same burst of requests (four waves, a transformer
// that runs one at a time) against a fixed pool of one transformer, then
// with the threshold scaler (min 1, max 3): the scaler takes the pool out
// to its max during the burst and back in to its min after the cooldown,
// no request fails, and the p99 request time of both runs is printed
// side by side. The scaler is swapped live, and `scaler list`
// shows it.
func TestAutoscale(t *testing.T) {
	pipelineWith := func(dir, scaler string) string {
		return scaler + "release { grace = \"2s\" }\n" + strings.Replace(flakyPipeline(t, dir, `restart { backoff = "50ms" }`),
			"instances = 2\n  params    = { marker_dir",
			"instances = 1\n  min       = 1\n  max       = 3\n  max_rooms = 1\n  params    = { slow = \"300ms\", serial = \"true\", marker_dir", 1)
	}
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipelineWith(dir, "")))
	fixed, fixedWait, fixedPeak := burst(t, p)
	p.release(t)
	if fixedPeak != 1 {
		t.Errorf("without a scaler the pool went to %d instances", fixedPeak)
	}

	dir = shortDir(t)
	p = startSupervisor(t, dir, writeConfig(t, dir, pipelineWith(dir, `scaler {
  name     = "threshold"
  interval = "200ms"
  params   = { cooldown = "1s" }
}
`)))
	scaled, scaledWait, peak := burst(t, p)
	if peak != 3 {
		t.Errorf("with the threshold scaler the pool peaked at %d instances during the burst, want its max 3", peak)
	}
	if !eventually(20*time.Second, func() bool {
		st, err := p.client.Status(context.Background())
		return err == nil && len(st.Phases[1].Instances) == 1
	}) {
		t.Errorf("the pool did not come back to its min 1 after the burst")
	}
	fmt.Printf("autoscale: %d requests in 4 waves, 300 ms each on a transformer of max_rooms 1; p99 queue wait: fixed pool of 1 %v, threshold scaler 1-3 %v (%.2fx); p99 request time: %v, %v (%.2fx)\n",
		len(fixed), p99(fixedWait).Round(time.Millisecond), p99(scaledWait).Round(time.Millisecond), p99(scaledWait).Seconds()/p99(fixedWait).Seconds(),
		p99(fixed).Round(time.Millisecond), p99(scaled).Round(time.Millisecond), p99(scaled).Seconds()/p99(fixed).Seconds())

	out, errOut, code := cli(t, p.socket, "scaler", "list")
	if code != 0 || !strings.Contains(out, "scaler threshold (pid ") || !strings.Contains(out, "params cooldown=1s") || !regexpLine(out, `^transformer\s+1\s+1\s+3\s`) ||
		!strings.Contains(out, "available: queue, threshold") {
		t.Errorf("scaler list: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, errOut, code := cli(t, p.socket, "scaler", "set", "nope"); code != 3 || !strings.Contains(errOut, "phased-scaler-nope") {
		t.Errorf("scaler set of a missing plugin: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := cli(t, p.socket, "scaler", "set", "queue", "--param", "target_wait=soon"); code == 0 ||
		!strings.Contains(errOut, `the trial call failed, threshold stays`) || !strings.Contains(errOut, `target_wait = "soon"`) {
		t.Errorf("scaler set with a bad param: exit %d, stderr %q", code, errOut)
	}
	out, errOut, code = cli(t, p.socket, "scaler", "set", "queue", "--param", "target_wait=1s", "--json")
	var l supervisor.ScalerList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || l.Scaler == nil || l.Scaler.Name != "queue" || l.Scaler.Params["target_wait"] != "1s" {
		t.Errorf("scaler set queue: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out, _, code := cli(t, p.socket, "scaler", "set", "--off"); code != 0 || !strings.Contains(out, "scaler: none") {
		t.Errorf("scaler set --off: exit %d, stdout %q", code, out)
	}
	p.release(t)
}

// TestScalerBinaries runs the scaler conformance kit against the built-in
// scaler binaries, started as the supervisor starts them.
func TestScalerBinaries(t *testing.T) {
	bad := map[string]map[string]string{"threshold": {"out": "2"}, "queue": {"target_wait": "soon"}}
	for name, params := range bad {
		t.Run(name, func(t *testing.T) { scalertest.RunBinary(t, filepath.Join(pluginDir, "phased-scaler-"+name), params) })
	}
}
