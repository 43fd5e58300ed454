// Package model is the math of phased's built-in phases: a small,
// deterministic text-to-video "model" split in three functions, one per
// phase.
//
//   - Encode turns a prompt and a seed into a context tensor and a noise
//     latent (the encoder phase).
//   - Denoise runs steps refinement steps over the latent, conditioned on
//     the context (the transformer phase).
//   - Decode turns the latent into an animated GIF (the decoder phase).
//
// Reference runs all three in one process; a distributed run of the three
// phases must produce byte-identical GIFs.
//
// Every function is deterministic down to the byte, on every GOARCH: the
// pseudo-random numbers come from splitmix64, all arithmetic is float32 with
// each product rounded explicitly (so that no compiler may fuse it into an
// FMA), and the GIF uses a fixed palette without dithering.
//
// The functions expect valid Params (see Params.Validate): Encode panics on
// invalid ones; Denoise, Decode and Reference return an error.
package model

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"math"
)

// ErrBadSteps is returned by Denoise and Reference for a negative number of
// steps.
var ErrBadSteps = errors.New("steps must be 0 or more")

// ErrBadLength is wrapped by the errors about a tensor whose number of
// values does not match the Params.
var ErrBadLength = errors.New("tensor length does not match the params")

// Salts that separate the pseudo-random streams.
const (
	golden    = 0x9e3779b97f4a7c15 // splitmix64's increment
	padSalt   = 0x5bd1e9955bd1e995 // token key of a position past the prompt's end
	tokenSalt = 0x27d4eb2f165667c5 // mixed with each prompt byte
	posSalt   = 0xc2b2ae3d27d4eb4f // position embeddings
	noiseSalt = 0x165667b19e3779f9 // the noise latent
	poolSalt  = 0x85ebca77c2b2ae63 // per-channel pooling signs
)

// mix is splitmix64's output function.
func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// unit maps the top 24 bits of z to a float32 in [-1, 1), exactly.
func unit(z uint64) float32 {
	return float32(int32(z>>40)-1<<23) * (1.0 / (1 << 23))
}

// Encode returns the context for prompt and the noise latent for seed,
// with len(ctx) = ContextLen*ContextDim and len(latent) =
// Channels*Frames*Height*Width (row-major, as in ContextSpec and
// LatentSpec). p must be valid.
//
// The prompt's bytes are its tokens. Row l of the context embeds the token
// key of position l, which is the prompt byte at l (or a padding key past
// the prompt's end), with the bytes at l+ContextLen, l+2*ContextLen, ...
// folded in, so that every byte of a long prompt counts:
//
//	ctx[l][d] = 0.75*unit(mix(key_l + d*φ)) + 0.25*unit(mix(mix(posSalt + l*φ) + d*φ))
//
// The latent is splitmix64's stream from uint64(seed)^noiseSalt, each value
// mapped to [-1, 1).
func Encode(p Params, prompt string, seed int64) (ctx, latent []float32) {
	if err := p.Validate(); err != nil {
		panic("model.Encode: invalid params: " + err.Error())
	}
	L, D := p.ContextLen, p.ContextDim
	ctx = make([]float32, L*D)
	for l := range L {
		key := uint64(padSalt)
		if l < len(prompt) {
			key = tokenSalt
			for i := l; i < len(prompt); i += L {
				key = mix(key ^ uint64(prompt[i]))
			}
		}
		pos := mix(posSalt + uint64(l)*golden)
		row := ctx[l*D : (l+1)*D]
		for d := range row {
			e := unit(mix(key + uint64(d)*golden))
			q := unit(mix(pos + uint64(d)*golden))
			row[d] = float32(0.75*e) + float32(0.25*q)
		}
	}
	latent = make([]float32, p.latentLen())
	s := uint64(seed) ^ noiseSalt
	for i := range latent {
		s += golden
		latent[i] = unit(mix(s))
	}
	return ctx, latent
}

// Denoise runs steps refinement steps over latent in place, conditioned on
// cond (the context from Encode). steps == 0 leaves latent as is; a
// negative steps is ErrBadSteps. It checks ctx before each channel of each
// step and returns ctx.Err() as soon as ctx is done, leaving latent
// partly refined.
//
// First it pools the context per channel c and position l, with signs
// s_c[d] = ±1 from splitmix64, and derives a target for every latent value:
//
//	pool[c][l] = (Σ_d cond[l][d]*s_c[d]) / √ContextDim   (the sum in four lanes, see dot)
//	a = pool[c][(h*ContextLen/Height + f) % ContextLen]
//	b = pool[c][(w*ContextLen/Width + 2f + c) % ContextLen]
//	target[c][f][h][w] = (a + b) + a*b
//
// Step i (from 0) then moves every value x toward its target, with a small
// nonlinearity (x clamped to [-1, 1]):
//
//	α = 1/(steps-i+1)
//	x = x + α*(target-x) + (α/8)*clamp(x, -1, 1)
//
// The noise keeps a weight of about 1/(steps+1), so the seed shows.
func Denoise(ctx context.Context, p Params, cond, latent []float32, steps int) error {
	return DenoiseEach(ctx, p, cond, latent, steps, nil)
}

