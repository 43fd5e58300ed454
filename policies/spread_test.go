package policies_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/phased/phased/policies/leastloaded"
	"github.com/phased/phased/policies/p2c"
	"github.com/phased/phased/policies/random"
	"github.com/phased/phased/policies/roundrobin"
	"github.com/phased/phased/sdk"
)

// simulate sends requests to one phase of instances through policy p, in
// simulated time: a request arrives every gap, costs 1 (80%) or 10 (20%)
// units of work, and each instance serves its requests one at a time, in
// order. The policy sees each instance's open requests (queued or being
// served) as its open rooms, and the mean service time of its last
// requests as its latency. At each arrival, it records the max/mean of the
// open requests over the instances; it returns their average, 1 being a
// perfect spread.
func simulate(t testing.TB, p sdk.Policy, instances, requests int, seed uint64) float64 {
	rng := rand.New(rand.NewPCG(seed, seed))
	const meanCost = 0.8*1 + 0.2*10
	gap := meanCost / float64(instances) / 0.9 // 90% busy
	finish := make([][]float64, instances)     // per instance: finish times of its open requests, in order
	latency := make([]float64, instances)
	var sum float64
	var samples int
	for r := range requests {
		now := float64(r) * gap
		cands := make([]sdk.Candidate, instances)
		total, most := 0, 0
		for i := range finish {
			for len(finish[i]) > 0 && finish[i][0] <= now {
				finish[i] = finish[i][1:]
			}
			n := len(finish[i])
			cands[i] = sdk.Candidate{ID: fmt.Sprint(i), Index: i, Ready: true, OpenRooms: n, LatencyEWMAms: latency[i]}
			total += n
			most = max(most, n)
		}
		if total > 0 {
			sum += float64(most) / (float64(total) / float64(instances))
			samples++
		}
		d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{RequestID: fmt.Sprint(r), Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: cands}}})
		if err != nil {
			t.Fatal(err)
		}
		var i int
		fmt.Sscan(d.Choices["t"], &i)
		cost := 1.0
		if rng.Float64() < 0.2 {
			cost = 10
		}
		start := now
		if q := finish[i]; len(q) > 0 {
			start = q[len(q)-1]
		}
		finish[i] = append(finish[i], start+cost)
		latency[i] = 0.8*latency[i] + 0.2*(start+cost-now)
	}
	return sum / float64(samples)
}

// BenchmarkSpread reports, per policy, the average max/mean of open
// requests over 4 instances while 10,000 requests of uneven cost arrive at
// 90% load (spread-max/mean: 1 is perfect, lower is better).
func BenchmarkSpread(b *testing.B) {
	for _, tc := range []struct {
		name string
		p    func() sdk.Policy
	}{
		{"roundrobin", func() sdk.Policy { return roundrobin.New() }},
		{"random", func() sdk.Policy { return random.NewSeeded(1, 1) }},
		{"p2c", func() sdk.Policy { return p2c.NewSeeded(1, 1) }},
		{"leastloaded", func() sdk.Policy { return leastloaded.New() }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var ratio float64
			for b.Loop() {
				ratio = simulate(b, tc.p(), 4, 10000, 42)
			}
			b.ReportMetric(ratio, "spread-max/mean")
		})
	}
}

// TestSpreadOrder: with uneven costs, the load-aware policies spread
// better than round robin and random (the simulation is seeded: the
// figures are the same on every run).
func TestSpreadOrder(t *testing.T) {
	rr := simulate(t, roundrobin.New(), 4, 10000, 42)
	rnd := simulate(t, random.NewSeeded(1, 1), 4, 10000, 42)
	two := simulate(t, p2c.NewSeeded(1, 1), 4, 10000, 42)
	ll := simulate(t, leastloaded.New(), 4, 10000, 42)
	t.Logf("max/mean: random %.3f, roundrobin %.3f, p2c %.3f, leastloaded %.3f", rnd, rr, two, ll)
	if !(ll < rr && two < rr && ll < rnd && two < rnd) {
		t.Fatalf("max/mean: random %.3f, roundrobin %.3f, p2c %.3f, leastloaded %.3f: want leastloaded and p2c below roundrobin and random", rnd, rr, two, ll)
	}
}
