package model

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

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
// checked in sorted order and the first error is returned.
func ParseParams(m map[string]string) (Params, error) {
	p := DefaultParams()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := m[k]
		f := p.field(k)
		if f == nil {
			return Params{}, &ParamError{
				Keys:   []string{k},
				Values: []string{v},
				Reason: "unknown param; the known params are " + strings.Join(sortedKeys(), ", "),
			}
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return Params{}, &ParamError{Keys: []string{k}, Values: []string{v}, Reason: "not an integer"}
		}
		*f = n
	}
	if err := p.Validate(); err != nil {
		return Params{}, err
	}
	return p, nil
}

func sortedKeys() []string {
	s := append([]string(nil), paramKeys...)
	sort.Strings(s)
	return s
}

// Validate checks that every size is a positive integer, that there are at
// least MinChannels channels, that the context, the latent and the decoded
// frames each fit in MaxTensorBytes, and that a decoded frame and the delay
// fit in a GIF. It returns a *ParamError.
func (p Params) Validate() error {
	for _, k := range paramKeys {
		if n := *p.field(k); n <= 0 {
			return p.errorf("must be a positive integer", k)
		}
	}
	if p.Channels < MinChannels {
		return p.errorf(fmt.Sprintf("must be at least %d: the decoder reads channels 0, 1 and 2 as red, green and blue", MinChannels), "channels")
	}
	if p.Delay > MaxDelay {
		return p.errorf(fmt.Sprintf("must be at most %d hundredths of a second (GIF stores it in 16 bits)", MaxDelay), "delay")
	}
	if !fits(MaxGIFSide, p.Width, p.Scale) {
		return p.errorf(fmt.Sprintf("a decoded frame would be more than %d pixels wide, the most a GIF holds", MaxGIFSide), "width", "scale")
	}
	if !fits(MaxGIFSide, p.Height, p.Scale) {
		return p.errorf(fmt.Sprintf("a decoded frame would be more than %d pixels high, the most a GIF holds", MaxGIFSide), "height", "scale")
	}
	if !fits(MaxTensorBytes, 4, p.ContextLen, p.ContextDim) {
		return p.errorf("the context tensor (context_len × context_dim float32) would exceed 2 GiB", "context_len", "context_dim")
	}
	if !fits(MaxTensorBytes, 4, p.Channels, p.Frames, p.Height, p.Width) {
		return p.errorf("the latent tensor (channels × frames × height × width float32) would exceed 2 GiB", "channels", "frames", "height", "width")
	}
	if !fits(MaxTensorBytes, p.Frames, p.Height, p.Width, p.Scale, p.Scale) {
		return p.errorf("the decoded frames (frames × height×scale × width×scale bytes) would exceed 2 GiB", "frames", "height", "width", "scale")
	}
	return nil
}

// errorf returns a *ParamError naming keys with their values in p.
func (p Params) errorf(reason string, keys ...string) error {
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