// DenoiseEach is Denoise that calls step, when not nil, after each step
// with the number of steps done (1 to steps) and steps. The latent is
// the same as Denoise's, bit for bit.
func DenoiseEach(ctx context.Context, p Params, cond, latent []float32, steps int, step func(done, total int)) error {
	return DenoiseFrom(ctx, p, cond, latent, 0, steps, step)
}

// DenoiseFrom is DenoiseEach for a latent that from steps have refined
// already (0 <= from <= steps): it runs steps from+1 … steps, and calls
// step after each. The latent is the same as DenoiseEach's, bit for bit:
// the state of the steps is the latent alone, which is what a resumed Run
// takes from its checkpoint.
func DenoiseFrom(ctx context.Context, p Params, cond, latent []float32, from, steps int, step func(done, total int)) error {
	d, err := NewDenoiser(ctx, p, cond, latent, from, steps)
	if err != nil {
		return err
	}
	for !d.Done() {
		if err := d.Step(ctx); err != nil {
			return err
		}
		if step != nil {
			step(d.Steps(), steps)
		}
	}
	return nil
}

// Denoiser runs Denoise's steps over one latent one at a time, so that a
// batch of requests can be denoised in lockstep, a step of each in turn;
// every latent is the same as Denoise's, bit for bit.
type Denoiser struct {
	p              Params
	latent, target []float32
	done, steps    int
}

// NewDenoiser returns the Denoiser of latent, which from of steps steps
// have refined already (0 <= from <= steps), conditioned on cond; it
// computes the targets, checking ctx as Denoise does.
func NewDenoiser(ctx context.Context, p Params, cond, latent []float32, from, steps int) (*Denoiser, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if steps < 0 {
		return nil, fmt.Errorf("%w: got %d", ErrBadSteps, steps)
	}
	if from < 0 || from > steps {
		return nil, fmt.Errorf("%w: resuming after step %d of %d", ErrBadSteps, from, steps)
	}
	if len(cond) != p.contextLen() {
		return nil, fmt.Errorf("%w: context has %d values, want %d for %s", ErrBadLength, len(cond), p.contextLen(), ContextSpec(p))
	}
	if len(latent) != p.latentLen() {
		return nil, fmt.Errorf("%w: latent has %d values, want %d for %s", ErrBadLength, len(latent), p.latentLen(), LatentSpec(p))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d := &Denoiser{p: p, latent: latent, done: from, steps: steps}
	if from == steps {
		return d, nil
	}
	var err error
	if d.target, err = targets(ctx, p, cond); err != nil {
		return nil, err
	}
	return d, nil
}

// Done reports whether every step has run.
func (d *Denoiser) Done() bool { return d.done >= d.steps }

// Steps returns the steps done, those it was resumed after included.
func (d *Denoiser) Steps() int { return d.done }

// Step runs the next step; it returns ctx.Err() as soon as ctx is done
// (checked before each channel), leaving the latent partly refined.
func (d *Denoiser) Step(ctx context.Context) error {
	if d.Done() {
		return nil
	}
	p, i := d.p, d.done
	plane := p.Frames * p.Height * p.Width
	a := 1 / float32(d.steps-i+1)
	k := a * 0.125
	for c := range p.Channels {
		if err := ctx.Err(); err != nil {
			return err
		}
		xs := d.latent[c*plane : (c+1)*plane]
		ts := d.target[c*plane : (c+1)*plane]
		ts = ts[:len(xs)]
		for j, x := range xs {
			xs[j] = x + float32(a*(ts[j]-x)) + float32(k*min(max(x, -1), 1))
		}
	}
	d.done++
	return nil
}

// targets returns the values that Denoise moves the latent toward (see
// Denoise), checking ctx before each channel.
func targets(ctx context.Context, p Params, cond []float32) ([]float32, error) {
	L, D := p.ContextLen, p.ContextDim
	C, F, H, W := p.Channels, p.Frames, p.Height, p.Width
	norm := float32(1 / math.Sqrt(float64(D)))
	pool := make([]float32, C*L)
	sign := make([]float32, D)
	for c := range C {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		seed := mix(poolSalt + uint64(c)*golden)
		for d := range sign {
			sign[d] = 1
			if mix(seed+uint64(d)*golden)&1 != 0 {
				sign[d] = -1
			}
		}
		for l := range L {
			pool[c*L+l] = float32(dot(cond[l*D:(l+1)*D], sign) * norm)
		}
	}
	col := make([]int, W) // w*L/W
	for w := range col {
		col[w] = w * L / W
	}
	bs := make([]float32, W) // b for each w of one (c, f)
	target := make([]float32, C*F*H*W)
	for c := range C {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pc := pool[c*L : (c+1)*L]
		i := c * F * H * W
		for f := range F {
			for w := range bs {
				bs[w] = pc[(col[w]+2*f+c)%L]
			}
			for h := range H {
				a := pc[(h*L/H+f)%L]
				row := target[i : i+W]
				for w, b := range bs {
					row[w] = (a + b) + float32(a*b)
				}
				i += W
			}
		}
	}
	return target, nil
}

// dot returns Σ a[i]*b[i] for len(a) == len(b), summed in four lanes
// (i mod 4) that are added as (lane0+lane1)+(lane2+lane3); a fixed order,
// so the result is the same everywhere.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += float32(a[i] * b[i])
		s1 += float32(a[i+1] * b[i+1])
		s2 += float32(a[i+2] * b[i+2])
		s3 += float32(a[i+3] * b[i+3])
	}
	for ; i < len(a); i++ {
		switch i % 4 {
		case 0:
			s0 += float32(a[i] * b[i])
		case 1:
			s1 += float32(a[i] * b[i])
		case 2:
			s2 += float32(a[i] * b[i])
		}
	}
	return (s0 + s1) + (s2 + s3)
}

