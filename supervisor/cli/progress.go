package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/mattn/go-isatty"
	"golang.org/x/sys/unix"

	"github.com/phased/phased/supervisor"
)

// terminalSize is app.terminal for real files: the size of the terminal
// w is, unless w is not one or $TERM is "dumb".
func terminalSize(w io.Writer) (width, height int, ok bool) {
	f, isFile := w.(*os.File)
	if !isFile || !isatty.IsTerminal(f.Fd()) || os.Getenv("TERM") == "dumb" {
		return 0, 0, false
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 || ws.Row == 0 {
		return 80, 24, true
	}
	return int(ws.Col), int(ws.Row), true
}

// liveView is the bottom of a terminal, redrawn in place: lines that
// scroll (the log) are written above an area of lines that are
// overwritten on every draw (the cursor moves up over the area and
// clears to the end of the screen). Area lines are cut to the width so
// that none wraps, and their number to the height.
type liveView struct {
	w     io.Writer
	size  func() (width, height int)
	now   func() time.Time
	lines int       // area lines on the screen
	last  time.Time // of the last draw
}

// minRedraw spaces the draws that only change the area, so that a run
// of many requests does not flood the terminal.
const minRedraw = 100 * time.Millisecond

// draw writes log above the area and redraws the area; a draw with no
// log within minRedraw of the last one is skipped unless force.
func (v *liveView) draw(log, area []string, force bool) {
	now := v.now()
	if len(log) == 0 && !force && now.Sub(v.last) < minRedraw {
		return
	}
	v.last = now
	width, height := v.size()
	var b strings.Builder
	if v.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", v.lines)
	}
	b.WriteString("\r\x1b[J")
	for _, l := range log {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	if height > 1 && len(area) > height-1 {
		area = append(area[:height-2:height-2], fmt.Sprintf("… %d more lines", len(area)-(height-2)))
	}
	for _, l := range area {
		b.WriteString(cut(l, width-1))
		b.WriteByte('\n')
	}
	v.lines = len(area)
	_, _ = io.WriteString(v.w, b.String())
}

// cut shortens s to at most n runes, ending in "…" when it was longer.
func cut(s string, n int) string {
	if n < 1 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// follower shows one request's snapshots: its new events as lines, and
// on a terminal its live progress below them.
type follower struct {
	w     io.Writer
	live  *liveView // nil off a terminal
	now   func() time.Time
	shown int // events printed
}

func (a *app) newFollower(w io.Writer) *follower {
	f := &follower{w: w, now: a.now}
	if _, _, ok := a.terminal(w); ok {
		f.live = &liveView{w: w, now: a.now, size: func() (int, int) {
			width, height, _ := a.terminal(w)
			return width, height
		}}
	}
	return f
}

func (f *follower) update(info supervisor.RequestInfo) {
	var log []string
	for _, e := range info.Events[min(f.shown, len(info.Events)):] {
		log = append(log, "  "+describe(e, info))
	}
	f.shown = len(info.Events)
	if f.live == nil {
		for _, l := range log {
			fmt.Fprintln(f.w, l)
		}
		return
	}
	var area []string
	if !info.Terminal() {
		width, _ := f.live.size()
		area = progressLines(info, f.now(), width-1)
	}
	f.live.draw(log, area, info.Terminal())
}

// finish clears the live area.
func (f *follower) finish() {
	if f.live != nil {
		f.live.draw(nil, nil, true)
	}
}

// progressLines renders a request's progress in at most width columns:
// a line for the request (its state, its place in the queue, the time
// since it was submitted), then one per phase: its instance, a bar of its
// steps, steps/s and the time left; or its stage when it counts no steps.
func progressLines(info supervisor.RequestInfo, now time.Time, width int) []string {
	head := info.ID + "  " + info.State
	if info.State == supervisor.StateQueued && info.QueuePosition > 0 {
		head += fmt.Sprintf(", position %d in the queue", info.QueuePosition)
		if info.EstimatedStart != nil {
			head += ", starts in ~" + fmtETA(max(info.EstimatedStart.Sub(now), 0))
		}
	}
	if !info.Submitted.IsZero() {
		head += "  " + fmtDur(now.Sub(info.Submitted))
	}
	lines := []string{head}
	pw, iw := 0, 0
	tails := make([]string, len(info.Progress))
	tw := 0
	for i, p := range info.Progress {
		pw, iw = max(pw, len(p.Phase)), max(iw, len(p.Instance))
		tails[i] = progressTail(p)
		tw = max(tw, len(tails[i]))
	}
	// One bar width for every phase, so that the bars line up.
	bw := min(width-(2+pw+2+iw+2)-tw, maxBar)
	for i, p := range info.Progress {
		line := fmt.Sprintf("  %-*s  %-*s  ", pw, p.Phase, iw, p.Instance)
		switch {
		case p.Total <= 0:
			line += stageWord(p.Stage)
		case bw < 7:
			line += strings.TrimSpace(tails[i])
		default:
			line += bar(p.Done, p.Total, bw) + tails[i]
		}
		lines = append(lines, line)
	}
	for i := range lines {
		lines[i] = cut(lines[i], width)
	}
	return lines
}

// stageWord says a phase's stage when it has no steps to count.
func stageWord(stage string) string {
	switch stage {
	case "":
		return "-"
	case "waiting":
		return "waiting for inputs"
	case "sending":
		return "sending outputs"
	case "finished":
		return "done"
	}
	return stage
}

// maxBar is the widest a progress bar gets, brackets included.
const maxBar = 42

// progressTail is what follows a phase's bar: its counts, its rate, and
// the time left or its stage.
func progressTail(p supervisor.PhaseProgress) string {
	tail := fmt.Sprintf(" %d/%d", p.Done, p.Total)
	if p.ResumedFrom > 0 {
		tail += fmt.Sprintf(" (resumed at %d)", p.ResumedFrom)
	}
	if p.StepsPerSecond > 0 {
		tail += fmt.Sprintf("  %.1f steps/s", p.StepsPerSecond)
	}
	switch {
	case p.Stage == "sending":
		tail += "  sending outputs"
	case p.Stage == "finished":
		tail += "  done"
	case p.StepsPerSecond > 0 && p.Done < p.Total:
		left := time.Duration(float64(p.Total-p.Done) / p.StepsPerSecond * float64(time.Second))
		tail += "  ETA " + fmtETA(left)
	}
	return tail
}

// bar is "[=====>    ]" of width w for done of total.
func bar(done, total, w int) string {
	in := w - 2
	filled := min(max(done, 0)*in/total, in)
	s := strings.Repeat("=", filled)
	if filled < in && done > 0 {
		s += ">"
	}
	return "[" + s + strings.Repeat(" ", in-utf8.RuneCountInString(s)) + "]"
}

// fmtETA says a time left in whole seconds: 9s, 1m05s, 2h03m.
func fmtETA(d time.Duration) string {
	s := int(d.Round(time.Second) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
}

// fmtDur says a duration with three significant digits or so: 850µs,
// 12.3ms, 1.25s, 2m03s.
func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + fmtDur(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Minute:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	return fmtETA(d)
}

// board is run's live view: a line of counts, then the progress of each
// request in flight, in id order. Requests report from many goroutines.
type board struct {
	mu    sync.Mutex
	live  *liveView
	now   func() time.Time
	total int
	ended map[string]bool // id → failed
	open  map[string]supervisor.RequestInfo
}

func (a *app) newBoard(w io.Writer, total int) *board {
	if _, _, ok := a.terminal(w); !ok {
		return nil
	}
	return &board{total: total, now: a.now, ended: map[string]bool{}, open: map[string]supervisor.RequestInfo{},
		live: &liveView{w: w, now: a.now, size: func() (int, int) {
			width, height, _ := a.terminal(w)
			return width, height
		}}}
}

// update records a snapshot of one request and redraws; nil-safe.
func (b *board) update(info supervisor.RequestInfo) {
	if b == nil || info.ID == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if info.Terminal() {
		delete(b.open, info.ID)
		b.ended[info.ID] = info.State != supervisor.StateDone
	} else {
		b.open[info.ID] = info
	}
	width, _ := b.live.size()
	b.live.draw(nil, b.area(width-1), info.Terminal())
}

// area is the board's lines; b.mu is held.
func (b *board) area(width int) []string {
	failed := 0
	for _, f := range b.ended {
		if f {
			failed++
		}
	}
	head := fmt.Sprintf("%d of %d requests ended", len(b.ended), b.total)
	if failed > 0 {
		head += fmt.Sprintf(" (%d failed)", failed)
	}
	lines := []string{head}
	ids := make([]string, 0, len(b.open))
	for id := range b.open {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	now := b.now()
	for _, id := range ids {
		lines = append(lines, progressLines(b.open[id], now, width)...)
	}
	return lines
}

// finish clears the board; nil-safe.
func (b *board) finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.live.draw(nil, nil, true)
}
