package model

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image/color"
	"image/gif"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
)

// wan is the Wan2.1 t2v size.
var wan = map[string]string{
	"context_len": "512", "context_dim": "4096",
	"channels": "16", "frames": "21", "height": "60", "width": "104",
}

func TestParseParams(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]string
		want    Params
		wantErr string // substring of the error; "" for none
	}{
		{name: "nil is the defaults", in: nil, want: DefaultParams()},
		{name: "override", in: map[string]string{"frames": "2", "delay": "5"},
			want: func() Params { p := DefaultParams(); p.Frames, p.Delay = 2, 5; return p }()},
		{name: "wan", in: wan, want: Params{ContextLen: 512, ContextDim: 4096, Channels: 16, Frames: 21, Height: 60, Width: 104, Scale: 4, Delay: 10}},
		{name: "unknown key", in: map[string]string{"fps": "24"},
			wantErr: `fps = "24": unknown param; the known params are channels, context_dim, context_len, delay, frames, height, scale, width`},
		{name: "not an integer", in: map[string]string{"frames": "eight"}, wantErr: `frames = "eight": not an integer`},
		{name: "float", in: map[string]string{"scale": "1.5"}, wantErr: `scale = "1.5": not an integer`},
		{name: "empty", in: map[string]string{"width": ""}, wantErr: `width = "": not an integer`},
		{name: "zero", in: map[string]string{"height": "0"}, wantErr: `height = "0": must be a positive integer`},
		{name: "negative", in: map[string]string{"delay": "-1"}, wantErr: `delay = "-1": must be a positive integer`},
		{name: "two channels", in: map[string]string{"channels": "2"}, wantErr: `channels = "2": must be at least 3`},
		{name: "first error in key order", in: map[string]string{"width": "x", "channels": "y"}, wantErr: `channels = "y": not an integer`},
		{name: "delay over 16 bits", in: map[string]string{"delay": "65536"}, wantErr: `delay = "65536": must be at most 65535`},
		{name: "frame too wide for gif", in: map[string]string{"width": "20000", "scale": "4"},
			wantErr: `width = "20000", scale = "4": a decoded frame would be more than 65535 pixels wide`},
		{name: "context over 2 GiB", in: map[string]string{"context_len": "65536", "context_dim": "8193"},
			wantErr: `context_len = "65536", context_dim = "8193": the context tensor (context_len × context_dim float32) would exceed 2 GiB`},
		{name: "context exactly 2 GiB", in: map[string]string{"context_len": "65536", "context_dim": "8192"},
			want: func() Params { p := DefaultParams(); p.ContextLen, p.ContextDim = 65536, 8192; return p }()},
		{name: "latent over 2 GiB", in: map[string]string{"channels": "16", "frames": "1000", "height": "600", "width": "100", "scale": "1"},
			wantErr: `channels = "16", frames = "1000", height = "600", width = "100": the latent tensor`},
		{name: "overflowing product", in: map[string]string{"context_len": "9223372036854775807", "context_dim": "9223372036854775807"},
			wantErr: `the context tensor (context_len × context_dim float32) would exceed 2 GiB`},
		{name: "frames over 2 GiB", in: map[string]string{"frames": "4096", "height": "128", "width": "128", "scale": "32"},
			wantErr: `frames = "4096", height = "128", width = "128", scale = "32": the decoded frames`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseParams(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseParams(%v) = %+v, want error containing %q", tt.in, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %q, want it to contain %q", err, tt.wantErr)
				}
				var pe *ParamError
				if !errors.As(err, &pe) {
					t.Fatalf("error %T is not a *ParamError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseParams(%v): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseParams(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParamProblems(t *testing.T) {
	pp := func(param, message string) sdk.ParamProblem { return sdk.ParamProblem{Param: param, Message: message} }
	known := "known params are channels, context_dim, context_len, delay, frames, height, scale, width"
	tests := []struct {
		name string
		in   map[string]string
		want []sdk.ParamProblem // nil: valid
	}{
		{name: "none", in: nil},
		{name: "valid", in: wan},
		{name: "every bad key, not only the first", in: map[string]string{"fraems": "3", "width": "x", "stpes": "3", "height": "-2"}, want: []sdk.ParamProblem{
			pp("fraems", `fraems = "3": unknown param; did you mean "frames"? The `+known),
			pp("stpes", `stpes = "3": unknown param; the `+known),
			pp("width", `width = "x": not an integer`),
			// Checked with the integers given: height is, width is not.
			pp("height", `height = "-2": must be a positive integer`),
		}},
		{name: "a case typo", in: map[string]string{"Frames": "3"}, want: []sdk.ParamProblem{pp("Frames", `Frames = "3": unknown param; did you mean "frames"? The `+known)}},
		{name: "a transposition", in: map[string]string{"hieght": "3"}, want: []sdk.ParamProblem{pp("hieght", `hieght = "3": unknown param; did you mean "height"? The `+known)}},
		{name: "a longer name", in: map[string]string{"context_length": "3"}, want: []sdk.ParamProblem{pp("context_length", `context_length = "3": unknown param; did you mean "context_len"? The `+known)}},
		{name: "two as close", in: map[string]string{"context": "3"}, want: []sdk.ParamProblem{pp("context", `context = "3": unknown param; did you mean "context_dim" or "context_len"? The `+known)}},
		{name: "too short to guess", in: map[string]string{"w": "3"}, want: []sdk.ParamProblem{pp("w", `w = "3": unknown param; the `+known)}},
		{name: "every size limit, on the first key given", in: map[string]string{"channels": "2", "delay": "65536", "scale": "40000"}, want: []sdk.ParamProblem{
			pp("channels", `channels = "2": must be at least 3: the decoder reads channels 0, 1 and 2 as red, green and blue`),
			pp("delay", `delay = "65536": must be at most 65535 hundredths of a second (GIF stores it in 16 bits)`),
			pp("scale", `width = "32", scale = "40000": a decoded frame would be more than 65535 pixels wide, the most a GIF holds`),
			pp("scale", `height = "24", scale = "40000": a decoded frame would be more than 65535 pixels high, the most a GIF holds`),
			pp("scale", `frames = "8", height = "24", width = "32", scale = "40000": the decoded frames (frames × height×scale × width×scale bytes) would exceed 2 GiB`),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParamProblems(tt.in)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ParamProblems(%v) =\n%q\nwant\n%q", tt.in, got, tt.want)
			}
			// ParseParams refuses what has problems, with the first.
			_, err := ParseParams(tt.in)
			if len(tt.want) == 0 && err != nil || len(tt.want) > 0 && (err == nil || err.Error() != tt.want[0].Message) {
				t.Fatalf("ParseParams(%v) = %v; want the first problem", tt.in, err)
			}
		})
	}
}

func TestSpecs(t *testing.T) {
	p, err := ParseParams(wan)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ContextSpec(p).String(), "context:float32[512 4096]"; got != want {
		t.Errorf("ContextSpec = %s, want %s", got, want)
	}
	if got, want := LatentSpec(p).String(), "latent:float32[16 21 60 104]"; got != want {
		t.Errorf("LatentSpec = %s, want %s", got, want)
	}
	if n, _ := ContextSpec(p).NumBytes(); n != 8<<20 {
		t.Errorf("context is %d bytes, want 8 MiB", n)
	}
}

func mustReference(t testing.TB, p Params, prompt string, seed int64, steps int) []byte {
	t.Helper()
	b, err := Reference(context.Background(), p, prompt, seed, steps)
	if err != nil {
		t.Fatalf("Reference(%q, %d, %d): %v", prompt, seed, steps, err)
	}
	return b
}

func TestReferenceDeterministic(t *testing.T) {
	p := DefaultParams()
	for _, steps := range []int{0, 1, 20} {
		a := mustReference(t, p, "a red fox in the snow", 42, steps)
		b := mustReference(t, p, "a red fox in the snow", 42, steps)
		if !bytes.Equal(a, b) {
			t.Fatalf("steps %d: two runs differ", steps)
		}
	}
}

// TestReferenceGolden pins the demo output, so that a change to the math,
// or a platform that computes it differently, is noticed. Update the hash
// only for an intended change to the model.
func TestReferenceGolden(t *testing.T) {
	b := mustReference(t, DefaultParams(), "a red fox in the snow", 42, 20)
	sum := sha256.Sum256(b)
	if got, want := hex.EncodeToString(sum[:]), goldenSHA256; got != want {
		t.Fatalf("sha256 of the demo reference = %s (%d bytes), want %s", got, len(b), want)
	}
}

const goldenSHA256 = "ea10f50f99f29bbbd4523a340a8a75ce4e6e9b6ddedae83381b3aadb99d5f8b7"

func TestReferenceDiffers(t *testing.T) {
	p := DefaultParams()
	long := strings.Repeat("x", p.ContextLen)
	cases := []struct {
		prompt string
		seed   int64
	}{
		{"a red fox in the snow", 42},
		{"a red fox in the snow", 43},
		{"a red fox in the snow", -42},
		{"a red fox in the snoW", 42},
		{"", 42},
		{"", 0},
		{long + "a", 42}, // differs from the next only past ContextLen bytes
		{long + "b", 42},
	}
	// With 0 steps the latent is the noise alone: only the seed shows.
	for _, steps := range []int{0, 20} {
		seen := map[string]int{}
		for i, c := range cases {
			if steps == 0 && c.prompt != cases[0].prompt {
				continue
			}
			k := string(mustReference(t, p, c.prompt, c.seed, steps))
			if j, ok := seen[k]; ok {
				t.Errorf("steps %d: case %d (%q, %d) gives the same GIF as case %d (%q, %d)",
					steps, i, c.prompt, c.seed, j, cases[j].prompt, cases[j].seed)
			}
			seen[k] = i
		}
	}
}

func TestDenoiseSteps(t *testing.T) {
	p := DefaultParams()
	cond, noise := Encode(p, "steps", 7)

	latent := slices.Clone(noise)
	if err := Denoise(context.Background(), p, cond, latent, 0); err != nil {
		t.Fatalf("steps 0: %v", err)
	}
	if !slices.Equal(latent, noise) {
		t.Fatal("steps 0 changed the latent")
	}

	if err := Denoise(context.Background(), p, cond, latent, -1); !errors.Is(err, ErrBadSteps) {
		t.Fatalf("steps -1: err = %v, want ErrBadSteps", err)
	}
	if _, err := Reference(context.Background(), p, "x", 1, -1); !errors.Is(err, ErrBadSteps) {
		t.Fatalf("Reference steps -1: err = %v, want ErrBadSteps", err)
	}

	// More steps end closer to the target: the distance to the 1000-step
	// latent shrinks as steps grow.
	far := slices.Clone(noise)
	if err := Denoise(context.Background(), p, cond, far, 1000); err != nil {
		t.Fatal(err)
	}
	prev := dist(noise, far)
	for _, steps := range []int{1, 5, 50} {
		l := slices.Clone(noise)
		if err := Denoise(context.Background(), p, cond, l, steps); err != nil {
			t.Fatal(err)
		}
		d := dist(l, far)
		if d >= prev {
			t.Errorf("steps %d: distance to the converged latent %g, not below %g", steps, d, prev)
		}
		prev = d
	}
}

func dist(a, b []float32) float64 {
	var s float64
	for i := range a {
		d := float64(a[i] - b[i])
		s += d * d
	}
	return s
}

func TestDenoiseBadLengths(t *testing.T) {
	p := DefaultParams()
	cond, latent := Encode(p, "x", 1)
	tests := []struct {
		name         string
		cond, latent []float32
		wantErr      string
	}{
		{"short context", cond[1:], latent, "context has 1023 values, want 1024 for context:float32[16 64]"},
		{"long latent", cond, append(slices.Clone(latent), 0), "latent has 24577 values, want 24576 for latent:float32[4 8 24 32]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Denoise(context.Background(), p, tt.cond, tt.latent, 1)
			if !errors.Is(err, ErrBadLength) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrBadLength containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := Decode(p, latent[:10]); !errors.Is(err, ErrBadLength) {
		t.Fatalf("Decode short latent: err = %v, want ErrBadLength", err)
	}
	bad := p
	bad.Channels = 2
	if err := Denoise(context.Background(), bad, cond, latent, 1); err == nil {
		t.Fatal("Denoise with 2 channels: no error")
	}
}

func TestDenoiseCancel(t *testing.T) {
	demo := DefaultParams()
	big, err := ParseParams(wan)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		p      Params
		cancel time.Duration // -1: cancelled before the call
	}{
		{"demo, cancelled before", demo, -1},
		{"demo, cancelled during", demo, 20 * time.Millisecond},
		{"wan, cancelled before", big, -1},
		{"wan, cancelled during", big, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cond, latent := Encode(tt.p, "cancel", 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel < 0 {
				cancel()
			} else {
				timer := time.AfterFunc(tt.cancel, cancel)
				defer timer.Stop()
			}
			done := make(chan error, 1)
			var cancelledAt time.Time
			go func() { done <- Denoise(ctx, tt.p, cond, latent, 1<<30) }()
			select {
			case err := <-done:
				if err != context.Canceled {
					t.Fatalf("err = %v, want context.Canceled", err)
				}
			case <-ctx.Done():
				cancelledAt = time.Now()
				select {
				case err := <-done:
					if err != context.Canceled {
						t.Fatalf("err = %v, want context.Canceled", err)
					}
					// Generous for -race on a shared 2-core machine; the
					// benchmark shows a Wan-size channel takes well under 1 ms.
					if d := time.Since(cancelledAt); d > 2*time.Second {
						t.Errorf("returned %v after cancel", d)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("Denoise did not return within 30s of cancel")
				}
			}
		})
	}
}

func TestDecodeGIF(t *testing.T) {
	small := DefaultParams()
	small.Frames, small.Height, small.Width, small.Scale, small.Delay = 1, 3, 5, 1, 7
	for _, p := range []Params{DefaultParams(), small} {
		b := mustReference(t, p, "decode me", 3, 4)
		g, err := gif.DecodeAll(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%+v: gif.DecodeAll: %v", p, err)
		}
		if len(g.Image) != p.Frames {
			t.Fatalf("%d frames, want %d", len(g.Image), p.Frames)
		}
		wantLoop := 0
		if p.Frames == 1 {
			wantLoop = -1 // no loop extension in a still GIF
		}
		if g.LoopCount != wantLoop {
			t.Errorf("LoopCount = %d, want %d", g.LoopCount, wantLoop)
		}
		if g.Config.Width != p.Width*p.Scale || g.Config.Height != p.Height*p.Scale {
			t.Errorf("screen %dx%d, want %dx%d", g.Config.Width, g.Config.Height, p.Width*p.Scale, p.Height*p.Scale)
		}
		for i, img := range g.Image {
			if b := img.Bounds(); b.Dx() != p.Width*p.Scale || b.Dy() != p.Height*p.Scale {
				t.Errorf("frame %d is %v, want %dx%d", i, b, p.Width*p.Scale, p.Height*p.Scale)
			}
			if g.Delay[i] != p.Delay {
				t.Errorf("frame %d delay %d, want %d", i, g.Delay[i], p.Delay)
			}
			// Nearest-neighbour upsampling: every Scale×Scale block is one colour.
			for y := 0; y < p.Height*p.Scale; y++ {
				for x := 0; x < p.Width*p.Scale; x++ {
					if img.ColorIndexAt(x, y) != img.ColorIndexAt(x-x%p.Scale, y-y%p.Scale) {
						t.Fatalf("frame %d: pixel (%d,%d) differs from its block's corner", i, x, y)
					}
				}
			}
		}
	}
}

// TestDecodeChannels checks the colour mapping end to end: a latent of
// constant channels decodes to the expected palette colour.
func TestDecodeChannels(t *testing.T) {
	p := DefaultParams()
	p.Frames, p.Height, p.Width, p.Scale = 1, 2, 2, 1
	tests := []struct {
		r, g, b float32
		want    color.RGBA
	}{
		{-100, -100, -100, color.RGBA{0, 0, 0, 255}},
		{100, 100, 100, color.RGBA{255, 255, 255, 255}},
		{100, -100, -100, color.RGBA{255, 0, 0, 255}},
		{0, 0, 0, color.RGBA{124, 124, 124, 255}},    // level 127: the nearest gray is round(20*255/41)
		{100, 0, -100, color.RGBA{255, 102, 0, 255}}, // levels 254, 127, 0: cube (5, 2, 0)
	}
	for _, tt := range tests {
		latent := make([]float32, p.latentLen())
		plane := p.Frames * p.Height * p.Width
		for i := range plane {
			latent[i], latent[plane+i], latent[2*plane+i] = tt.r, tt.g, tt.b
			latent[3*plane+i] = 99 // channel 3 is ignored
		}
		b, err := Decode(p, latent)
		if err != nil {
			t.Fatal(err)
		}
		g, err := gif.DecodeAll(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		got := color.RGBAModel.Convert(g.Image[0].At(1, 1)).(color.RGBA)
		if got != tt.want {
			t.Errorf("(%g,%g,%g) decodes to %v, want %v", tt.r, tt.g, tt.b, got, tt.want)
		}
	}
}

func TestNearestMatchesPaletteIndex(t *testing.T) {
	if len(palette) != 256 {
		t.Fatalf("palette has %d colours", len(palette))
	}
	seen := map[color.Color]bool{}
	for _, c := range palette {
		if seen[c] {
			t.Fatalf("colour %v twice in the palette", c)
		}
		seen[c] = true
	}
	check := func(r, g, b uint8) {
		if got, want := int(nearest(r, g, b)), palette.Index(color.RGBA{r, g, b, 255}); got != want {
			t.Fatalf("nearest(%d,%d,%d) = %d, palette.Index = %d", r, g, b, got, want)
		}
	}
	for v := range 256 {
		check(uint8(v), uint8(v), uint8(v))
		check(uint8(v), 0, uint8(255-v))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		check(uint8(rng.UintN(256)), uint8(rng.UintN(256)), uint8(rng.UintN(256)))
	}
}

func TestEncodePanicsOnInvalidParams(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Encode with zero Params did not panic")
		}
	}()
	Encode(Params{}, "x", 1)
}

func benchmarkReference(b *testing.B, p Params, steps int) {
	for b.Loop() {
		if _, err := Reference(context.Background(), p, "a red fox in the snow", 42, steps); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReferenceDemo20(b *testing.B) { benchmarkReference(b, DefaultParams(), 20) }

func wanParams(b *testing.B) Params {
	p, err := ParseParams(wan)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func BenchmarkReferenceWan4(b *testing.B) { benchmarkReference(b, wanParams(b), 4) }

func BenchmarkEncodeWan(b *testing.B) {
	p := wanParams(b)
	for b.Loop() {
		Encode(p, "a red fox in the snow", 42)
	}
}

func BenchmarkDenoiseWanStep(b *testing.B) {
	p := wanParams(b)
	cond, latent := Encode(p, "a red fox in the snow", 42)
	for b.Loop() {
		if err := Denoise(context.Background(), p, cond, latent, 1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeWan(b *testing.B) {
	p := wanParams(b)
	_, latent := Encode(p, "a red fox in the snow", 42)
	for b.Loop() {
		if _, err := Decode(p, latent); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDenoiseEach: the step callback sees 1..steps of steps, and the
// latent is Denoise's, bit for bit.
func TestDenoiseEach(t *testing.T) {
	p := DefaultParams()
	cond, noise := Encode(p, "each", 3)
	want := slices.Clone(noise)
	if err := Denoise(context.Background(), p, cond, want, 4); err != nil {
		t.Fatal(err)
	}
	got := slices.Clone(noise)
	var steps [][2]int
	if err := DenoiseEach(context.Background(), p, cond, got, 4, func(done, total int) {
		steps = append(steps, [2]int{done, total})
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatal("DenoiseEach's latent differs from Denoise's")
	}
	if fmt.Sprint(steps) != "[[1 4] [2 4] [3 4] [4 4]]" {
		t.Fatalf("steps reported %v, want 1..4 of 4", steps)
	}
}

// TestDenoiseFrom: the latent after k steps, refined on from k, is the
// uninterrupted run's, bit for bit, for every k; out-of-range k fail.
func TestDenoiseFrom(t *testing.T) {
	p := DefaultParams()
	cond, noise := Encode(p, "resume", 3)
	const steps = 6
	var after [steps + 1][]float32 // the latent after each step
	whole := slices.Clone(noise)
	after[0] = slices.Clone(noise)
	if err := DenoiseEach(context.Background(), p, cond, whole, steps, func(done, _ int) { after[done] = slices.Clone(whole) }); err != nil {
		t.Fatal(err)
	}
	for k := 0; k <= steps; k++ {
		l := slices.Clone(after[k])
		var calls []int
		if err := DenoiseFrom(context.Background(), p, cond, l, k, steps, func(done, _ int) { calls = append(calls, done) }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(l, whole) {
			t.Fatalf("resumed after step %d: the latent differs", k)
		}
		if len(calls) != steps-k || (k < steps && calls[0] != k+1) {
			t.Fatalf("resumed after step %d: step called with %v", k, calls)
		}
	}
	for _, k := range []int{-1, steps + 1} {
		if err := DenoiseFrom(context.Background(), p, cond, slices.Clone(noise), k, steps, nil); !errors.Is(err, ErrBadSteps) {
			t.Fatalf("from %d: %v, want ErrBadSteps", k, err)
		}
	}
}
