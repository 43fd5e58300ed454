package e2e

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/phased/phased/supervisor"
)

// scrape reads the supervisor's /metrics and parses it as Prometheus
// does; a line it cannot parse fails the test.
func scrape(t *testing.T, p *proc) map[string]*dto.MetricFamily {
	t.Helper()
	body, err := p.client.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not the text format: %v\n%s", err, body)
	}
	return fams
}

// sample returns the value of metric name with exactly the labels given
// (name=value pairs; other labels may be present), and whether there is one.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestObserve: one request through encoder → transformer ×2 → decoder,
// then what an operator sees of it: its timeline (every span, each
// ended; the hops with their bytes and backend), its progress (steps),
// the probes, and /metrics parsed as Prometheus parses it, whose figures
// must agree with the timeline, with the phases' own figures among them.
func TestObserve(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "params = { height = 64, width = 64 }\n"+pipeline))
	ctx := context.Background()

	h, err := p.client.Health(ctx)
	if err != nil || !h.Ready || h.State != supervisor.SupervisorRunning {
		t.Fatalf("ready probe: %+v, %v", h, err)
	}

	const steps = 12
	id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "watched", Seed: 3, Steps: steps})
	if err != nil {
		t.Fatal(err)
	}
	if !validULID(id) {
		t.Errorf("request id %q is not a ULID", id)
	}
	info, err := p.client.Watch(ctx, id, nil)
	if err != nil || info.State != supervisor.StateDone {
		t.Fatalf("request: %+v, %v", info, err)
	}
	// The events of a request that ended may still be on their way (the
	// progress streams are not the Run calls): the final view.
	info, err = p.client.Request(ctx, id)
	if err != nil {
		t.Fatal(err)
	}

	// The timeline: every span of a request through three phases, in
	// order of their start, each ended within the request.
	var names []string
	hopBytes := map[string]int64{} // sender phase -> bytes
	for _, s := range info.Timeline {
		name := s.Name
		if s.Phase != "" {
			name += " " + s.Phase
		}
		names = append(names, name)
		// The request's end (Finished) is journaled, so the artifact
		// span (journal, report) begins when it ends; the others are
		// within it.
		end := *info.Finished
		if s.Name == supervisor.SpanArtifact {
			end = s.Start.Add(time.Minute)
			if s.Start.Before(*info.Finished) {
				t.Errorf("the artifact span begins at %v, before the request's end %v", s.Start, info.Finished)
			}
		}
		if s.End == nil || s.End.Before(s.Start) || s.Start.Before(info.Submitted) || s.End.After(end) {
			t.Errorf("span %s: %v → %v, outside the request's %v → %v", name, s.Start, s.End, info.Submitted, info.Finished)
		}
		if s.Name == supervisor.SpanHop {
			if s.Backend != "shm" || s.Bytes <= 0 || s.Room == 0 {
				t.Errorf("hop of %s: %+v; want the shm backend, its room and its bytes", s.Phase, s)
			}
			hopBytes[s.Phase] = s.Bytes
		}
		if s.Name == supervisor.SpanRun && s.Phase == "transformer" && s.Steps != steps {
			t.Errorf("the transformer's run span has %d steps, want %d", s.Steps, steps)
		}
		if s.Name == supervisor.SpanSchedule && !strings.Contains(s.Detail, "encoder=encoder-0") {
			t.Errorf("schedule span %q does not name the choice", s.Detail)
		}
	}
	for _, want := range []string{"queued", "schedule", "rooms", "run encoder", "hop encoder", "run transformer", "hop transformer", "run decoder", "remove", "artifact"} {
		if !contains(names, want) {
			t.Errorf("timeline %v has no %q span", names, want)
		}
	}
	for i := 1; i < len(info.Timeline); i++ {
		if info.Timeline[i].Start.Before(info.Timeline[i-1].Start) {
			t.Errorf("timeline not in order of start: %v", names)
		}
	}
	var tr supervisor.PhaseProgress
	for _, pp := range info.Progress {
		if pp.Phase == "transformer" {
			tr = pp
		}
	}
	if tr.Done != steps || tr.Total != steps || tr.Stage != "finished" {
		t.Errorf("the transformer's progress: %+v; want %d of %d, finished", tr, steps, steps)
	}
	// "phase done" of the decoder counts its own work, not the time since
	// every phase was called: less than the whole request minus the
	// transformer's run.
	var runTr time.Duration
	for _, s := range info.Timeline {
		if s.Name == supervisor.SpanRun && s.Phase == "transformer" {
			runTr = s.End.Sub(s.Start)
		}
	}
	for _, e := range info.Events {
		if e.What == "phase done" && e.Phase == "decoder" {
			d, err := time.ParseDuration(strings.SplitN(e.Detail, ",", 2)[0])
			if err != nil || d >= info.Finished.Sub(info.Submitted)-runTr {
				t.Errorf("decoder done in %q (%v); the request took %v, the transformer ran %v", e.Detail, err, info.Finished.Sub(info.Submitted), runTr)
			}
		}
	}

	// /metrics agrees with the timeline.
	fams := scrape(t, p)
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"phased_up", []string{"state", "running"}, 1},
		{"phased_requests_ended_total", []string{"state", "done"}, 1},
		{"phased_requests", []string{"state", "done"}, 1},
		{"phased_requests", []string{"state", "queued"}, 0},
		{"phased_queue_depth", nil, 0},
		{"phased_request_duration_seconds", []string{"state", "done"}, 1}, // count
		{"phased_queue_wait_seconds", nil, 1},
		{"phased_phase_run_seconds", []string{"phase", "decoder"}, 1},
		{"phased_steps_total", []string{"phase", "transformer"}, steps},
		{"phased_hop_bytes_total", []string{"backend", "shm"}, float64(hopBytes["encoder"] + hopBytes["transformer"])},
		{"phased_hop_seconds", []string{"backend", "shm"}, 2},
		{"phased_instances", []string{"phase", "transformer", "state", "ready"}, 2},
		{"phased_instances", []string{"phase", "decoder", "state", "failed"}, 0},
		{"phased_policy_decisions_total", []string{"phase", "encoder", "policy", "roundrobin"}, 1},
		{"phased_policy_fallbacks_total", []string{"phase", "encoder"}, 0},
		{"phased_policy_decision_seconds", []string{"policy", "roundrobin"}, 1},
		{"phased_rooms_open", []string{"instance", "encoder-0"}, 0},
		// The phases' own figures, through the supervisor.
		{"phased_phase_transfer_sent_bytes_total", []string{"instance", "encoder-0", "backend", "shm"}, float64(hopBytes["encoder"])},
		{"phased_phase_transfer_received_bytes_total", []string{"instance", "decoder-0", "backend", "shm"}, float64(hopBytes["transformer"])},
		{"phased_phase_runs_total", []string{"instance", "decoder-0", "outcome", "ok"}, 1},
		{"phased_phase_scrape_errors_total", nil, 0},
	}
	for _, w := range want {
		got, ok := sample(fams, w.name, w.labels...)
		if !ok || got != w.value {
			t.Errorf("%s%v = %v (found: %v), want %v", w.name, w.labels, got, ok, w.value)
		}
	}
	// The transformers' own step counters add up to the request's steps.
	var own float64
	for _, in := range []string{"transformer-0", "transformer-1"} {
		v, _ := sample(fams, "phased_phase_steps_total", "instance", in)
		own += v
	}
	if own != steps {
		t.Errorf("phased_phase_steps_total of the transformers: %v, want %d", own, steps)
	}
	if n, ok := sample(fams, "phased_journal_write_seconds"); !ok || n < 2 {
		t.Errorf("journal writes observed: %v; want at least 2 (accepted, ended)", n)
	}
	var famNames []string
	for name := range fams {
		famNames = append(famNames, name)
	}
	sort.Strings(famNames)
	t.Logf("metric families: %s", strings.Join(famNames, " "))
	p.release(t)
}

