package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// fakeSupervisor is a control API on a unix socket that records the
// submissions it gets and streams the snapshots it is given.
type fakeSupervisor struct {
	socket string
	mu     sync.Mutex
	subs   []supervisor.Submission
	// snapshots streamed for any request's events; the stream then ends,
	// or, with hold, stays open until the client goes (after calling
	// onHold).
	snapshots []supervisor.RequestInfo
	hold      bool
	onHold    func()
}

func newFake(t *testing.T) *fakeSupervisor {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pcli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeSupervisor{socket: filepath.Join(dir, "s.sock")}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/requests", func(w http.ResponseWriter, r *http.Request) {
		var sub supervisor.Submission
		if err := json.NewDecoder(r.Body).Decode(&sub); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.subs = append(f.subs, sub)
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]string{"id": "r000001"})
	})
	mux.HandleFunc("GET /v1/requests/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "r000001" {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(supervisor.ErrorBody{Error: `no such request: "` + r.PathValue("id") + `"`})
			return
		}
		f.mu.Lock()
		snaps, hold := f.snapshots, f.hold
		f.mu.Unlock()
		for _, s := range snaps {
			_ = json.NewEncoder(w).Encode(s)
			w.(http.Flusher).Flush()
		}
		if hold {
			f.mu.Lock()
			onHold := f.onHold
			f.mu.Unlock()
			onHold()
			<-r.Context().Done()
		}
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

// stream sets what the events of a request stream.
func (f *fakeSupervisor) stream(snaps []supervisor.RequestInfo, hold bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.snapshots, f.hold = snaps, hold
}

func (f *fakeSupervisor) submissions() []supervisor.Submission {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]supervisor.Submission(nil), f.subs...)
}

// testApp is an app on buffers, with stdin, a terminal of width×height
// when width > 0, and a clock that moves a second per reading.
func testApp(stdin string, width, height int) (*app, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	a := newApp(strings.NewReader(stdin), &out, &errb)
	a.terminal = func(io.Writer) (int, int, bool) { return width, height, width > 0 }
	now := t0
	var mu sync.Mutex
	a.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Second)
		return now
	}
	return a, &out, &errb
}

func snapshots() []supervisor.RequestInfo {
	return []supervisor.RequestInfo{
		{ID: "r000001", State: supervisor.StateQueued, QueuePosition: 2, Submitted: t0,
			Events: []supervisor.Event{{Time: t0, What: "accepted"}}},
		{ID: "r000001", State: supervisor.StateRunning, Submitted: t0, Instances: map[string]string{"encoder": "encoder-0", "transformer": "transformer-0"},
			Events: []supervisor.Event{{Time: t0, What: "accepted"}, {Time: at(time.Millisecond), What: "scheduled"}},
			Progress: []supervisor.PhaseProgress{{Phase: "encoder", Instance: "encoder-0", Stage: "finished"},
				{Phase: "transformer", Instance: "transformer-0", Stage: "computing", Done: 5, Total: 20, StepsPerSecond: 2.5}}},
		{ID: "r000001", State: supervisor.StateDone, Submitted: t0, Finished: ptr(at(2 * time.Second)), Artifact: "/out/r000001.gif", SHA256: "abc",
			Instances: map[string]string{"encoder": "encoder-0", "transformer": "transformer-0"},
			Events: []supervisor.Event{{Time: t0, What: "accepted"}, {Time: at(time.Millisecond), What: "scheduled"},
				{Time: at(time.Second), What: "phase done", Phase: "transformer", Instance: "transformer-0", Detail: "1s"}, {What: "done"}}},
	}
}

// TestSubmitWait: off a terminal, submit --wait prints the id, one line
// per event and the result; on a terminal it also draws the progress in
// place and clears it at the end; --json prints the result alone.
func TestSubmitWait(t *testing.T) {
	f := newFake(t)
	f.stream(snapshots(), false)

	a, out, errb := testApp("", 0, 0)
	if code := a.main([]string{"submit", "--prompt", "a fox", "--wait", "--socket", f.socket}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	want := "r000001\n  accepted\n  scheduled: encoder=encoder-0 transformer=transformer-0\n" +
		"  transformer  transformer-0    done in 1s\n  done\nr000001 done: /out/r000001.gif\n  sha256 abc\n"
	if out.String() != want {
		t.Errorf("off a terminal:\n%q\nwant\n%q", out.String(), want)
	}

	a, out, _ = testApp("", 100, 30)
	if code := a.main([]string{"submit", "--prompt", "a fox", "--wait", "--socket", f.socket}); code != 0 {
		t.Fatalf("on a terminal: exit %d", code)
	}
	got := out.String()
	for _, w := range []string{
		"r000001\n\r\x1b[J  accepted\nr000001  queued, position 2 in the queue",
		"  transformer  transformer-0  [", "] 5/20  2.5 steps/s  ETA 6s\n",
		"\x1b[3A\r\x1b[J  transformer  transformer-0    done in 1s\n  done\n",
		"\r\x1b[Jr000001 done: /out/r000001.gif\n",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("on a terminal, no %q in\n%q", w, got)
		}
	}

	a, out, _ = testApp("", 100, 30)
	if code := a.main([]string{"submit", "--prompt", "a fox", "--wait", "--json", "--socket", f.socket}); code != 0 {
		t.Fatalf("--json: exit %d", code)
	}
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.ID != "r000001" || res.State != "done" || res.Seconds != 2 {
		t.Errorf("--json: %q (%v)", out.String(), err)
	}
}

