package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

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
