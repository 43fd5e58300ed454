package supervisor

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/phased/phased/sdk"
)

// TestTimeline builds the timeline of a request through three phases
// from the moments its trace recorded, and checks every span: name,
// phase, start, end, bytes and steps. Progress events of an earlier
// attempt or of another instance change nothing.
func TestTimeline(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	r := &request{changed: make(chan struct{})}
	r.info.Submitted = t0
	r.trace = trace{dequeued: at(2), recording: at(40), ended: at(41)}
	a := &attemptTrace{
		placing: at(2), placed: at(3), choice: "encoder=encoder-0 transformer=transformer-1 decoder=decoder-0",
		opening: at(3), opened: at(4), rooms: []uint64{7, 8}, backends: []string{"shm", "zmq"},
		runs: []runTrace{
			{phase: "encoder", instance: "encoder-0", called: at(4), returned: at(8), sentBytes: 1000},
			{phase: "transformer", instance: "transformer-1", called: at(4), returned: at(30), sentBytes: 500},
			{phase: "decoder", instance: "decoder-0", called: at(4), returned: at(38)},
		},
		removing: at(38), removed: at(39),
	}
	r.trace.attempts = []*attemptTrace{a}
	ev := func(i int, instance, stage string, done, total int, in, out uint64, ms float64) int {
		added, _ := r.progressed(i, instance, sdk.Progress{Request: "x", Stage: stage, Done: done, Total: total, InRoom: in, OutRoom: out}, at(ms))
		return added
	}
	ev(0, "encoder-0", sdk.StageComputing, 0, 1, 0, 7, 4)
	ev(0, "encoder-0", sdk.StageSending, 0, 0, 0, 7, 6)
	ev(1, "transformer-1", sdk.StageWaiting, 0, 0, 7, 8, 4)
	ev(1, "transformer-1", sdk.StageComputing, 0, 4, 7, 8, 9)
	added := 0
	for k := 1; k <= 4; k++ {
		added += ev(1, "transformer-1", sdk.StageComputing, k, 4, 7, 8, 9+float64(5*k))
	}
	if added != 4 {
		t.Errorf("the transformer's events added %d steps, want 4", added)
	}
	// Another attempt's rooms, another instance: ignored.
	if n := ev(1, "transformer-1", sdk.StageComputing, 9, 9, 3, 4, 29); n != 0 {
		t.Errorf("an event of another attempt added %d steps", n)
	}
	if n := ev(1, "transformer-0", sdk.StageComputing, 9, 9, 7, 8, 29); n != 0 {
		t.Errorf("an event of another instance added %d steps", n)
	}
	ev(1, "transformer-1", sdk.StageSending, 0, 0, 7, 8, 29.5)
	ev(2, "decoder-0", sdk.StageComputing, 0, 1, 8, 0, 31)

	got := r.snapshot()
	var lines []string
	for _, s := range got.Timeline {
		end := "open"
		if s.End != nil {
			end = fmt.Sprint(s.End.Sub(t0).Seconds() * 1000)
		}
		lines = append(lines, fmt.Sprintf("%s %s %s %v→%s %s %d %s %d", s.Name, s.Phase, s.Instance, s.Start.Sub(t0).Seconds()*1000, end, s.Backend, s.Bytes, s.Detail, s.Steps))
	}
	want := []string{
		"queued   0→2  0  0",
		"schedule   2→3  0 encoder=encoder-0 transformer=transformer-1 decoder=decoder-0 0",
		"rooms   3→4  0 7 shm, 8 zmq 0",
		"run encoder encoder-0 4→6  0  1",
		"wait transformer transformer-1 4→9  0  0",
		"wait decoder decoder-0 4→31  0  0",
		"hop encoder encoder-0 6→8 shm 1000  0",
		"run transformer transformer-1 9→29.5  0  4",
		"hop transformer transformer-1 29.5→30 zmq 500  0",
		"run decoder decoder-0 31→38  0  1",
		"remove   38→39  0  0",
		"artifact   40→41  0  0",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("timeline\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	// Each phase's time is its own work: from its inputs' arrival to its
	// outputs handed over, not from the moment every phase was called.
	for i, want := range []time.Duration{2 * time.Millisecond, 20500 * time.Microsecond, 7 * time.Millisecond} {
		if d := a.runs[i].ran(); d != want {
			t.Errorf("%s ran %v, want %v", a.runs[i].phase, d, want)
		}
	}
	tr := got.Progress[1]
	if tr.Phase != "transformer" || tr.Done != 4 || tr.Total != 4 || tr.Stage != sdk.StageSending || math.Abs(tr.StepsPerSecond-200) > 1e-6 {
		t.Errorf("transformer progress %+v, want 4 of 4, sending, 200 steps/s (4 in 20 ms)", tr)
	}
}

// statusControl is a phase control whose Status answers metrics; its
// other methods are not called.
type statusControl struct {
	sdk.PhaseControl
	metrics []sdk.Metric
	err     error
}

func (c statusControl) Status(context.Context) (sdk.InstanceStatus, error) {
	return sdk.InstanceStatus{Metrics: c.metrics}, c.err
}

// TestInstanceMetricsHostile: what a plugin reports as its figures is
// checked: bad names and labels, labels that would replace phase or
// instance, duplicates and a family at odds with the first instance's
// are left out; the scrape never fails, and an instance that does not
// answer is counted.
func TestInstanceMetricsHostile(t *testing.T) {
	mk := func(id string, ctl sdk.PhaseControl) *instance {
		in := &instance{id: id, phase: "p"}
		in.cur.Store(&life{in: in, ctl: ctl})
		return in
	}
	good := sdk.Metric{Name: "things_total", Help: "Things.", Counter: true, Labels: map[string]string{"kind": "a"}, Value: 3}
	first := mk("p-0", statusControl{metrics: []sdk.Metric{
		good,
		{Name: "things_total", Counter: true, Labels: map[string]string{"kind": "a"}, Value: 99}, // duplicate
		{Name: "Bad-Name", Value: 1}, // bad name
		{Name: "x", Labels: map[string]string{"instance": "forged"}, Value: 1},                               // forged label
		{Name: "y", Labels: map[string]string{"bad label": "v"}, Value: 1},                                   // bad label
		{Name: "depth", Help: strings.Repeat("h", 10000), Value: math.Inf(1)},                                // long help: replaced
		{Name: "z\n# TYPE evil counter", Value: 1},                                                           // injection
		{Name: "things_total", Counter: true, Labels: map[string]string{"kind": "b", "more": "x"}, Value: 1}, // other labels
	}})
	second := mk("p-1", statusControl{metrics: []sdk.Metric{
		{Name: "things_total", Counter: false, Labels: map[string]string{"kind": "a"}, Value: 5}, // a gauge now
		{Name: "things_total", Help: "Other help.", Counter: true, Labels: map[string]string{"kind": "c"}, Value: 7},
	}})
	dead := mk("p-2", statusControl{err: sdk.ErrPluginGone})
	var failed int
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectorFunc(func(ch chan<- prometheus.Metric) {
		failed = collectInstances([]*instance{first, second, dead}, ch)
	}))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("the scrape failed: %v", err)
	}
	var got []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			got = append(got, fmt.Sprintf("%s{%s} %v %q", f.GetName(), strings.Join(labels, ","), v, f.GetHelp()))
		}
	}
	want := []string{
		`phased_phase_depth{instance=p-0,phase=p} +Inf "A phase plugin's own figure."`,
		`phased_phase_things_total{instance=p-0,kind=a,phase=p} 3 "Things."`,
		`phased_phase_things_total{instance=p-1,kind=c,phase=p} 7 "Things."`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("gathered\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if failed != 1 {
		t.Errorf("%d instances failed to answer, want 1", failed)
	}
}