// TestWatchExitCodes: watch exits 1 for a request that failed, 3 for no
// such request, 130 on Ctrl-C, which detaches and says how to follow
// the request again.
func TestWatchExitCodes(t *testing.T) {
	f := newFake(t)
	failed := snapshots()[:2]
	failed = append(failed, supervisor.RequestInfo{ID: "r000001", State: supervisor.StateFailed, Reason: "transformer-0 exited", Submitted: t0})
	f.stream(failed, false)
	a, out, errb := testApp("", 0, 0)
	if code := a.main([]string{"watch", "r000001", "--socket", f.socket}); code != ExitFailed || !strings.HasSuffix(out.String(), "r000001 failed: transformer-0 exited\n") || errb.Len() != 0 {
		t.Errorf("failed request: exit %d, %q, %q", code, out, errb)
	}
	a, out, errb = testApp("", 0, 0)
	if code := a.main([]string{"watch", "r000001", "--json", "--socket", f.socket}); code != ExitFailed ||
		!strings.Contains(out.String(), `"state":"failed"`) || errb.String() != `{"error":"request r000001 failed: transformer-0 exited","exit_code":1}`+"\n" {
		t.Errorf("failed request, --json: exit %d, %q, %q", code, out, errb)
	}
	a, _, errb = testApp("", 0, 0)
	if code := a.main([]string{"watch", "r999999", "--socket", f.socket}); code != ExitNotFound || !strings.Contains(errb.String(), `no such request: "r999999"`) {
		t.Errorf("no such request: exit %d, %q", code, errb)
	}

	f.stream(snapshots()[:2], true)
	for _, args := range [][]string{{"watch", "r000001"}, {"submit", "--prompt", "x", "--wait"}} {
		a, out, errb = testApp("", 100, 30)
		// Ctrl-C comes once the stream has shown the request running.
		a.interruptible = func(parent context.Context) (context.Context, context.CancelFunc) {
			c, cancel := context.WithCancel(parent)
			f.mu.Lock()
			f.onHold = cancel
			f.mu.Unlock()
			return c, cancel
		}
		code := a.main(append(args, "--socket", f.socket))
		if code != ExitInterrupted || errb.String() != "detached; the request goes on: follow it with `supervisor watch r000001`\n" {
			t.Errorf("%v, Ctrl-C: exit %d, stderr %q", args, code, errb)
		}
		if !strings.HasSuffix(out.String(), "\r\x1b[J") {
			t.Errorf("%v, Ctrl-C: the progress is not cleared: %q", args, out)
		}
	}
}

// TestPromptFile: --prompt-file reads a file or stdin (trailing newlines
// dropped); a prompt over the limit is refused before any supervisor is
// called (exit 2, not 4), with the limit in the message.
func TestPromptFile(t *testing.T) {
	f := newFake(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "prompt.txt")
	if err := os.WriteFile(file, []byte("a fox\nin the snow\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, out, errb := testApp("from stdin\r\n", 0, 0)
	if code := a.main([]string{"submit", "--prompt-file", file, "--socket", f.socket}); code != 0 || out.String() != "r000001\n" {
		t.Fatalf("file: exit %d, %q, %q", code, out, errb)
	}
	a, _, errb = testApp("from stdin\r\n", 0, 0)
	if code := a.main([]string{"submit", "--prompt-file", "-", "--steps", "3", "--socket", f.socket}); code != 0 {
		t.Fatalf("stdin: exit %d, %q", code, errb)
	}
	subs := f.submissions()
	if len(subs) != 2 || subs[0].Prompt != "a fox\nin the snow" || subs[1].Prompt != "from stdin" || subs[1].Steps != 3 {
		t.Fatalf("submissions %+v", subs)
	}

	big := filepath.Join(dir, "big.txt")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	nobody := filepath.Join(dir, "nobody.sock")
	tests := []struct {
		stdin string
		args  []string
		err   string
	}{
		{"", []string{"submit", "--prompt-file", big}, "--prompt-file " + big + ": the prompt is 2097152 bytes; at most 65536 are accepted"},
		{strings.Repeat("y", 70000), []string{"submit", "--prompt-file", "-"}, "--prompt-file -: the prompt is more than 65536 bytes; at most 65536 are accepted"},
		{"", []string{"submit", "--prompt", strings.Repeat("z", 65537)}, "prompt is 65537 bytes; at most 65536 are accepted"},
		{"", []string{"submit", "--prompt-file", filepath.Join(dir, "missing")}, "missing: no such file or directory"},
		{"\n", []string{"submit", "--prompt-file", "-"}, "prompt must not be empty"},
		{"", []string{"submit", "--prompt", "a", "--prompt-file", file}, "submit takes one prompt"},
		{"", []string{"run", "--prompt-file", big}, "at most 65536 are accepted"},
		{"x", []string{"run", "--prompt-file", "-", "--prompt-file", "-"}, "stdin is read once"},
	}
	for _, tt := range tests {
		a, _, errb := testApp(tt.stdin, 0, 0)
		if code := a.main(append(tt.args, "--socket", nobody)); code != ExitUsage || !strings.Contains(errb.String(), tt.err) {
			t.Errorf("%.60v: exit %d, %q; want exit 2 and %q", tt.args, code, errb, tt.err)
		}
	}
}
