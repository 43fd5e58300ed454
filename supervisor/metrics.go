package supervisor

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/phased/phased/sdk"
)

// The supervisor's metrics, served on the control API at GET /metrics in
// Prometheus's text format. Figures the supervisor keeps anyway (requests
// by state, instances, policy decisions, rooms open) are read when a
// scrape comes; latencies are histograms observed as they happen. Each
// phase instance's own figures (its transfer manager's counters, its
// steps) are asked for at scrape time with the Status RPC and exposed as
// phased_phase_NAME with the labels phase and instance added. Every name
// is listed in docs/metrics.md.

// Bucket bounds, in seconds.
var (
	// requestBuckets spans a zero-step request (ms) to a long video (min).
	requestBuckets = prometheus.ExponentialBucketsRange(0.001, 600, 20)
	// fastBuckets spans a policy call or a journal write: 10 µs to 10 s.
	fastBuckets = prometheus.ExponentialBucketsRange(0.00001, 10, 16)
)

// metrics are the supervisor's own instruments, in its own registry (no
// global state: two supervisors in one process, as in tests, keep theirs
// apart).
type metrics struct {
	reg *prometheus.Registry

	requests     *prometheus.CounterVec   // ended, by outcome
	refused      prometheus.Counter       // not accepted: the queue was full
	requestTime  *prometheus.HistogramVec // accepted → ended, by outcome
	queueWait    prometheus.Histogram     // accepted → a dispatch slot
	phaseRun     *prometheus.HistogramVec // a phase's Run: inputs there → outputs handed over
	steps        *prometheus.CounterVec   // units of work reported, by phase
	resumes      *prometheus.CounterVec   // Runs resumed from a checkpoint, by phase
	stepsSaved   *prometheus.CounterVec   // steps those Runs did not run again, by phase
	hopBytes     *prometheus.CounterVec   // bytes moved between phases, by backend
	hopTime      *prometheus.HistogramVec // a hop: outputs handed over → the receiver's Success
	decisionTime *prometheus.HistogramVec // a Schedule call, by policy
	journalWrite prometheus.Histogram     // one journal write, fsync included
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phased_requests_ended_total", Help: "Requests that ended, by state (done, failed).",
		}, []string{"state"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "phased_requests_refused_total", Help: "Requests not accepted because max_queue requests were waiting (HTTP 429).",
		}),
		requestTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "phased_request_duration_seconds", Help: "Time from a request's acceptance to its end, by state (done, failed).", Buckets: requestBuckets,
		}, []string{"state"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "phased_queue_wait_seconds", Help: "Time requests waited in the queue for a dispatch slot (max_inflight).", Buckets: requestBuckets,
		}),
		phaseRun: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "phased_phase_run_seconds", Help: "Time a phase's Run worked on a request: from its inputs' arrival to its outputs handed over (or its artifact written).", Buckets: requestBuckets,
		}, []string{"phase"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phased_steps_total", Help: "Units of work (denoising steps) the phases reported done; its rate is steps per second.",
		}, []string{"phase"}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phased_checkpoint_resumes_total", Help: "Runs that resumed from their request's checkpoint instead of step 0, by phase.",
		}, []string{"phase"}),
		stepsSaved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phased_checkpoint_steps_saved_total", Help: "Steps that Runs resumed from a checkpoint did not run again, by phase.",
		}, []string{"phase"}),
		hopBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "phased_hop_bytes_total", Help: "Bytes phases sent to the next phase, by transfer backend.",
		}, []string{"backend"}),
		hopTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "phased_hop_seconds", Help: "Time a hop took: from the sender's outputs handed to its transfer manager to the receiver's Success, by backend.", Buckets: fastBuckets,
		}, []string{"backend"}),
		decisionTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "phased_policy_decision_seconds", Help: "Time a policy plugin took to answer a Schedule call, by policy.", Buckets: fastBuckets,
		}, []string{"policy"}),
		journalWrite: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "phased_journal_write_seconds", Help: "Time one write to the request journal took, fsync included.", Buckets: fastBuckets,
		}),
	}
	m.reg.MustRegister(m.requests, m.refused, m.requestTime, m.queueWait, m.phaseRun, m.steps, m.resumes, m.stepsSaved, m.hopBytes, m.hopTime, m.decisionTime, m.journalWrite)
	return m
}