// palette is the fixed palette of the decoded GIFs: the 6×6×6 colour cube
// (levels 0, 51, ..., 255; index 36r+6g+b) followed by 40 grays
// round(k*255/41) for k = 1..40, none of which is in the cube. 256 colours.
var palette = makePalette()

func makePalette() color.Palette {
	p := make(color.Palette, 0, 256)
	for r := range 6 {
		for g := range 6 {
			for b := range 6 {
				p = append(p, color.RGBA{uint8(r * 51), uint8(g * 51), uint8(b * 51), 255})
			}
		}
	}
	for k := 1; k <= 40; k++ {
		v := uint8((k*255 + 20) / 41)
		p = append(p, color.RGBA{v, v, v, 255})
	}
	return p
}

// nearest returns the index of the colour of palette nearest to (r, g, b)
// by squared RGB distance, the lowest index on a tie: the same answer as
// palette.Index, computed without scanning the cube (the nearest cube
// colour rounds each channel to its nearest level).
func nearest(r, g, b uint8) uint8 {
	ri, gi, bi := (int(r)+25)/51, (int(g)+25)/51, (int(b)+25)/51
	best := ri*36 + gi*6 + bi
	bestD := sq(int(r)-ri*51) + sq(int(g)-gi*51) + sq(int(b)-bi*51)
	for k := 1; k <= 40; k++ {
		v := (k*255 + 20) / 41
		if d := sq(int(r)-v) + sq(int(g)-v) + sq(int(b)-v); d < bestD {
			best, bestD = 215+k, d
		}
	}
	return uint8(best)
}

func sq(x int) int { return x * x }

// level maps a latent value to a colour level in [0, 255] through a
// softsign: 127.5 + 127.5*y/(1+|y|) with y = 2x, truncated.
func level(x float32) uint8 {
	y := 2 * x
	ay := y
	if ay < 0 {
		ay = -ay
	}
	v := float32(127.5*(y/(1+ay))) + 127.5
	if !(v >= 0) { // NaN
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// Decode turns latent into an animated GIF: one frame per latent frame,
// (Width*Scale)×(Height*Scale) pixels, whose red, green and blue are
// latent channels 0, 1 and 2 mapped through a softsign to [0, 255],
// upsampled by Scale (nearest neighbour) and quantized to a fixed palette (6×6×6 cube and 40 grays) without
// dithering. Every frame shows for Delay hundredths of a second and the
// animation loops forever (LoopCount 0). Other channels are ignored.
func Decode(p Params, latent []float32) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if len(latent) != p.latentLen() {
		return nil, fmt.Errorf("%w: latent has %d values, want %d for %s", ErrBadLength, len(latent), p.latentLen(), LatentSpec(p))
	}
	F, H, W, S := p.Frames, p.Height, p.Width, p.Scale
	plane := F * H * W
	rect := image.Rect(0, 0, W*S, H*S)
	g := &gif.GIF{
		Image:     make([]*image.Paletted, F),
		Delay:     make([]int, F),
		LoopCount: 0,
		Config:    image.Config{ColorModel: palette, Width: W * S, Height: H * S},
	}
	for f := range F {
		img := image.NewPaletted(rect, palette)
		for h := range H {
			row := img.Pix[h*S*img.Stride : h*S*img.Stride+W*S]
			off := f*H*W + h*W
			for w := range W {
				i := off + w
				idx := nearest(level(latent[i]), level(latent[plane+i]), level(latent[2*plane+i]))
				for x := range S {
					row[w*S+x] = idx
				}
			}
			for y := 1; y < S; y++ {
				copy(img.Pix[(h*S+y)*img.Stride:], row)
			}
		}
		g.Image[f] = img
		g.Delay[f] = p.Delay
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, g); err != nil {
		return nil, fmt.Errorf("encode gif: %w", err)
	}
	return buf.Bytes(), nil
}

// Reference runs Encode, Denoise and Decode in one process: the GIF that a
// distributed run of the encoder, transformer and decoder phases with the
// same params, prompt, seed and steps must produce, byte for byte.
func Reference(ctx context.Context, p Params, prompt string, seed int64, steps int) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if steps < 0 {
		return nil, fmt.Errorf("%w: got %d", ErrBadSteps, steps)
	}
	cond, latent := Encode(p, prompt, seed)
	if err := Denoise(ctx, p, cond, latent, steps); err != nil {
		return nil, err
	}
	return Decode(p, latent)
}