// TestQueuePosition: with one dispatch slot, requests wait in order, and
// each knows its place.
func TestQueuePosition(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, "max_inflight = 1\nparams = { height = 64, width = 64 }\n"+pipeline))
	ctx := context.Background()
	var ids []string
	for i, steps := range []int{10000, 1, 1} {
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: fmt.Sprint("q", i), Steps: steps})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for i, want := range []int{0, 1, 2} {
		info, err := p.client.Request(ctx, ids[i])
		if err != nil {
			t.Fatal(err)
		}
		if info.QueuePosition != want {
			t.Errorf("request %d: queue position %d (%s), want %d", i, info.QueuePosition, info.State, want)
		}
	}
	st, err := p.client.StatusPage(ctx, supervisor.Page{State: supervisor.StateQueued})
	if err != nil || len(st.Requests) != 2 || st.Requests[0].ID != ids[1] {
		t.Fatalf("status --state queued: %+v, %v", st.Requests, err)
	}
	fams := scrape(t, p)
	if v, _ := sample(fams, "phased_queue_depth"); v != 2 {
		t.Errorf("phased_queue_depth %v, want 2", v)
	}
	// The first leaves: the others move up, and are told.
	if _, err := p.client.Remove(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[1:] {
		if info, err := p.client.Watch(ctx, id, nil); err != nil || info.State != supervisor.StateDone {
			t.Fatalf("%s: %+v, %v", id, info, err)
		}
	}
	p.release(t)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// validULID reports whether id is 26 characters of Crockford base32.
func validULID(id string) bool {
	if len(id) != 26 {
		return false
	}
	for _, c := range id {
		if !strings.ContainsRune("0123456789ABCDEFGHJKMNPQRSTVWXYZ", c) {
			return false
		}
	}
	return true
}
