package supervisor

import (
	"bytes"
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
)

// pluginLog reads what a plugin writes on stderr: go-plugin copies every
// raw line to it (ClientConfig.Stderr), and it logs each one under the
// plugin's logger and keeps the last ones for error messages. go-plugin's
// own parser of those lines is never reached (see quietStderr): it
// asserts the types of "@message", "@level" and "@timestamp", so the line
// {"@level":"info","@message":5} from a plugin panicked the supervisor.
// Nothing a plugin writes can crash or stall this one: it parses with
// encoding/json, checks every type, cuts a line at maxLogLine bytes (each
// piece logged as text at debug) and keeps keepLines lines.
//
// The rules, which docs/protocol.md states for plugin authors:
//
//   - a line that is a JSON object whose "@level" is a string naming a
//     level (trace, debug, info, warn, error; any case) and whose
//     "@message" is a string is logged at that level with that message;
//     "@timestamp", a string in RFC 3339 with any number of fractional
//     digits, becomes the field "timestamp"; every other key is a field;
//   - any other line is logged as text at debug, except that "[TRACE]",
//     "[DEBUG]", "[INFO]", "[WARN]" and "[ERROR]" at its start give its
//     level, and a line starting "panic: " or "fatal error: " (a Go
//     crash) is logged at error with every later line that is not JSON.
type pluginLog struct {
	logger hclog.Logger

	mu      sync.Mutex
	part    []byte   // the line being written, up to maxLogLine bytes
	cutting bool     // part continues a line cut at maxLogLine bytes
	lines   []string // the last keepLines lines, each cut at keepLineBytes
	inPanic bool
}

// nonEmpty returns the key/value pairs kv without those whose value is
// an empty string, so that a log line says nothing rather than
// `stderr=` or `reason=""`.
func nonEmpty(kv ...any) []any {
	out := kv[:0:0]
	for i := 0; i+1 < len(kv); i += 2 {
		if v, ok := kv[i+1].(string); ok && v == "" {
			continue
		}
		out = append(out, kv[i], kv[i+1])
	}
	return out
}

// maxLogLine bounds one line of a plugin's stderr; longer ones are cut.
const maxLogLine = 64 << 10

// keepLines is how many of a plugin's last stderr lines errors quote, and
// keepLineBytes how much of each.
const (
	keepLines     = 20
	keepLineBytes = 1 << 10
)

func newPluginLog(logger hclog.Logger) *pluginLog {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &pluginLog{logger: logger}
}

// Write takes raw stderr bytes, in pieces of any size.
func (w *pluginLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		room := maxLogLine - len(w.part)
		if len(chunk) > room {
			// The line is too long: what fits is a piece of its own,
			// and so is every later piece, up to its end.
			w.part = append(w.part, chunk[:room]...)
			w.flush(true)
			w.cutting = true
			b = b[room:]
			continue
		}
		w.part = append(w.part, chunk...)
		if i < 0 {
			break
		}
		w.flush(w.cutting)
		w.cutting = false
		b = b[i+1:]
	}
	return n, nil
}

// flush logs and keeps the line in w.part, as text at debug if cut (a
// piece of a line over maxLogLine bytes); w.mu is held.
func (w *pluginLog) flush(cut bool) {
	line := bytes.TrimSuffix(w.part, []byte("\r"))
	w.part = w.part[:0]
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	if cut {
		w.logger.Debug(printable(string(line)))
	} else {
		w.log(line)
	}
	kept := printable(string(line))
	if len(kept) > keepLineBytes {
		kept = strings.ToValidUTF8(kept[:keepLineBytes], "") + "…"
	}
	w.lines = append(w.lines, kept)
	if len(w.lines) > keepLines {
		w.lines = slices.Delete(w.lines, 0, len(w.lines)-keepLines)
	}
}

// log logs one line by the rules of pluginLog's comment; w.mu is held.
func (w *pluginLog) log(line []byte) {
	if level, msg, fields, ok := parseLogJSON(line); ok {
		w.logger.Log(level, msg, fields...)
		return
	}
	text := printable(string(line))
	level := hclog.Debug
	for _, p := range []struct {
		prefix string
		level  hclog.Level
	}{{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info}, {"[WARN]", hclog.Warn}, {"[ERROR]", hclog.Error}} {
		if strings.HasPrefix(text, p.prefix) {
			level = p.level
		}
	}
	if strings.HasPrefix(text, "panic: ") || strings.HasPrefix(text, "fatal error: ") {
		w.inPanic = true
	}
	if w.inPanic {
		level = hclog.Error
	}
	w.logger.Log(level, text)
}

// parseLogJSON reads an hclog JSON line: its level, message, and the other
// keys as fields (sorted by key, so that logs read the same every time;
// those whose value is an empty string left out).
func parseLogJSON(line []byte) (hclog.Level, string, []any, bool) {
	if len(line) == 0 || line[0] != '{' {
		return 0, "", nil, false
	}
	var raw map[string]any
	if err := json.Unmarshal(line, &raw); err != nil {
		return 0, "", nil, false
	}
	lv, _ := raw["@level"].(string)
	msg, isString := raw["@message"].(string)
	level := hclog.LevelFromString(lv)
	if !isString || level == hclog.NoLevel || level == hclog.Off {
		return 0, "", nil, false
	}
	delete(raw, "@level")
	delete(raw, "@message")
	if ts, ok := raw["@timestamp"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			delete(raw, "@timestamp")
			raw["timestamp"] = t.Format(hclog.TimeFormat)
		}
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fields := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		fields = append(fields, printable(k), printableValue(raw[k]))
	}
	return level, printable(msg), nonEmpty(fields...), true
}

// printable makes text from a plugin safe to show on a terminal: invalid
// UTF-8 becomes U+FFFD and control characters (escape sequences, carriage
// returns) are written as \x.. escapes.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || r != '\t' && unicode.IsControl(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if r != '\t' && unicode.IsControl(r) {
			b.WriteString(strings.Trim(strconv.QuoteRune(r), "'"))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// printableValue is a JSON value with printable strings at every depth.
func printableValue(v any) any {
	switch v := v.(type) {
	case string:
		return printable(v)
	case []any:
		for i := range v {
			v[i] = printableValue(v[i])
		}
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[printable(k)] = printableValue(x)
		}
		return out
	}
	return v
}

// String returns the last lines, including an unfinished one.
func (w *pluginLog) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := slices.Clone(w.lines)
	if len(bytes.TrimSpace(w.part)) > 0 {
		lines = append(lines, printable(string(w.part[:min(len(w.part), keepLineBytes)])))
	}
	return strings.Join(lines, "\n")
}

// quietStderr is the logger go-plugin gets: the supervisor's for
// go-plugin's own messages, but the loggers it names (the one it would log
// the plugin's stderr lines with, after copying them to pluginLog, and its
// stdio one) log nothing and report the level Off, which also makes
// go-plugin skip its own parsing of those lines.
type quietStderr struct{ hclog.Logger }

func (quietStderr) Named(string) hclog.Logger { return off }

// off is a logger that logs nothing, at the level Off.
var off = hclog.New(&hclog.LoggerOptions{Level: hclog.Off, Output: io.Discard})
