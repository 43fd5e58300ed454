package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/policies/leastloaded"
	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// benchSupervisor starts a supervisor in this process on the real plugin
// binaries with the default pipeline (one instance per phase).
func benchSupervisor(b *testing.B) *supervisor.Supervisor {
	b.Helper()
	cfg := config.Default()
	cfg.PluginDir = pluginDir
	cfg.ArtifactDir = b.TempDir()
	sup := supervisor.New(cfg, supervisor.Options{})
	if err := sup.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := sup.Release(context.Background()); err != nil {
			b.Error(err)
		}
	})
	return sup
}

// one runs a request to its end and returns how long it took.
func one(b *testing.B, sup *supervisor.Supervisor, sub supervisor.Submission) time.Duration {
	start := time.Now()
	id, err := sup.Submit(sub)
	if err != nil {
		b.Fatal(err)
	}
	info, err := sup.Wait(context.Background(), id)
	if err != nil {
		b.Fatal(err)
	}
	if info.State != supervisor.StateDone {
		b.Fatalf("%s: %s: %s", id, info.State, info.Reason)
	}
	return time.Since(start)
}

// reportLatency adds p50 and p99 of the samples to the benchmark's metrics.
func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkRequest measures one request at a time through encoder,
// transformer and decoder (real processes, shm hops) at demo size, with the
// default 20 steps and with zero steps (pure pipeline overhead).
func BenchmarkRequest(b *testing.B) {
	sup := benchSupervisor(b)
	for _, steps := range []int{20, 0} {
		b.Run(fmt.Sprintf("steps-%d", steps), func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				lat = append(lat, one(b, sup, supervisor.Submission{Prompt: "bench", Seed: int64(len(lat)), Steps: steps}))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkRequestBreakdown runs zero-step requests one at a time and
// reports where their time goes, from their timelines: the median of
// each span on the request's critical path, in µs, and what no span
// covers (the supervisor's own goroutine hand-offs and RPC turnarounds).
func BenchmarkRequestBreakdown(b *testing.B) {
	sup := benchSupervisor(b)
	parts := map[string][]time.Duration{}
	var total []time.Duration
	for b.Loop() {
		id, err := sup.Submit(supervisor.Submission{Prompt: "bench", Seed: int64(len(total)), Steps: 0})
		if err != nil {
			b.Fatal(err)
		}
		info, err := sup.Wait(context.Background(), id)
		if err != nil || info.State != supervisor.StateDone {
			b.Fatalf("%s: %+v, %v", id, info.State, err)
		}
		info, _ = sup.Request(id)
		whole := info.Timeline[len(info.Timeline)-1].End.Sub(info.Submitted)
		total = append(total, whole)
		covered := time.Duration(0)
		for _, sp := range info.Timeline {
			if sp.End == nil || sp.Name == supervisor.SpanWait {
				continue // a phase waiting for its inputs overlaps its upstream's work
			}
			key := sp.Name
			if sp.Phase != "" {
				key += "-" + sp.Phase
			}
			d := sp.End.Sub(sp.Start)
			parts[key] = append(parts[key], d)
			covered += d
		}
		parts["other"] = append(parts["other"], max(whole-covered, 0))
	}
	for key, ds := range parts {
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), key+"-µs")
	}
	slices.Sort(total)
	b.ReportMetric(float64(total[len(total)/2].Microseconds()), "total-µs")
}

// BenchmarkThroughput keeps 8 requests in flight and reports requests per
// second.
func BenchmarkThroughput(b *testing.B) {
	sup := benchSupervisor(b)
	const concurrency = 8
	b.Run(fmt.Sprintf("concurrency-%d", concurrency), func(b *testing.B) {
		work := make(chan int)
		var wg sync.WaitGroup
		start := time.Now()
		for range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					one(b, sup, supervisor.Submission{Prompt: "bench", Seed: int64(i), Steps: supervisor.DefaultSteps})
				}
			}()
		}
		n := 0
		for b.Loop() {
			work <- n
			n++
		}
		close(work)
		wg.Wait()
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "req/s")
	})
}

// BenchmarkSchedule measures one scheduling decision for a request of
// three phases (1, 4 and 1 instances) through the roundrobin and
// leastloaded plugin processes (gRPC over a unix socket, AutoMTLS, as the
// supervisor calls them), and, alternately, the same policy called in this
// process. It reports the plugin's p50 and p99, the in-process p50
// (inproc-p50-µs), and x-inproc: in-process time over plugin time.
func BenchmarkSchedule(b *testing.B) {
	req := sdk.ScheduleRequest{RequestID: "r000001", Phases: []sdk.PhaseCandidates{
		{Phase: "encoder", Candidates: []sdk.Candidate{{ID: "encoder-0", Ready: true}}},
		{Phase: "transformer"},
		{Phase: "decoder", Candidates: []sdk.Candidate{{ID: "decoder-0", Ready: true}}},
	}}
	for i := range 4 {
		req.Phases[1].Candidates = append(req.Phases[1].Candidates, sdk.Candidate{
			ID: fmt.Sprintf("transformer-%d", i), Index: i, Ready: true, OpenRooms: i % 3, LatencyEWMAms: float64(20 + i),
			Labels: map[string]string{"zone": "a"},
		})
	}
	for _, tc := range []struct {
		name   string
		inproc sdk.Policy
	}{
		{"roundrobin", roundrobin.New()},
		{"leastloaded", leastloaded.New()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			plugin := policytest.StartBinary(b, filepath.Join(pluginDir, "phased-policy-"+tc.name))
			ctx := context.Background()
			var lat, in []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := plugin.Schedule(ctx, req); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				b.StopTimer()
				start = time.Now()
				if _, err := tc.inproc.Schedule(ctx, req); err != nil {
					b.Fatal(err)
				}
				in = append(in, time.Since(start))
				b.StartTimer()
			}
			reportLatency(b, lat)
			slices.Sort(in)
			b.ReportMetric(float64(in[len(in)/2].Nanoseconds())/1000, "inproc-p50-µs")
			var sumIn, sumLat time.Duration
			for i := range lat {
				sumIn, sumLat = sumIn+in[i], sumLat+lat[i]
			}
			b.ReportMetric(sumIn.Seconds()/sumLat.Seconds(), "x-inproc")
		})
	}
}
