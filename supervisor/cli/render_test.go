package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func ptr(t time.Time) *time.Time { return &t }

// TestTimeline: the timeline of a request is an aligned table with each
// span's phase/instance, its start from the submission, its duration and
// its detail, a hop's bytes in IEC units with their rate.
func TestTimeline(t *testing.T) {
	info := supervisor.RequestInfo{
		ID: "r000007", State: supervisor.StateDone, Submitted: t0, Finished: ptr(at(1250 * time.Millisecond)),
		Timeline: []supervisor.Span{
			{Name: supervisor.SpanQueued, Start: t0, End: ptr(at(1200 * time.Microsecond))},
			{Name: supervisor.SpanSchedule, Start: at(1200 * time.Microsecond), End: ptr(at(1500 * time.Microsecond)), Detail: "roundrobin"},
			{Name: supervisor.SpanRun, Phase: "encoder", Instance: "encoder-0", Start: at(2 * time.Millisecond), End: ptr(at(14 * time.Millisecond))},
			{Name: supervisor.SpanHop, Phase: "encoder", Instance: "encoder-0", Start: at(14 * time.Millisecond), End: ptr(at(16 * time.Millisecond)),
				Room: 7, Backend: "shm", Bytes: 8 << 20},
			{Name: supervisor.SpanRun, Phase: "transformer", Instance: "transformer-1", Start: at(16 * time.Millisecond), End: ptr(at(1200 * time.Millisecond)), Steps: 20},
			{Name: supervisor.SpanArtifact, Start: at(1240 * time.Millisecond)},
		},
	}
	var b bytes.Buffer
	printTimeline(&b, info)
	want := `  SPAN      PHASE/INSTANCE             START    DURATION  DETAIL
  queued    -                          +0µs     1.2ms
  schedule  -                          +1.2ms   300µs     roundrobin
  run       encoder/encoder-0          +2.0ms   12.0ms
  hop       encoder/encoder-0          +14.0ms  2.0ms     room 7, shm, 8.0 MiB (3.9 GiB/s)
  run       transformer/transformer-1  +16.0ms  1.18s     20 steps
  artifact  -                          +1.24s   …
`
	if b.String() != want {
		t.Errorf("timeline:\n%s\nwant:\n%s", b.String(), want)
	}

	// status ID shows it under the request's particulars and events.
	info.Prompt, info.Seed, info.Steps, info.Artifact, info.SHA256 = "a fox", 7, 20, "/out/r000007.gif", "abc"
	info.Instances = map[string]string{"encoder": "encoder-0", "transformer": "transformer-1"}
	info.Events = []supervisor.Event{{Time: t0, What: "accepted"}, {Time: at(14 * time.Millisecond), What: "phase done", Phase: "encoder", Instance: "encoder-0", Detail: "12ms"}}
	b.Reset()
	info.Priority, info.Deadline = 80, ptr(at(2*time.Minute))
	printRequest(&b, info)
	for _, w := range []string{
		"  seed       7, steps 20, priority 80\n",
		"  deadline   " + at(2*time.Minute).Local().Format("2006-01-02 15:04:05.000") + " (2m00s after its submission)\n",
		"r000007 done /out/r000007.gif\n",
		"  prompt     \"a fox\"\n",
		"  instances  encoder=encoder-0 transformer=transformer-1\n",
		"\nevents:\n  +0µs     accepted\n  +14.0ms  encoder      encoder-0        done in 12ms\n",
		"\ntimeline:\n  SPAN ",
	} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("status ID does not show %q:\n%s", w, b.String())
		}
	}
}

