package supervisor

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// TestNextRestart: the backoff doubles per restart within the window, up
// to the cap; past Max restarts within the window the instance is given
// up; restarts older than the window no longer count.
func TestNextRestart(t *testing.T) {
	rule := config.Restart{Max: 4, Window: time.Minute, Backoff: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}
	in := newRestarter(rule)
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at    time.Duration // after t0
		delay time.Duration
		ok    bool
	}{
		{0, 100 * time.Millisecond, true},
		{time.Second, 200 * time.Millisecond, true},
		{2 * time.Second, 300 * time.Millisecond, true}, // 400ms, capped
		{3 * time.Second, 300 * time.Millisecond, true},
		{4 * time.Second, 0, false},                       // a fifth within the minute: given up
		{61 * time.Second, 300 * time.Millisecond, true},  // the first has left the window: four within it again
		{200 * time.Second, 100 * time.Millisecond, true}, // all have left it
	}
	for i, st := range steps {
		delay, ok := in.next(t0.Add(st.at))
		if delay != st.delay || ok != st.ok {
			t.Errorf("restart %d at +%s: (%s, %v), want (%s, %v)", i, st.at, delay, ok, st.delay, st.ok)
		}
	}
	if in.total != 6 {
		t.Errorf("total restarts %d, want 6", in.total)
	}
	none := newRestarter(config.Restart{Max: 0, Window: time.Minute, Backoff: time.Second, MaxBackoff: time.Second})
	if _, ok := none.next(t0); ok {
		t.Error("max = 0 restarted an instance")
	}
}

func TestInstanceErrorText(t *testing.T) {
	tests := []struct {
		err  InstanceError
		want string
	}{
		{InstanceError{Instance: "transformer-1", PID: 42, Status: "signal: killed"}, "instance transformer-1 (pid 42) exited: signal: killed"},
		{InstanceError{Instance: "decoder-0", PID: 7, Status: "signal: killed", Hung: "no progress for 1s"}, "instance decoder-0 (pid 7) was killed as hung: no progress for 1s"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}

func TestTimedOut(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	live, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"deadline passed here", expired, errors.New("x"), true},
		{"server reset at the deadline", live, &sdk.RemoteError{Code: codes.Canceled, Msg: "stream terminated by RST_STREAM with error code: CANCEL"}, true},
		{"server deadline exceeded", live, &sdk.RemoteError{Code: codes.DeadlineExceeded}, true},
		{"plugin error", live, &sdk.RemoteError{Code: codes.Unknown, Msg: "loading: no weights"}, false},
		{"local error", live, errors.New("x"), false},
	}
	for _, tt := range tests {
		if got := timedOut(tt.ctx, tt.err); got != tt.want {
			t.Errorf("%s: timedOut = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestWatchdogs: a Run's hang watchdog is armed while it computes or
// sends, disarmed when it waits, finishes or its call returns, and late
// events of a Run that returned (its finished event dropped, or on its
// way) arm nothing; another attempt's Run is apart.
func TestWatchdogs(t *testing.T) {
	s := New(config.Default(), Options{})
	s.bgCtx = context.Background()
	l := &life{in: &instance{id: "t-0", cfg: config.Phase{HangTimeout: time.Hour}}}
	ev := func(stage string, in, out uint64) sdk.Progress {
		return sdk.Progress{Request: "r1", Stage: stage, Total: 1, InRoom: in, OutRoom: out}
	}
	armed := func(in, out uint64) bool {
		l.dogMu.Lock()
		defer l.dogMu.Unlock()
		return l.dogs[runKey{"r1", in, out}] != nil
	}
	defer l.stopWatchdogs()

	// Attempt 1: rooms 1 → 2, finished event before the call returns.
	l.progressed(s, ev(sdk.StageWaiting, 1, 2))
	if armed(1, 2) {
		t.Error("armed while waiting for inputs")
	}
	l.progressed(s, ev(sdk.StageComputing, 1, 2))
	if !armed(1, 2) {
		t.Error("not armed while computing")
	}
	// Attempt 2 of the same request, rooms 3 → 4, is apart.
	l.progressed(s, ev(sdk.StageComputing, 3, 4))
	l.progressed(s, ev(sdk.StageFinished, 1, 2))
	if armed(1, 2) || !armed(3, 4) {
		t.Errorf("after attempt 1 finished: attempt 1 armed %v, attempt 2 armed %v; want false, true", armed(1, 2), armed(3, 4))
	}
	l.runReturned(runKey{"r1", 1, 2})
	// Attempt 2: the call returns first, its late events arm nothing.
	l.runReturned(runKey{"r1", 3, 4})
	l.progressed(s, ev(sdk.StageSending, 3, 4))
	if armed(3, 4) {
		t.Error("a late event of a Run that returned armed a watchdog")
	}
	l.progressed(s, ev(sdk.StageFinished, 3, 4))
	l.dogMu.Lock()
	left := len(l.ended)
	l.dogMu.Unlock()
	if left != 0 {
		t.Errorf("%d Runs remembered after both ended and finished", left)
	}

	// Attempt 3, rooms 5 → 6: its upstream delivered its inputs, so it
	// is watched while it still says "waiting" (a late event), until it
	// finishes.
	l.progressed(s, ev(sdk.StageWaiting, 5, 6))
	l.delivered(s, runKey{"r1", 5, 6})
	l.progressed(s, ev(sdk.StageWaiting, 5, 6))
	if !armed(5, 6) {
		t.Error("a Run whose inputs were delivered is not watched")
	}
	l.progressed(s, ev(sdk.StageComputing, 5, 6))
	l.progressed(s, ev(sdk.StageFinished, 5, 6))
	if armed(5, 6) {
		t.Error("watched after it finished")
	}
	// A Run delivered and still waiting (queued behind a batch) is not
	// hung while another Run of the instance makes progress.
	l.delivered(s, runKey{"r1", 9, 10})
	l.dogMu.Lock()
	before := l.dogs[runKey{"r1", 9, 10}].deadline
	l.dogMu.Unlock()
	time.Sleep(2 * time.Millisecond)
	l.progressed(s, sdk.Progress{Request: "r2", Stage: sdk.StageComputing, Done: 1, Total: 2, InRoom: 11, OutRoom: 12})
	l.dogMu.Lock()
	after := l.dogs[runKey{"r1", 9, 10}].deadline
	l.dogMu.Unlock()
	if !after.After(before) {
		t.Error("another Run's progress did not push back a waiting delivered Run's watchdog")
	}
	l.progressed(s, ev(sdk.StageFinished, 9, 10))
	l.progressed(s, sdk.Progress{Request: "r2", Stage: sdk.StageFinished, InRoom: 11, OutRoom: 12})
	// Delivered after the Run finished or returned: nothing to watch.
	l.delivered(s, runKey{"r1", 5, 6})
	l.runReturned(runKey{"r1", 7, 8})
	l.delivered(s, runKey{"r1", 7, 8})
	if armed(5, 6) || armed(7, 8) {
		t.Error("delivered armed the watchdog of a Run that had ended")
	}
}