// collectorFunc is an unchecked collector made of its Collect.
type collectorFunc func(chan<- prometheus.Metric)

func (collectorFunc) Describe(chan<- *prometheus.Desc)      {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// removeControl records the RemoveRoom calls it gets; each waits (up to
// 2 s) until two calls have begun, so that calls made at once overlap and
// calls made one after the other do not.
type removeControl struct {
	sdk.PhaseControl
	name string
	log  *callLog
}

type callLog struct {
	mu      sync.Mutex
	events  []string
	begun   int
	changed chan struct{}
}

func (l *callLog) add(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (c removeControl) RemoveRoom(_ context.Context, room uint64) error {
	l := c.log
	l.mu.Lock()
	l.events = append(l.events, fmt.Sprintf("begin %s %d", c.name, room))
	l.begun++
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	deadline := time.After(2 * time.Second)
	for {
		l.mu.Lock()
		pair, changed := l.begun%2 == 0, l.changed
		l.mu.Unlock()
		if pair {
			break
		}
		select {
		case <-changed:
			continue
		case <-deadline:
		}
		break
	}
	l.add(fmt.Sprintf("end %s %d", c.name, room))
	return nil
}

// TestRemoveRoomsOrder: every sender side of an attempt's rooms is removed
// before any receiver side (invariant 1: no sender writes into a freed
// buffer), and the rooms of different hops are removed at once: two
// rounds whatever the pipeline's length.
func TestRemoveRoomsOrder(t *testing.T) {
	log := &callLog{changed: make(chan struct{})}
	alive := make(chan struct{})
	lives := map[string]*life{}
	for _, name := range []string{"enc", "tr", "dec"} {
		in := &instance{id: name, phase: name}
		lives[name] = &life{in: in, proc: &process{done: alive}, ctl: removeControl{name: name, log: log}}
		in.rooms.Store(2)
	}
	s := &Supervisor{logger: hclog.NewNullLogger()}
	a := testAttempt(lives["enc"], lives["tr"], lives["dec"])
	s.removeRooms(a)
	ev := log.events
	pos := func(e string) int { return slices.Index(ev, e) }
	for _, room := range []struct {
		sender, receiver string
		id               int
	}{{"enc", "tr", 1}, {"tr", "dec", 2}} {
		if pos(fmt.Sprintf("end %s %d", room.sender, room.id)) > pos(fmt.Sprintf("begin %s %d", room.receiver, room.id)) {
			t.Errorf("room %d: the receiver was removed before its sender had let go: %v", room.id, ev)
		}
	}
	// The two senders overlap: both began before either ended.
	if max(pos("begin enc 1"), pos("begin tr 2")) > min(pos("end enc 1"), pos("end tr 2")) {
		t.Errorf("the senders of two hops were removed one after the other: %v", ev)
	}
	if len(ev) != 8 || a.sides != nil || a.trace.removed.IsZero() {
		t.Errorf("calls %v, sides %v, removed at %v", ev, a.sides, a.trace.removed)
	}
	for name, l := range lives {
		want := int64(1)
		if name == "tr" {
			want = 0
		}
		if got := l.in.rooms.Load(); got != want {
			t.Errorf("instance %s counts %d rooms, want %d", name, got, want)
		}
	}
}

// testAttempt is an attempt of a pipeline of the given lives, its rooms
// 1, 2, … reserved, as reserveRooms leaves it.
func testAttempt(lives ...*life) *attempt {
	a := &attempt{r: &request{changed: make(chan struct{})}, trace: &attemptTrace{}, lives: lives, returned: make([]bool, len(lives))}
	for i := range len(lives) - 1 {
		room := uint64(i + 1)
		a.sides = append(a.sides, newRoomSide(lives[i], room, sdk.RoleSender), newRoomSide(lives[i+1], room, sdk.RoleReceiver))
	}
	return a
}

// listControl records the RemoveRoom calls it gets, in order.
type listControl struct {
	sdk.PhaseControl
	name string
	log  *callLog
}

func (c listControl) RemoveRoom(_ context.Context, room uint64) error {
	c.log.add(fmt.Sprintf("%s %d", c.name, room))
	return nil
}

// TestRemoveEarly: a hop is removed, sender side then receiver side, as
// soon as the phases on both its ends have returned, not when only its
// sender has (its last frames may still be queued); removeRooms then
// removes only what is left, once.
func TestRemoveEarly(t *testing.T) {
	s := &Supervisor{logger: hclog.NewNullLogger()}
	setup := func() (*attempt, *callLog) {
		log := &callLog{}
		alive := make(chan struct{})
		var lives []*life
		for _, name := range []string{"enc", "tr", "dec"} {
			in := &instance{id: name, phase: name}
			in.rooms.Store(2)
			lives = append(lives, &life{in: in, proc: &process{done: alive}, ctl: listControl{name: name, log: log}})
		}
		lives[0].in.rooms.Store(1)
		lives[2].in.rooms.Store(1)
		return testAttempt(lives...), log
	}
	calls := func(log *callLog) []string {
		log.mu.Lock()
		defer log.mu.Unlock()
		return slices.Clone(log.events)
	}

	t.Run("in the order phases return", func(t *testing.T) {
		a, log := setup()
		s.removeEarly(a, 0, 2, false) // the encoder: its receiver is still at work
		s.removeEarly(a, 1, 2, false) // the transformer: room 1 goes
		<-a.receiver(0).gone
		if got, want := calls(log), []string{"enc 1", "tr 1"}; !slices.Equal(got, want) {
			t.Fatalf("removed %v, want %v: room 1 only, sender first", got, want)
		}
		s.removeRooms(a)
		if got, want := calls(log), []string{"enc 1", "tr 1", "tr 2", "dec 2"}; !slices.Equal(got, want) {
			t.Fatalf("removed %v, want %v: each side once, the last room at the end", got, want)
		}
		for _, l := range a.lives {
			if n := l.in.rooms.Load(); n != 0 {
				t.Errorf("instance %s counts %d rooms, want 0", l.in.id, n)
			}
		}
	})

	t.Run("an answer that comes late", func(t *testing.T) {
		a, log := setup()
		s.removeEarly(a, 1, 2, false) // the transformer's answer first
		s.removeEarly(a, 2, 2, false) // then the decoder's: room 2 goes
		<-a.receiver(1).gone
		if got, want := calls(log), []string{"tr 2", "dec 2"}; !slices.Equal(got, want) {
			t.Fatalf("removed %v, want %v", got, want)
		}
		s.removeRooms(a) // the encoder's answer never came
		if got, want := calls(log), []string{"tr 2", "dec 2", "enc 1", "tr 1"}; !slices.Equal(got, want) {
			t.Fatalf("removed %v, want %v", got, want)
		}
	})

	t.Run("a drained sender goes before its receiver returns", func(t *testing.T) {
		a, log := setup()
		s.removeEarly(a, 0, 2, true) // the encoder's Send ended in the segment: room 1's sender goes
		<-a.sender(0).gone
		if got, want := calls(log), []string{"enc 1"}; !slices.Equal(got, want) {
			t.Fatalf("removed %v, want %v: the drained sender side alone", got, want)
		}
		select {
		case <-a.receiver(0).gone:
			t.Fatal("room 1's receiver side was removed before the transformer returned")
		default:
		}
		s.removeEarly(a, 1, 2, false) // the transformer: room 1's receiver side goes, its sender side was not asked again
		<-a.receiver(0).gone
		s.removeEarly(a, 2, 2, false)
		<-a.receiver(1).gone
		s.removeRooms(a)
		if got, want := calls(log), []string{"enc 1", "tr 1", "tr 2", "dec 2"}; !slices.Equal(got, want) {
			t.Fatalf("removed %v, want %v: each side once, sender before receiver", got, want)
		}
	})

	t.Run("sides the instances removed themselves", func(t *testing.T) {
		a, log := setup()
		// As runPhases does with RunResult.OutRemoved and InRemoved:
		// each phase removed its drained out side, the transformer and
		// the decoder their in sides, whose senders had gone.
		a.sender(0).removedByPlugin()
		s.removeEarly(a, 0, 2, true)
		a.sender(1).removedByPlugin()
		a.receiver(0).removedByPlugin()
		s.removeEarly(a, 1, 2, true)
		a.receiver(1).removedByPlugin()
		s.removeEarly(a, 2, 2, false)
		s.removeRooms(a)
		if got := calls(log); len(got) != 0 {
			t.Fatalf("RemoveRoom for %v; want none: every side was removed by its instance", got)
		}
		for _, l := range a.lives {
			if n := l.in.rooms.Load(); n != 0 {
				t.Errorf("instance %s counts %d rooms, want 0", l.in.id, n)
			}
		}
	})
}

// TestHopFromSendTime: the hop's start is the phase's own measure
// (RunResult.SendTime) once the Run has returned, so a "sending" event
// that arrives after the answer cannot turn the span around.
func TestHopFromSendTime(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	ms := func(v float64) time.Time { return t0.Add(time.Duration(v * float64(time.Millisecond))) }
	tr := trace{attempts: []*attemptTrace{{rooms: []uint64{1}, backends: []string{"shm"}, runs: []runTrace{
		{phase: "encoder", called: ms(0), computing: ms(1), sending: ms(9), returned: ms(8), sendTime: 3 * time.Millisecond, sentBytes: 10},
		{phase: "decoder", called: ms(0), computing: ms(8.5), returned: ms(12)},
	}}}}
	var hop, run *Span
	spans := tr.timeline(t0)
	for i := range spans {
		switch {
		case spans[i].Name == SpanHop:
			hop = &spans[i]
		case spans[i].Name == SpanRun && spans[i].Phase == "encoder":
			run = &spans[i]
		}
	}
	if hop == nil || run == nil || !hop.Start.Equal(ms(5)) || !hop.End.Equal(ms(8)) || !run.Start.Equal(ms(1)) || !run.End.Equal(ms(5)) {
		t.Fatalf("run %+v, hop %+v; want run 1→5 ms, hop 5→8 ms", run, hop)
	}
	if d := tr.attempts[0].runs[0].ran(); d != 4*time.Millisecond {
		t.Errorf("ran %v, want 4ms", d)
	}
}

// TestTimelineResumed: a Run that resumed at step 15 of 20 from its
// checkpoint adds the 5 steps it ran, not 20; its span and progress say
// where it resumed, and its rate counts the steps it ran.
func TestTimelineResumed(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	r := &request{changed: make(chan struct{})}
	r.info.Submitted = t0
	r.trace.attempts = []*attemptTrace{{placing: t0, rooms: []uint64{7},
		runs: []runTrace{{phase: "transformer", instance: "transformer-1", called: t0}, {phase: "decoder", instance: "decoder-0", called: t0}}}}
	ev := func(done, resumed int, s float64) (int, int) {
		return r.progressed(0, "transformer-1", sdk.Progress{Request: "x", Stage: sdk.StageComputing, Done: done, Total: 20, OutRoom: 7, Resumed: resumed}, t0.Add(time.Duration(s*float64(time.Second))))
	}
	if added, resumed := ev(0, 0, 1); added != 0 || resumed != 0 {
		t.Fatalf("computing 0 of 20: added %d, resumed %d", added, resumed)
	}
	if added, resumed := ev(0, 25, 1); added != 0 || resumed != 0 {
		t.Fatalf("an event saying resumed 25 with 0 done: added %d, resumed %d; want it ignored", added, resumed)
	}
	total := 0
	for k := 16; k <= 20; k++ {
		added, resumed := ev(k, 15, float64(1+k-15))
		if want := map[bool]int{true: 15}[k == 16]; resumed != want {
			t.Fatalf("step %d: resumed %d, want %d", k, resumed, want)
		}
		total += added
	}
	if total != 5 {
		t.Fatalf("the resumed Run added %d steps, want 5", total)
	}
	info := r.snapshot()
	p := info.Progress[0]
	if p.Done != 20 || p.ResumedFrom != 15 || p.StepsPerSecond != 1 {
		t.Fatalf("progress %+v, want 20 done, resumed from 15, 1 step/s (5 steps in 5 s)", p)
	}
	for _, s := range info.Timeline {
		if s.Name == SpanRun && s.Phase == "transformer" {
			if s.ResumedFrom != 15 || s.Done != 20 || s.Steps != 20 || s.Detail != "resumed at step 15" {
				t.Fatalf("run span %+v", s)
			}
			return
		}
	}
	t.Fatalf("no transformer run span in %+v", info.Timeline)
}
