package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// TestBatching: one transformer instance that batches up to 4 with
// max_rooms 4, and 8 requests at once: every artifact is the
// reference's (the built-in transformer's batched run computes each
// request as it does alone), the instance ran batches of more than one
// and never held more than 4 rooms, and requests past its credits
// waited for them instead of failing.
func TestBatching(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, `
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin    = "transformer"
  max_rooms = 4
  batch {
    max_size = 4
    max_wait = "200ms"
  }
}
phase "decoder" { plugin = "decoder" }
`))
	infos := p.submitAll(t, 8, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: fmt.Sprint("batch ", i), Seed: int64(i), Steps: 20}
	})
	waited := 0
	for i, info := range infos {
		watchDone(t, p, info.ID, fmt.Sprint("batch ", i), int64(i), 20)
		if _, ev := lastEvent(t, p, info.ID, "waiting for credit"); ev != "" {
			waited++
		}
	}
	fams := scrape(t, p)
	batches, _ := sample(fams, "phased_phase_batches_total", "phase", "transformer")
	runs, _ := sample(fams, "phased_phase_batched_runs_total", "phase", "transformer")
	if batches < 1 || runs < 2*batches || runs > 4*batches {
		t.Errorf("%v batches of %v runs in all; want batches of 2 to 4", batches, runs)
	}
	if most := mostAtOnce(t, p, infos, "transformer-0"); most > 4 {
		t.Errorf("transformer-0 held %d requests at once, past max_rooms 4", most)
	}
	if waited == 0 {
		t.Error("no request waited for credit: 8 came at once to an instance of max_rooms 4")
	}
	t.Logf("8 requests: %v batches of %v runs; %d waited for credit", batches, runs, waited)
	p.release(t)
}

// TestBatchNotHung: Runs that wait for their batch behind a batch that
// takes longer than hang_timeout are not taken for hung while the
// instance reports progress: no instance is killed, no retry is spent.
func TestBatchNotHung(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, `
retries = 0
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin       = "flaky"
  hang_timeout = "1s"
  params       = { marker_dir = "`+dir+`", pace = "100ms" }
  batch {
    max_size = 2
    max_wait = "0s"
  }
}
phase "decoder" { plugin = "decoder" }
`))
	infos := p.submitAll(t, 4, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: fmt.Sprint("queued ", i), Seed: int64(i), Steps: 8}
	})
	for i, info := range infos {
		if info := watchDone(t, p, info.ID, fmt.Sprint("queued ", i), int64(i), 8); info.Attempts != 1 {
			t.Errorf("%s: %d attempts, want 1", info.ID, info.Attempts)
		}
	}
	if st, err := p.client.Status(context.Background()); err != nil || st.InstanceExits != 0 {
		t.Errorf("instance exits %d (%v), want none", st.InstanceExits, err)
	}
	p.release(t)
}

// TestCreditRefused: a transformer whose inputs fit its max_input_bytes
// once (the supervisor does not know the size) refuses a second room.
// Six quick requests at once, so that rooms come and go while others are
// refused: every one is placed again, later, without spending its
// retries (retries = 0), and ends with the reference artifact; the
// instance never held two.
func TestCreditRefused(t *testing.T) {
	dir := shortDir(t)
	// The transformer's inputs: a 16×64 context and a 4×8×24×32 latent,
	// float32: 102,400 bytes.
	p := startSupervisor(t, dir, writeConfig(t, dir, `
retries = 0
phase "encoder" { plugin = "encoder" }
phase "transformer" {
  plugin          = "flaky"
  max_input_bytes = 150000
  params          = { marker_dir = "`+dir+`", pace = "2ms" }
}
phase "decoder" { plugin = "decoder" }
`))
	infos := p.submitAll(t, 6, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: fmt.Sprint("credit ", i), Seed: int64(i), Steps: 10}
	})
	refused := 0
	for i, info := range infos {
		watchDone(t, p, info.ID, fmt.Sprint("credit ", i), int64(i), 10)
		full, ev := lastEvent(t, p, info.ID, "refused")
		if ev != "" {
			refused++
			if !strings.Contains(ev, "no credit: inputs of 102400 bytes with 102400 of 150000 in use, max_input_bytes 150000") {
				t.Errorf("%s: refused event %q", info.ID, ev)
			}
		}
		for _, e := range full.Events {
			if e.What == "retry" {
				t.Errorf("%s: a refusal spent a retry: %s", info.ID, e.Detail)
			}
		}
	}
	if refused == 0 {
		t.Error("no request was refused")
	}
	if most := mostAtOnce(t, p, infos, "transformer-0"); most > 1 {
		t.Errorf("transformer-0 ran %d requests at once; its credit is one", most)
	}
	p.release(t)
}

// mostAtOnce is the most requests of infos whose runs on instance
// overlapped in time, from their timelines.
func mostAtOnce(t *testing.T, p *proc, infos []supervisor.RequestInfo, instance string) int {
	t.Helper()
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, info := range infos {
		full, err := p.client.Request(context.Background(), info.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range full.Timeline {
			if s.Name == supervisor.SpanRun && s.Instance == instance && s.End != nil {
				edges = append(edges, edge{s.Start, 1}, edge{*s.End, -1})
			}
		}
	}
	for i := range edges { // insertion sort, ends before starts at one instant
		for j := i; j > 0 && (edges[j].at.Before(edges[j-1].at) || edges[j].at.Equal(edges[j-1].at) && edges[j].delta < edges[j-1].delta); j-- {
			edges[j], edges[j-1] = edges[j-1], edges[j]
		}
	}
	now, most := 0, 0
	for _, e := range edges {
		now += e.delta
		most = max(most, now)
	}
	return most
}
