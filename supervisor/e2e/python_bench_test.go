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
	cfg, err := config.Parse([]byte(`
phase "encoder"     { plugin = "t2v-encoder" }
phase "transformer" { plugin = "t2v-transformer" }
phase "decoder"     { plugin = "t2v-decoder" }
`), "t2v.hcl")
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