// ended counts a request that ended.
func (m *metrics) ended(end RequestInfo) {
	m.requests.WithLabelValues(end.State).Inc()
	if end.Finished != nil {
		m.requestTime.WithLabelValues(end.State).Observe(end.Finished.Sub(end.Submitted).Seconds())
	}
}

// phaseDone counts a Run that succeeded, and its hop.
func (m *metrics) phaseDone(in *instance, took time.Duration, res sdk.RunResult, backend string) {
	m.phaseRun.WithLabelValues(in.phase).Observe(took.Seconds())
	if res.SentBytes > 0 && backend != "" {
		m.hopBytes.WithLabelValues(backend).Add(float64(res.SentBytes))
		m.hopTime.WithLabelValues(backend).Observe(res.SendTime.Seconds())
	}
}

// stateCollector exposes, at each scrape, what the supervisor keeps
// anyway: requests by state, the queue, instances by state, restarts,
// rooms open, policy decisions, and each instance's own figures.
type stateCollector struct{ s *Supervisor }

// Describe sends nothing: the instances' own figures are only known at
// scrape time, so the collector is unchecked.
func (stateCollector) Describe(chan<- *prometheus.Desc) {}

var (
	descRequests     = prometheus.NewDesc("phased_requests", "Requests the supervisor remembers, by state (queued, running, done, failed).", []string{"state"}, nil)
	descQueueDepth   = prometheus.NewDesc("phased_queue_depth", "Requests waiting for a dispatch slot.", nil, nil)
	descInflight     = prometheus.NewDesc("phased_inflight_requests", "Requests holding a dispatch slot.", nil, nil)
	descUp           = prometheus.NewDesc("phased_up", "1 while the supervisor runs; its state is a label (starting, running, releasing, released).", []string{"state"}, nil)
	descInstances    = prometheus.NewDesc("phased_instances", "Phase instances, by phase and state (starting, ready, exited, restarting, failed, released).", []string{"phase", "state"}, nil)
	descRestarts     = prometheus.NewDesc("phased_instance_restarts_total", "Restarts of each phase instance since the supervisor started.", []string{"phase", "instance"}, nil)
	descExits        = prometheus.NewDesc("phased_instance_exits_total", "Instance processes that exited unasked or were killed as hung.", nil, nil)
	descRetried      = prometheus.NewDesc("phased_retried_attempts_total", "Dispatch attempts after a request's first (an instance it used exited or hung).", nil, nil)
	descRoomsOpen    = prometheus.NewDesc("phased_rooms_open", "Room sides open on each instance, as the supervisor counts them.", []string{"phase", "instance"}, nil)
	descInstInfl     = prometheus.NewDesc("phased_instance_inflight", "Requests each instance serves now.", []string{"phase", "instance"}, nil)
	descDecisions    = prometheus.NewDesc("phased_policy_decisions_total", "Scheduling decisions for each phase, by its live policy at the time of the scrape.", []string{"phase", "policy"}, nil)
	descFallbacks    = prometheus.NewDesc("phased_policy_fallbacks_total", "Decisions the built-in round robin made because the phase's policy failed.", []string{"phase", "policy"}, nil)
	descShadow       = prometheus.NewDesc("phased_policy_shadow_decisions_total", "Shadow policy decisions, by outcome (agree, disagree, error).", []string{"phase", "outcome"}, nil)
	descPluginScrape = prometheus.NewDesc("phased_phase_scrape_errors_total", "Instances whose own figures could not be read at this scrape.", nil, nil)
)

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	counts := s.stateCountsLocked()
	state := s.stateLocked()
	s.mu.Unlock()
	for _, st := range RequestStates {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.GaugeValue, float64(counts[st]), st)
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1, state)
	ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(s.queue.len()))
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(s.queue.held()))
	ch <- prometheus.MustNewConstMetric(descExits, prometheus.CounterValue, float64(s.crashes.Load()))
	ch <- prometheus.MustNewConstMetric(descRetried, prometheus.CounterValue, float64(s.retried.Load()))
	var ready []*instance
	for _, ph := range s.phases {
		byState := map[string]int{stateStarting: 0, stateReady: 0, stateDraining: 0, stateExited: 0, stateRestarting: 0, stateFailed: 0, stateReleased: 0}
		for _, in := range ph.all() {
			st := in.currentState()
			byState[st]++
			if st == stateReady {
				ready = append(ready, in)
			}
			ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(in.restart.counts()), ph.cfg.Name, in.id)
			ch <- prometheus.MustNewConstMetric(descRoomsOpen, prometheus.GaugeValue, float64(in.rooms.Load()), ph.cfg.Name, in.id)
			ch <- prometheus.MustNewConstMetric(descInstInfl, prometheus.GaugeValue, float64(in.inflight.Load()), ph.cfg.Name, in.id)
		}
		for st, n := range byState {
			ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(n), ph.cfg.Name, st)
		}
		policy := ph.live.Load().name
		ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(ph.stats.decisions.Load()), ph.cfg.Name, policy)
		ch <- prometheus.MustNewConstMetric(descFallbacks, prometheus.CounterValue, float64(ph.stats.fallbacks.Load()), ph.cfg.Name, policy)
		agree, calls, errs := ph.stats.shadowAgree.Load(), ph.stats.shadowCalls.Load(), ph.stats.shadowErrors.Load()
		ch <- prometheus.MustNewConstMetric(descShadow, prometheus.CounterValue, float64(agree), ph.cfg.Name, "agree")
		ch <- prometheus.MustNewConstMetric(descShadow, prometheus.CounterValue, float64(calls-agree), ph.cfg.Name, "disagree")
		ch <- prometheus.MustNewConstMetric(descShadow, prometheus.CounterValue, float64(errs), ph.cfg.Name, "error")
	}
	failed := collectInstances(ready, ch)
	ch <- prometheus.MustNewConstMetric(descPluginScrape, prometheus.CounterValue, float64(failed))
}