func TestHumanUnits(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {4096, "4.0 KiB"}, {8 << 20, "8.0 MiB"}, {8808038, "8.4 MiB"}, {3 << 30, "3.0 GiB"}} {
		if got := supervisor.HumanBytes(tt.n); got != tt.want {
			t.Errorf("supervisor.HumanBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{{850 * time.Microsecond, "850µs"}, {12300 * time.Microsecond, "12.3ms"}, {1250 * time.Millisecond, "1.25s"}, {123 * time.Second, "2m03s"}} {
		if got := fmtDur(tt.d); got != tt.want {
			t.Errorf("fmtDur(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestProgressLines: one line for the request, one per phase; the bar
// fills the width it is given up to its maximum, and drops out when
// there is no room; no line is wider than the terminal.
func TestProgressLines(t *testing.T) {
	info := supervisor.RequestInfo{ID: "r000003", State: supervisor.StateRunning, Submitted: t0,
		Progress: []supervisor.PhaseProgress{
			{Phase: "encoder", Instance: "encoder-0", Stage: "finished"},
			{Phase: "transformer", Instance: "transformer-1", Stage: "computing", Done: 12, Total: 48, StepsPerSecond: 4},
			{Phase: "decoder", Instance: "decoder-0", Stage: "waiting"},
		}}
	got := progressLines(info, at(3500*time.Millisecond), 80)
	want := []string{
		"r000003  running  3.50s",
		"  encoder      encoder-0      done",
		"  transformer  transformer-1  [=====>               ] 12/48  4.0 steps/s  ETA 9s",
		"  decoder      decoder-0      waiting for inputs",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("80 columns:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	wide := progressLines(info, at(3500*time.Millisecond), 200)[2]
	if !strings.Contains(wide, "["+strings.Repeat("=", 10)+">") || strings.Index(wide, "]")-strings.Index(wide, "[")+1 != maxBar {
		t.Errorf("200 columns: the bar is not %d wide: %q", maxBar, wide)
	}
	narrow := progressLines(info, at(3500*time.Millisecond), 50)
	if narrow[2] != "  transformer  transformer-1  12/48  4.0 steps/s …" {
		t.Errorf("50 columns: %q", narrow[2])
	}
	for _, l := range narrow {
		if n := len([]rune(l)); n > 50 {
			t.Errorf("50 columns: a line of %d: %q", n, l)
		}
	}

	// Bars line up whatever follows them.
	two := supervisor.RequestInfo{ID: "r000004", State: supervisor.StateRunning, Submitted: t0, Progress: []supervisor.PhaseProgress{
		{Phase: "encoder", Instance: "encoder-0", Stage: "finished", Done: 1, Total: 1},
		{Phase: "transformer", Instance: "transformer-0", Stage: "computing", Done: 150, Total: 300, StepsPerSecond: 20529.2},
	}}
	lines := progressLines(two, at(time.Second), 100)
	if strings.Index(lines[1], "]") != strings.Index(lines[2], "]") || !strings.HasSuffix(lines[1], "] 1/1  done") {
		t.Errorf("bars do not line up:\n%s", strings.Join(lines, "\n"))
	}

	queued := supervisor.RequestInfo{ID: "r000009", State: supervisor.StateQueued, QueuePosition: 3, Submitted: t0}
	if got := progressLines(queued, at(time.Second), 80); len(got) != 1 || got[0] != "r000009  queued, position 3 in the queue  1.00s" {
		t.Errorf("queued: %q", got)
	}
	queued.EstimatedStart = ptr(at(76 * time.Second))
	if got := progressLines(queued, at(time.Second), 80); len(got) != 1 || got[0] != "r000009  queued, position 3 in the queue, starts in ~1m15s  1.00s" {
		t.Errorf("queued, with an estimated start: %q", got)
	}
	if got := bar(48, 48, 12); got != "[==========]" {
		t.Errorf("full bar %q", got)
	}
	if got := bar(0, 48, 12); got != "[          ]" {
		t.Errorf("empty bar %q", got)
	}
}

// TestLiveView: each draw moves the cursor up over the lines it drew
// last, clears to the end of the screen, writes the log, then the area
// cut to the width; area-only draws closer than minRedraw are skipped.
func TestLiveView(t *testing.T) {
	var b bytes.Buffer
	now := t0
	v := &liveView{w: &b, now: func() time.Time { return now }, size: func() (int, int) { return 16, 4 }}
	v.draw([]string{"accepted"}, []string{"a long line here!", "b"}, false)
	if got, want := b.String(), "\r\x1b[Jaccepted\na long line he…\nb\n"; got != want {
		t.Fatalf("first draw %q, want %q", got, want)
	}
	b.Reset()
	v.draw(nil, []string{"c"}, false) // within minRedraw, no log: skipped
	if b.Len() != 0 {
		t.Fatalf("a draw within minRedraw wrote %q", b.String())
	}
	now = now.Add(minRedraw)
	v.draw(nil, []string{"c", "d", "e", "f", "g"}, false)
	if got, want := b.String(), "\x1b[2A\r\x1b[Jc\nd\n… 3 more lines\n"; got != want {
		t.Fatalf("second draw %q, want %q", got, want)
	}
	b.Reset()
	v.draw(nil, nil, true)
	if got, want := b.String(), "\x1b[3A\r\x1b[J"; got != want {
		t.Fatalf("clearing draw %q, want %q", got, want)
	}
}
