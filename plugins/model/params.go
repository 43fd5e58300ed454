package model

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// Params are the sizes of the model. They are the same in every phase of a
// pipeline: the encoder's outputs must match the transformer's inputs, and
// so on.
type Params struct {
	ContextLen int // context tokens (rows of the context tensor)
	ContextDim int // width of one context token
	Channels   int // latent channels; channels 0..2 are decoded as RGB
	Frames     int // video frames
	Height     int // latent height; the video is Height*Scale pixels high
	Width      int // latent width; the video is Width*Scale pixels wide
	Scale      int // decoder upsampling factor (nearest neighbour)
	Delay      int // GIF delay per frame, in hundredths of a second
}

// DefaultParams returns the quick-demo sizes: a 16×64 context and a
// 4×8×24×32 latent, decoded to 8 frames of 128×96 pixels at 10 fps.
func DefaultParams() Params {
	return Params{
		ContextLen: 16,
		ContextDim: 64,
		Channels:   4,
		Frames:     8,
		Height:     24,
		Width:      32,
		Scale:      4,
		Delay:      10,
	}
}

// Limits on the sizes that Validate accepts.
const (
	// MaxTensorBytes bounds the context tensor, the latent tensor and the
	// decoded frames (one byte per pixel): 2 GiB each.
	MaxTensorBytes = 2 << 30
	// MaxGIFSide bounds the width and height of a decoded frame, which GIF
	// stores as 16-bit numbers.
	MaxGIFSide = 65535
	// MaxDelay bounds the delay, which GIF stores as a 16-bit number.
	MaxDelay = 65535
	// MinChannels is the least number of latent channels: the decoder reads
	// channels 0, 1 and 2 as red, green and blue.
	MinChannels = 3
)

// The param keys that ParseParams knows, in the order of the Params fields.
var paramKeys = []string{"context_len", "context_dim", "channels", "frames", "height", "width", "scale", "delay"}

// field returns a pointer to the field of p named by the snake_case key, or
// nil for an unknown key.
func (p *Params) field(key string) *int {
	switch key {
	case "context_len":
		return &p.ContextLen
	case "context_dim":
		return &p.ContextDim
	case "channels":
		return &p.Channels
	case "frames":
		return &p.Frames
	case "height":
		return &p.Height
	case "width":
		return &p.Width
	case "scale":
		return &p.Scale
	case "delay":
		return &p.Delay
	}
	return nil
}

// ParamError reports a bad param: the keys involved, their values as given
// (or as defaulted), and what is wrong. Most errors involve one key; a size
// limit names every key of the product that exceeds it.
type ParamError struct {
	Keys   []string
	Values []string
	Reason string
}