// scrapeTimeout bounds the Status call of one instance at a scrape.
const scrapeTimeout = 2 * time.Second

// metricName is what a name or label name of an instance's figure may
// be: Prometheus's rule, lower case.
var metricName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,63}$`)

// maxInstanceMetrics bounds the figures taken from one instance per
// scrape: a plugin cannot flood the supervisor's answer.
const maxInstanceMetrics = 256

// collectInstances asks every ready instance, at once, for its own
// figures and sends them as phased_phase_NAME{phase, instance, labels}.
// What a plugin sends is checked: a bad name or label, a second sample
// with the same labels, or a family whose type, help or label names
// differ from the first instance's is left out, never fails the scrape.
// It returns how many instances could not be read.
func collectInstances(ins []*instance, ch chan<- prometheus.Metric) (failed int) {
	type answer struct {
		in *instance
		ms []sdk.Metric
	}
	answers := make([]answer, len(ins))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, in := range ins {
		answers[i].in = in
		l := in.cur.Load()
		if l == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
			defer cancel()
			st, err := l.ctl.Status(ctx)
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
				return
			}
			answers[i].ms = st.Metrics
		}()
	}
	wg.Wait()
	type family struct {
		desc    *prometheus.Desc
		counter bool
		keys    []string // the plugin's label names, sorted
	}
	families := map[string]*family{}
	seen := map[string]bool{}
	for _, a := range answers {
		for _, m := range a.ms[:min(len(a.ms), maxInstanceMetrics)] {
			if !metricName.MatchString(m.Name) {
				continue
			}
			keys := make([]string, 0, len(m.Labels))
			ok := true
			for k := range m.Labels {
				ok = ok && metricName.MatchString(k) && k != "phase" && k != "instance"
				keys = append(keys, k)
			}
			if !ok {
				continue
			}
			sort.Strings(keys)
			name := "phased_phase_" + m.Name
			f := families[name]
			if f == nil {
				help := m.Help
				if help == "" || len(help) > 512 {
					help = "A phase plugin's own figure."
				}
				f = &family{desc: prometheus.NewDesc(name, help, append([]string{"phase", "instance"}, keys...), nil), counter: m.Counter, keys: keys}
				families[name] = f
			}
			if f.counter != m.Counter || strings.Join(f.keys, ",") != strings.Join(keys, ",") {
				continue
			}
			values := []string{a.in.phase, a.in.id}
			for _, k := range keys {
				values = append(values, m.Labels[k])
			}
			id := name + "\x00" + strings.Join(values, "\x00")
			if seen[id] {
				continue
			}
			seen[id] = true
			kind := prometheus.GaugeValue
			if m.Counter {
				kind = prometheus.CounterValue
			}
			if pm, err := prometheus.NewConstMetric(f.desc, kind, m.Value, values...); err == nil {
				ch <- pm
			}
		}
	}
	return failed
}

// HumanBytes writes a size for a person, in IEC units: 512 B, 4.0 KiB,
// 8.4 MiB, 3.0 GiB (the control API's event details and the CLI alike).
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
