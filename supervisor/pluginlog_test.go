package supervisor

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
)

// testLogger logs at trace into a buffer, one line per entry, without
// time stamps.
func testLogger() (hclog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return hclog.New(&hclog.LoggerOptions{Name: "p", Level: hclog.Trace, Output: &buf, DisableTime: true}), &buf
}

func TestPluginLogLines(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"hclog JSON", `{"@level":"warn","@message":"low memory","@timestamp":"2026-11-30T10:00:00.123456Z","free":3}` + "\n",
			`[WARN]  p: low memory: free=3 timestamp=2026-11-30T10:00:00.123Z`},
		{"empty fields left out", `{"@level":"info","@message":"room removed","reason":"","stderr":"","room":7}` + "\n",
			`[INFO]  p: room removed: room=7`},
		{"three fractional digits", `{"@level":"INFO","@message":"hi","@timestamp":"2026-11-30T10:00:00.123Z"}` + "\n",
			`[INFO]  p: hi: timestamp=2026-11-30T10:00:00.123Z`},
		{"bad timestamp kept as a field", `{"@level":"info","@message":"hi","@timestamp":"yesterday"}` + "\n",
			`[INFO]  p: hi: @timestamp=yesterday`},
		{"message not a string", `{"@level":"info","@message":5}` + "\n",
			`[DEBUG] p: {"@level":"info","@message":5}`},
		{"level not a string", `{"@level":3,"@message":"x"}` + "\n", `[DEBUG] p: {"@level":3,"@message":"x"}`},
		{"timestamp not a string", `{"@level":"error","@message":"x","@timestamp":7}` + "\n", `[ERROR] p: x: @timestamp=7`},
		{"unknown level", `{"@level":"loud","@message":"x"}` + "\n", `[DEBUG] p: {"@level":"loud","@message":"x"}`},
		{"level off", `{"@level":"off","@message":"x"}` + "\n", `[DEBUG] p: {"@level":"off","@message":"x"}`},
		{"JSON array", "[1,2]\n", `[DEBUG] p: [1,2]`},
		{"truncated JSON", `{"@level":"info"` + "\n", `[DEBUG] p: {"@level":"info"`},
		{"prefixed text", "[WARN] disk almost full\r\n", `[WARN]  p: [WARN] disk almost full`},
		{"plain text", "loading weights\n", `[DEBUG] p: loading weights`},
		{"escape sequences", "\x1b[2Jcleared\rX\n", `[DEBUG] p: \x1b[2Jcleared\rX`},
		{"invalid UTF-8", "a\xffb\n", "[DEBUG] p: a\uFFFDb"},
		{"a Go crash", "panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n",
			"[ERROR] p: panic: boom\n[ERROR] p: goroutine 1 [running]:\n[ERROR] p: main.main()"},
		{"pieces", "par", ""}, // no newline yet: nothing logged
		{"escapes at every depth", `{"@level":"info","@message":"m","l":["\u001b[31mred"],"o":{"k\r":"\u0007"}}` + "\n",
			`[INFO]  p: m: l=[\x1b[31mred] o=map[k\r:\a]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logger, buf := testLogger()
			w := newPluginLog(logger)
			for i := range len(tt.in) { // one byte at a time: pieces join
				if _, err := w.Write([]byte{tt.in[i]}); err != nil {
					t.Fatal(err)
				}
			}
			if got := strings.TrimRight(buf.String(), "\n"); got != tt.want {
				t.Errorf("logged\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// TestPluginLogBounds: a line without end is cut at maxLogLine bytes, so
// memory stays bounded, and the last keepLines lines are kept.
func TestPluginLogBounds(t *testing.T) {
	logger, buf := testLogger()
	w := newPluginLog(logger)
	long := bytes.Repeat([]byte("x"), 3*maxLogLine+5)
	if _, err := w.Write(long); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != 3 {
		t.Fatalf("%d lines logged for a line of 3 pieces and 5 bytes, want 3", n)
	}
	if len(w.part) != 5 {
		t.Fatalf("%d bytes pending, want 5", len(w.part))
	}
	// The end of a cut line is a piece too: logged as text, not parsed.
	buf.Reset()
	w.Write([]byte(`{"@level":"error","@message":"forged"}` + "\n"))
	if got := buf.String(); !strings.HasPrefix(got, "[DEBUG] p: xxxxx{") {
		t.Fatalf("the end of a cut line: %q", got)
	}
	for i := range 30 {
		w.Write([]byte("line " + string(rune('a'+i)) + "\n"))
	}
	lines := strings.Split(w.String(), "\n")
	if len(lines) != keepLines || lines[0] != "line k" || lines[keepLines-1] != "line ~" {
		t.Fatalf("kept %d lines, first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	// What is kept of a line is bounded.
	w.Write(append(bytes.Repeat([]byte("y"), 5000), '\n'))
	lines = strings.Split(w.String(), "\n")
	if last := lines[len(lines)-1]; len(last) != keepLineBytes+len("…") {
		t.Fatalf("kept %d bytes of a 5000-byte line", len(last))
	}
}

// fakeRunner is a plugin process that is not one: its stdout says nothing
// (go-plugin gives up at once) and its stderr is what a fuzz input holds.
type fakeRunner struct{ stderr []byte }

func (r fakeRunner) Start(context.Context) error                      { return nil }
func (r fakeRunner) Diagnose(context.Context) string                  { return "" }
func (r fakeRunner) Stdout() io.ReadCloser                            { return io.NopCloser(strings.NewReader("")) }
func (r fakeRunner) Stderr() io.ReadCloser                            { return io.NopCloser(bytes.NewReader(r.stderr)) }
func (r fakeRunner) Name() string                                     { return "phased-phase-fuzz" }
func (r fakeRunner) Wait(context.Context) error                       { return nil }
func (r fakeRunner) Kill(context.Context) error                       { return nil }
func (r fakeRunner) ID() string                                       { return "fuzz" }
func (r fakeRunner) PluginToHost(n, a string) (string, string, error) { return n, a, nil }
func (r fakeRunner) HostToPlugin(n, a string) (string, string, error) { return n, a, nil }

var _ runner.Runner = fakeRunner{}

// FuzzPluginStderr feeds arbitrary bytes, as a plugin's stderr, through
// the path a real plugin's stderr takes: go-plugin's client, configured as
// startProcess configures it, then pluginLog. Nothing may panic or stall,
// and what is kept stays bounded.
func FuzzPluginStderr(f *testing.F) {
	for _, seed := range []string{
		`{"@level":"info","@message":5}` + "\n",
		`{"@level":"info","@message":"x","@timestamp":5}` + "\n",
		`{"@level":7,"@message":"x"}` + "\n",
		`{"@level":"info","@message":"x","@timestamp":"2026-11-30T10:00:00.123Z"}` + "\n",
		`{"@level":"debug","@message":"ok","k":{"a":[1,null,true]}}` + "\n",
		"panic: boom\ngoroutine 1\n",
		"\x00\xff\x1b[31m\r\n",
		strings.Repeat("y", 70000),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		logger, logged := testLogger()
		stderr := newPluginLog(logger)
		cfg := clientConfig(processConfig{Logger: logger, StartTimeout: 5 * time.Second, SocketDir: t.TempDir()}, nil, nil, stderr)
		cfg.AutoMTLS = false // no certificate per input: stderr is what is fuzzed
		cfg.RunnerFunc = func(hclog.Logger, *exec.Cmd, string) (runner.Runner, error) { return fakeRunner{in}, nil }
		client := plugin.NewClient(cfg)
		if _, err := client.Start(); err == nil {
			t.Fatal("a plugin that printed no handshake started")
		}
		client.Kill() // waits for go-plugin's stderr reader
		if kept := stderr.String(); len(kept) > (keepLines+1)*(keepLineBytes*4+4) {
			t.Fatalf("%d bytes kept", len(kept))
		}
		// What reaches the log is printable: no control character but
		// the newline ending each entry, and valid UTF-8.
		out := logged.String()
		if !utf8.ValidString(out) || strings.ContainsFunc(out, func(r rune) bool { return r != '\n' && r != '\t' && unicode.IsControl(r) }) {
			t.Fatalf("the log holds control characters or invalid UTF-8: %q", out)
		}
	})
}