// Error formats the error as `key = "value", ...: reason`.
func (e *ParamError) Error() string {
	var b strings.Builder
	for i, k := range e.Keys {
		if i > 0 {
			b.WriteString(", ")
		}
		v := ""
		if i < len(e.Values) {
			v = e.Values[i]
		}
		fmt.Fprintf(&b, "%s = %q", k, v)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// ParseParams returns DefaultParams overridden by m, whose keys are the
// snake_case names of the Params fields (context_len, context_dim,
// channels, frames, height, width, scale, delay) and whose values are
// decimal integers. An unknown key, a value that is not a positive integer
// and sizes that Validate refuses are errors (*ParamError); keys are
// checked in sorted order and the first error is returned: the first of
// CheckParams(m).
func ParseParams(m map[string]string) (Params, error) {
	p, errs := parse(m)
	if len(errs) > 0 {
		return Params{}, errs[0]
	}
	return p, nil
}

// CheckParams returns every error of m that ParseParams would return the
// first of, in the same order: each unknown key (with the known keys
// close to it, as "did you mean"), each value that is not an integer,
// then, with the integers given, what Validate refuses. None: ParseParams
// accepts m.
func CheckParams(m map[string]string) []*ParamError {
	_, errs := parse(m)
	return errs
}

// parse is ParseParams, with every error.
func parse(m map[string]string) (Params, []*ParamError) {
	p := DefaultParams()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []*ParamError
	for _, k := range keys {
		v := m[k]
		f := p.field(k)
		if f == nil {
			reason := "unknown param; "
			if near := nearKeys(k); len(near) > 0 {
				reason += "did you mean " + quoteOr(near) + "? The "
			} else {
				reason += "the "
			}
			reason += "known params are " + strings.Join(sortedKeys(), ", ")
			errs = append(errs, &ParamError{Keys: []string{k}, Values: []string{v}, Reason: reason})
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, &ParamError{Keys: []string{k}, Values: []string{v}, Reason: "not an integer"})
			continue
		}
		*f = n
	}
	return p, append(errs, p.problems()...)
}

// ParamProblems is CheckParams(m) as a phase's sdk.ParamsValidator
// answers: one problem per error, its message the error's text, as
// Configure would refuse it, about the param to change: the first of
// its keys whose value m gives (and, for a limit on several keys, whose
// value is used: an integer), "" when there is none.
func ParamProblems(m map[string]string) []sdk.ParamProblem {
	var out []sdk.ParamProblem
	for _, e := range CheckParams(m) {
		pp := sdk.ParamProblem{Message: e.Error()}
		for _, k := range e.Keys {
			v, ok := m[k]
			if _, err := strconv.Atoi(v); ok && (err == nil || len(e.Keys) == 1) {
				pp.Param = k
				break
			}
		}
		out = append(out, pp)
	}
	return out
}

// nearKeys returns the known keys closest to an unknown one, sorted: those
// at the least edit distance (a transposition counts one edit), when it is
// at most 2 and less than half the key's length, or else those the key
// extends or begins (context_length, cont). None when nothing is close.
func nearKeys(key string) []string {
	var near []string
	best := 3
	for _, k := range sortedKeys() {
		d := editDistance(key, k)
		if d > 2 || 2*d >= utf8.RuneCountInString(k) {
			continue
		}
		if d < best {
			near, best = nil, d
		}
		if d == best {
			near = append(near, k)
		}
	}
	if len(near) > 0 {
		return near
	}
	for _, k := range sortedKeys() {
		if utf8.RuneCountInString(key) >= 3 && (strings.HasPrefix(key, k) || strings.HasPrefix(k, key)) {
			near = append(near, k)
		}
	}
	return near
}

// editDistance is the optimal string alignment distance between a and b,
// in runes: insertions, deletions, substitutions and transpositions of
// two neighbours count one each.
func editDistance(a, b string) int {
	r, q := []rune(a), []rune(b)
	d := make([][]int, len(r)+1)
	for i := range d {
		d[i] = make([]int, len(q)+1)
		d[i][0] = i
	}
	for j := range q {
		d[0][j+1] = j + 1
	}
	for i := 1; i <= len(r); i++ {
		for j := 1; j <= len(q); j++ {
			cost := 1
			if r[i-1] == q[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && r[i-1] == q[j-2] && r[i-2] == q[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(r)][len(q)]
}

// quoteOr quotes words and joins them with commas and a last "or".
func quoteOr(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = strconv.Quote(w)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func sortedKeys() []string {
	s := append([]string(nil), paramKeys...)
	sort.Strings(s)
	return s
}

// Validate checks that every size is a positive integer, that there are at
// least MinChannels channels, that the context, the latent and the decoded
// frames each fit in MaxTensorBytes, and that a decoded frame and the delay
// fit in a GIF. It returns a *ParamError, the first of what is wrong.
func (p Params) Validate() error {
	if errs := p.problems(); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// problems is every error Validate could return, in its order. The
// sizes are checked against the limits only when all are positive.
func (p Params) problems() []*ParamError {
	var errs []*ParamError
	for _, k := range paramKeys {
		if n := *p.field(k); n <= 0 {
			errs = append(errs, p.errorf("must be a positive integer", k))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	check := func(ok bool, reason string, keys ...string) {
		if !ok {
			errs = append(errs, p.errorf(reason, keys...))
		}
	}
	check(p.Channels >= MinChannels, fmt.Sprintf("must be at least %d: the decoder reads channels 0, 1 and 2 as red, green and blue", MinChannels), "channels")
	check(p.Delay <= MaxDelay, fmt.Sprintf("must be at most %d hundredths of a second (GIF stores it in 16 bits)", MaxDelay), "delay")
	check(fits(MaxGIFSide, p.Width, p.Scale), fmt.Sprintf("a decoded frame would be more than %d pixels wide, the most a GIF holds", MaxGIFSide), "width", "scale")
	check(fits(MaxGIFSide, p.Height, p.Scale), fmt.Sprintf("a decoded frame would be more than %d pixels high, the most a GIF holds", MaxGIFSide), "height", "scale")
	check(fits(MaxTensorBytes, 4, p.ContextLen, p.ContextDim), "the context tensor (context_len × context_dim float32) would exceed 2 GiB", "context_len", "context_dim")
	check(fits(MaxTensorBytes, 4, p.Channels, p.Frames, p.Height, p.Width), "the latent tensor (channels × frames × height × width float32) would exceed 2 GiB", "channels", "frames", "height", "width")
	check(fits(MaxTensorBytes, p.Frames, p.Height, p.Width, p.Scale, p.Scale), "the decoded frames (frames × height×scale × width×scale bytes) would exceed 2 GiB", "frames", "height", "width", "scale")
	return errs
}

// errorf returns a *ParamError naming keys with their values in p.
func (p Params) errorf(reason string, keys ...string) *ParamError {
	vals := make([]string, len(keys))
	for i, k := range keys {
		vals[i] = strconv.Itoa(*p.field(k))
	}
	return &ParamError{Keys: keys, Values: vals, Reason: reason}
}

// fits reports whether the product of the positive factors is at most
// limit, without overflowing.
func fits(limit int64, factors ...int) bool {
	n := int64(1)
	for _, f := range factors {
		if int64(f) > limit/n {
			return false
		}
		n *= int64(f)
	}
	return true
}

// ContextSpec is the spec of the context tensor: float32 [ContextLen, ContextDim].
func ContextSpec(p Params) tensor.Spec {
	return tensor.Spec{Name: "context", DType: tensor.Float32, Shape: []int64{int64(p.ContextLen), int64(p.ContextDim)}}
}

// LatentSpec is the spec of the latent tensor: float32 [Channels, Frames,
// Height, Width].
func LatentSpec(p Params) tensor.Spec {
	return tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{int64(p.Channels), int64(p.Frames), int64(p.Height), int64(p.Width)}}
}

// contextLen and latentLen are the number of float32 values of each tensor.
func (p Params) contextLen() int { return p.ContextLen * p.ContextDim }
func (p Params) latentLen() int  { return p.Channels * p.Frames * p.Height * p.Width }
