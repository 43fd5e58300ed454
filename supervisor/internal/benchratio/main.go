// Command benchratio reads `go test -bench` output on stdin and prints the
// figures `make bench` reports: every benchmark in readable units, and the
// ratio of each measured path to its baselines measured in the same run
// (sub-benchmarks named copy-SIZE, copy+sum-SIZE, ideal-SIZE (the least a
// one-copy hop must do, in one process), raw-SIZE, d2d-SIZE and go-SIZE,
// the Go↔Go hop beside the Python ones, are the baselines of their
// siblings NAME-SIZE; some siblings are also compared to each other, see
// alsoTo).
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// result is one benchmark line: name without the -GOMAXPROCS suffix, and
// its metrics by unit.
type result struct {
	name    string
	metrics map[string]float64
}

var line = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

func parse(r io.Reader) ([]result, error) {
	var out []result
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		res := result{name: strings.TrimPrefix(m[1], "Benchmark"), metrics: map[string]float64{}}
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: metric %q: %w", res.name, f[i], err)
			}
			res.metrics[f[i+1]] = v
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

func human(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

// baselines are the sub-benchmark names that others are compared to.
var baselines = map[string]bool{"copy": true, "copy+sum": true, "ideal": true, "raw": true, "d2d": true, "go": true}

// alsoTo names, for a sub-benchmark, siblings of the same size it is
// compared to besides the baselines: the zmq hop with CURVE to the one
// without (what CURVE costs) and to raw libzmq with CURVE.
var alsoTo = map[string][]string{"curve": {"zmq", "raw+curve"}}

func report(w io.Writer, results []result) {
	fmt.Fprintln(w, "\nphased benchmarks (one run, side by side)")
	byName := map[string]result{}
	for _, r := range results {
		byName[r.name] = r
		var extra []string
		for _, unit := range []string{"MB/s", "req/s", "p50-µs", "p99-µs", "spread-max/mean"} {
			if v, ok := r.metrics[unit]; ok {
				extra = append(extra, fmt.Sprintf("%s %.1f", unit, v))
			}
		}
		fmt.Fprintf(w, "  %-36s %12s/op  %s\n", r.name, human(r.metrics["ns/op"]), strings.Join(extra, "  "))
	}
	fmt.Fprintln(w, "\nratios to the baselines of the same run (higher is better)")
	n := 0
	for _, r := range results {
		i := strings.LastIndex(r.name, "/")
		if i < 0 {
			continue
		}
		group, sub := r.name[:i], r.name[i+1:]
		j := strings.LastIndex(sub, "-")
		if j < 0 || baselines[sub[:j]] {
			continue
		}
		for _, b := range append([]string{"copy", "copy+sum", "ideal", "raw", "d2d", "go"}, alsoTo[sub[:j]]...) {
			base, ok := byName[group+"/"+b+sub[j:]]
			if !ok || base.metrics["MB/s"] == 0 {
				continue
			}
			n++
			fmt.Fprintf(w, "  %-36s %.3f × %-9s (%.0f vs %.0f MB/s)\n", r.name, r.metrics["MB/s"]/base.metrics["MB/s"], b, r.metrics["MB/s"], base.metrics["MB/s"])
		}
	}
	if n == 0 {
		fmt.Fprintln(w, "  (no baseline pairs in the input)")
	}
	// x-NAME metrics: ratios a benchmark measured itself, alternating
	// with its baseline iteration by iteration.
	first := true
	for _, r := range results {
		units := make([]string, 0, len(r.metrics))
		for unit := range r.metrics {
			if strings.HasPrefix(unit, "x-") {
				units = append(units, unit)
			}
		}
		sort.Strings(units)
		for _, unit := range units {
			if first {
				fmt.Fprintln(w, "\nratios measured alternately with the baseline, iteration by iteration (higher is better)")
				first = false
			}
			fmt.Fprintf(w, "  %-36s %.3f × %s\n", r.name, r.metrics[unit], unit[2:])
		}
	}
	floors(w, results)
}

// floors prints the figures judged against a floor measured in the same
// run: floor-NAME metrics (the figure's p50 over the floor's: 1 is the
// floor, lower is better), minus-NAME-ms metrics (the figure's p50 less
// its reference's, in ms) and ceiling-x-NAME metrics (the most the
// figure's x-NAME ratio can be on this machine, given its floor).
func floors(w io.Writer, results []result) {
	first := true
	for _, r := range results {
		var units []string
		for unit := range r.metrics {
			if strings.HasPrefix(unit, "floor-") || strings.HasPrefix(unit, "minus-") || strings.HasPrefix(unit, "ceiling-") {
				units = append(units, unit)
			}
		}
		sort.Strings(units)
		for _, unit := range units {
			if first {
				fmt.Fprintln(w, "\nagainst this machine's floor, measured in the same run (lower is better)")
				first = false
			}
			if name, ok := strings.CutPrefix(unit, "floor-"); ok {
				fmt.Fprintf(w, "  %-36s %.2f × the %s floor\n", r.name, r.metrics[unit], name)
				continue
			}
			if name, ok := strings.CutPrefix(unit, "ceiling-x-"); ok {
				fmt.Fprintf(w, "  %-36s at most %.2f × %s: what its floor leaves (now %.2f ×)\n", r.name, r.metrics[unit], name, r.metrics["x-"+name])
				continue
			}
			name := strings.TrimSuffix(strings.TrimPrefix(unit, "minus-"), "-ms")
			fmt.Fprintf(w, "  %-36s %+.2f ms over the %s reference\n", r.name, r.metrics[unit], name)
		}
	}
}

func main() {
	results, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
	if len(results) == 0 {
		fmt.Fprintln(os.Stderr, "benchratio: no benchmark results on stdin")
		os.Exit(1)
	}
	report(os.Stdout, results)
}
