package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// BenchmarkT2V measures one request of the tiny text-to-video model
// (examples/t2v-tiny, 20 DDIM steps) through a supervisor in this process
// and its three Python phase processes (shm hops), alternately, request by
// request, with the same three phases called in one Python process
// (examples/t2v-tiny/local.py --serve, phased.run_local). Both use torch's
// default threads. It reports the p50 of each and x-inprocess, the
// in-process time over the supervisor's: 1 means no overhead, 0.91 is 10 %.
func BenchmarkT2V(b *testing.B) {
	sup := startInProcess(b, `
phase "encoder"     { plugin = "t2v-encoder" }
phase "transformer" { plugin = "t2v-transformer" }
phase "decoder"     { plugin = "t2v-decoder" }
`)
	local := startLocalT2V(b, b.TempDir())
	prompts := []string{"a red circle moving left", "a green square moving up", "a blue triangle moving right"}
	var viaSup, inProc []time.Duration
	for i := 0; b.Loop(); i++ {
		sub := supervisor.Submission{Prompt: prompts[i%len(prompts)], Seed: int64(i), Steps: 20}
		viaSup = append(viaSup, one(b, sup, sub))
		inProc = append(inProc, local.run(b, fmt.Sprintf("l%d", i), sub))
	}
	sum := func(d []time.Duration) (s time.Duration) {
		for _, x := range d {
			s += x
		}
		return s
	}
	b.ReportMetric(sum(inProc).Seconds()/sum(viaSup).Seconds(), "x-inprocess")
	slices.Sort(viaSup)
	slices.Sort(inProc)
	b.ReportMetric(float64(viaSup[len(viaSup)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(inProc[len(inProc)/2].Microseconds()), "inproc-p50-µs")
}

// localT2V is examples/t2v-tiny/local.py --serve, running.
type localT2V struct {
	in  io.Writer
	out *bufio.Scanner
}

func startLocalT2V(b *testing.B, outDir string) *localT2V {
	cmd := exec.Command(python, filepath.Join(moduleRoot, "examples", "t2v-tiny", "local.py"), "--serve", outDir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close()
		_ = cmd.Wait()
	})
	l := &localT2V{in: in, out: bufio.NewScanner(out)}
	if !l.out.Scan() || l.out.Text() != "ready" {
		b.Fatalf("local.py did not start: %q %v", l.out.Text(), l.out.Err())
	}
	return l
}

// run runs one request in the Python process and returns the time its
// three phases took there.
func (l *localT2V) run(b *testing.B, id string, sub supervisor.Submission) time.Duration {
	b.Helper()
	fmt.Fprintf(l.in, "%s\t%d\t%d\t%s\n", id, sub.Seed, sub.Steps, sub.Prompt)
	if !l.out.Scan() {
		b.Fatalf("local.py ended: %v", l.out.Err())
	}
	ns, _, ok := strings.Cut(l.out.Text(), "\t")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil {
		b.Fatalf("local.py answered %q", l.out.Text())
	}
	return time.Duration(n)
}

// BenchmarkBatchT2V measures throughput with 8 requests in flight
// through two pipelines of the tiny text-to-video model, each with one
// transformer instance and one torch thread per process, started side by
// side: one whose transformer batches (batch { max_size = 8 }), one whose
// does not. Each turn keeps 8 requests (10 DDIM steps) in flight, a new
// one submitted as each ends, until 24 have ended, first through one
// pipeline, then the other. It reports each one's requests per second
// and x-batch, the batched throughput over the unbatched one (1: no
// gain).
func BenchmarkBatchT2V(b *testing.B) {
	const inflight, perTurn, steps = 8, 24, 10
	start := func(batch string) *supervisor.Supervisor {
		return startInProcess(b, `
params = { threads = "1" }
phase "encoder"     { plugin = "t2v-encoder" }
phase "transformer" {
  plugin = "t2v-transformer"
  `+batch+`
}
phase "decoder"     { plugin = "t2v-decoder" }
`)
	}
	batched := start(`batch {
    max_size = 8
    max_wait = "20ms"
  }`)
	alone := start("")
	prompts := []string{"a red circle moving left", "a green square moving up", "a blue triangle moving right"}
	// turn keeps inflight requests in flight until n have ended, and
	// returns the time it took.
	turn := func(sup *supervisor.Supervisor, n int) (time.Duration, error) {
		began := time.Now()
		next := make(chan int)
		errs := make(chan error, inflight)
		for range inflight {
			go func() {
				for i := range next {
					id, err := sup.Submit(supervisor.Submission{Prompt: prompts[i%len(prompts)], Seed: int64(i), Steps: steps})
					if err == nil {
						var info supervisor.RequestInfo
						if info, err = sup.Wait(context.Background(), id); err == nil && info.State != supervisor.StateDone {
							err = fmt.Errorf("%s: %s: %s", id, info.State, info.Reason)
						}
					}
					if err != nil {
						errs <- err
						for range next {
						}
						return
					}
				}
				errs <- nil
			}()
		}
		for i := range n {
			next <- i
		}
		close(next)
		var first error
		for range inflight {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return time.Since(began), first
	}
	for _, sup := range []*supervisor.Supervisor{batched, alone} {
		if _, err := turn(sup, inflight); err != nil { // warm: torch's first calls
			b.Fatal(err)
		}
	}
	var withBatch, without time.Duration
	n := 0
	for b.Loop() {
		n++
		for _, t := range []struct {
			sup *supervisor.Supervisor
			sum *time.Duration
		}{{batched, &withBatch}, {alone, &without}} {
			d, err := turn(t.sup, perTurn)
			if err != nil {
				b.Fatal(err)
			}
			*t.sum += d
		}
	}
	perSec := func(d time.Duration) float64 { return float64(n*perTurn) / d.Seconds() }
	b.ReportMetric(perSec(withBatch), "batch-req/s")
	b.ReportMetric(perSec(without), "alone-req/s")
	b.ReportMetric(without.Seconds()/withBatch.Seconds(), "x-batch")
}

// startInProcess starts a supervisor in this process on the config src,
// with the suite's plugins, released when the benchmark ends.
func startInProcess(b *testing.B, src string) *supervisor.Supervisor {
	cfg, err := config.Parse([]byte(src), "t2v.hcl")
	if err != nil {
		b.Fatal(err)
	}
	cfg.PluginDir = pluginDir
	cfg.ArtifactDir = b.TempDir()
	sup := supervisor.New(cfg, supervisor.Options{})
	if err := sup.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Not b.Context(): it is cancelled before cleanups run.
		if err := sup.Release(context.Background()); err != nil {
			b.Error(err)
		}
	})
	return sup
}
