// Command golden writes examples/toy-python/testdata/golden.json: the
// SHA-256 of what the Go model (plugins/model) computes for a set of
// cases, and the exact errors of ParseParams for bad params, so that the
// Python port (examples/toy-python/toymodel.py) is checked against the Go
// code without Go at test time.
//
// Regenerate, from the repository root, after an intended change to the
// model:
//
//	go run ./examples/toy-python/golden > examples/toy-python/testdata/golden.json
//
// With -gifs DIR it also writes each case's GIF to DIR/NAME.gif (for
// debugging a mismatch); with -time it only prints how long Encode,
// Denoise (20 steps) and Decode take with the default params.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/phased/phased/plugins/model"
)

// A modelCase runs Encode, Denoise (steps) and Decode. When BitsSeed is
// set, the context and the latent given to Denoise are instead raw float32
// bit patterns (NaN, infinities, subnormals, huge values...) from
// bitsStream, the context first.
type modelCase struct {
	Name     string            `json:"name"`
	Params   map[string]string `json:"params"`
	Prompt   string            `json:"prompt"`
	Repeat   int               `json:"prompt_repeat,omitempty"` // the prompt is Prompt repeated Repeat times
	Seed     int64             `json:"seed"`
	Steps    int               `json:"steps"`
	BitsSeed uint64            `json:"bits_seed,omitempty"`

	Context  string `json:"context_sha256"`  // encoded context (float32 little-endian)
	Latent   string `json:"latent_sha256"`   // encoded (or bits) latent
	Denoised string `json:"denoised_sha256"` // latent after Denoise
	GIF      string `json:"gif_sha256"`      // Decode of the denoised latent
	GIFLen   int    `json:"gif_len"`
}

type paramCase struct {
	Params   map[string]string `json:"params"`
	Error    string            `json:"error"`    // "" when valid
	Problems [][2]string       `json:"problems"` // ParamProblems: [param, message]
}

type golden struct {
	Comment string      `json:"comment"`
	Cases   []modelCase `json:"cases"`
	Params  []paramCase `json:"params"`
}

const golden64 = 0x9e3779b97f4a7c15

func mix(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// bitsStream returns n float32s whose bits are the low 32 bits of
// splitmix64's stream from seed: value i is mix(seed + (i+1)*φ).
func bitsStream(seed uint64, n int) []float32 {
	out := make([]float32, n)
	s := seed
	for i := range out {
		s += golden64
		out[i] = math.Float32frombits(uint32(mix(s)))
	}
	return out
}

func sum(f []float32) string {
	b := make([]byte, 4*len(f))
	for i, v := range f {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func main() {
	gifs := flag.String("gifs", "", "also write each case's GIF to this directory")
	timing := flag.Bool("time", false, "print the time of Encode, Denoise (20 steps) and Decode with the default params, and exit")
	flag.Parse()
	if *timing {
		timeDemo()
		return
	}

	long := strings.Repeat("a long prompt, longer than context_len; ", 7) + "fin"
	cases := []modelCase{
		{Name: "demo", Prompt: "a red fox in the snow", Seed: 42, Steps: 20},
		{Name: "empty", Prompt: "", Seed: 0, Steps: 0},
		{Name: "one-step", Prompt: "x", Seed: 1, Steps: 1},
		{Name: "utf8-negative-seed", Prompt: "renard roux 🦊 sous la neige, ça gèle — ünïcödé", Seed: -7, Steps: 5},
		{Name: "long-prompt", Prompt: long, Seed: math.MinInt64, Steps: 3},
		{Name: "very-long-prompt", Params: map[string]string{"context_len": "7"}, Prompt: "fox 🦊 ", Repeat: 3001, Seed: -3, Steps: 2},
		{Name: "long-prompt-long-context", Params: map[string]string{"context_len": "40", "context_dim": "10"}, Prompt: long, Seed: math.MaxInt64, Steps: 9},
		{Name: "odd-sizes", Params: map[string]string{"context_len": "5", "context_dim": "7", "channels": "5", "frames": "3", "height": "7", "width": "11", "scale": "3", "delay": "1"}, Prompt: "odd ✓", Seed: -1, Steps: 7},
		{Name: "single-frame", Params: map[string]string{"frames": "1", "context_dim": "3", "context_len": "1"}, Prompt: "one", Seed: 123456789, Steps: 4},
		{Name: "tiny", Params: map[string]string{"context_len": "1", "context_dim": "1", "channels": "3", "frames": "2", "height": "1", "width": "1", "scale": "1", "delay": "65535"}, Prompt: "tiny", Seed: 5, Steps: 2},
		{Name: "many-steps", Params: map[string]string{"frames": "2", "height": "6", "width": "6", "context_dim": "13"}, Prompt: "many steps", Seed: 99, Steps: 300},
		// Noise decoded at scale 1: enough distinct strings for the LZW
		// table to fill up and be cleared several times per frame.
		{Name: "noise-lzw-reset", Params: map[string]string{"frames": "2", "height": "96", "width": "128", "scale": "1"}, Prompt: "noise", Seed: 2024, Steps: 0},
		{Name: "noise-scale2", Params: map[string]string{"frames": "3", "height": "40", "width": "50", "scale": "2", "channels": "3"}, Prompt: "noise 2", Seed: -2024, Steps: 1},
		{Name: "pipeline-python", Params: map[string]string{"height": "64", "width": "64"}, Prompt: "all python", Seed: 0, Steps: 2},
		{Name: "wan21", Params: map[string]string{"context_len": "512", "context_dim": "4096", "channels": "16", "frames": "21", "height": "60", "width": "104"}, Prompt: "a red fox in the snow", Seed: 42, Steps: 4},
		{Name: "conformance", Params: map[string]string{"context_len": "4", "context_dim": "8", "channels": "3", "frames": "2", "height": "4", "width": "6", "scale": "2"}, Prompt: "a fox", Seed: 3, Steps: 2},
		// Raw bit patterns: NaN, ±Inf, subnormals and huge values through
		// Denoise and Decode.
		{Name: "bits", Params: map[string]string{"context_len": "6", "context_dim": "9", "frames": "2", "height": "8", "width": "9", "scale": "2"}, Seed: 0, Steps: 3, BitsSeed: 77},
		{Name: "bits-nodenoise", Params: map[string]string{"frames": "2", "height": "16", "width": "16", "scale": "1"}, Seed: 0, Steps: 0, BitsSeed: 0xdeadbeef},
	}
	for i := range cases {
		c := &cases[i]
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		p, err := model.ParseParams(c.Params)
		if err != nil {
			fail(c.Name, err)
		}
		prompt := c.Prompt
		if c.Repeat > 0 {
			prompt = strings.Repeat(prompt, c.Repeat)
		}
		cond, latent := model.Encode(p, prompt, c.Seed)
		c.Context = sum(cond)
		if c.BitsSeed != 0 {
			bits := bitsStream(c.BitsSeed, len(cond)+len(latent))
			cond, latent = bits[:len(cond)], bits[len(cond):]
		}
		c.Latent = sum(latent)
		if err := model.Denoise(context.Background(), p, cond, latent, c.Steps); err != nil {
			fail(c.Name, err)
		}
		c.Denoised = sum(latent)
		g, err := model.Decode(p, latent)
		if err != nil {
			fail(c.Name, err)
		}
		s := sha256.Sum256(g)
		c.GIF, c.GIFLen = hex.EncodeToString(s[:]), len(g)
		if *gifs != "" {
			if err := os.WriteFile(filepath.Join(*gifs, c.Name+".gif"), g, 0o644); err != nil {
				fail(c.Name, err)
			}
		}
	}

	var params []paramCase
	for _, m := range []map[string]string{
		{},
		{"frames": "3", "height": "8", "width": "12"},
		{"Frames": "3"},
		{"steps": "3"},
		{"frame": "3", "zzz": "1"},
		{"channels": "two"},
		{"channels": ""},
		{"channels": " 3"},
		{"channels": "3 "},
		{"channels": "+3"},
		{"channels": "-3"},
		{"channels": "0x10"},
		{"channels": "1_000"},
		{"channels": "٣"},
		{"channels": "3.0"},
		{"channels": "99999999999999999999"},
		{"channels": "9223372036854775807"},
		{"channels": "-9223372036854775808"},
		{"channels": "2"},
		{"channels": "007"},
		{"height": "-04"},
		{"scale": "0"},
		{"delay": "65535"},
		{"delay": "65536"},
		{"width": "16384", "scale": "4"},
		{"width": "16383", "scale": "4", "height": "1", "frames": "1"},
		{"height": "65536", "scale": "1"},
		{"context_len": "65536", "context_dim": "8192"},
		{"context_len": "65536", "context_dim": "8193"},
		{"height": "8192", "width": "8192", "channels": "3", "frames": "1", "scale": "7"},
		{"channels": "4", "frames": "8192", "height": "128", "width": "128"},
		{"frames": "32768", "height": "256", "width": "256", "scale": "1"},
		{"frames": "1", "height": "65535", "width": "65535", "scale": "1"},
		{"width": "x", "channels": "y"},
		{"delay": "0", "width": "0"},
		{"channels": "a\"b\\c\n\t\x01\u00e9\u200b\U0001F98A"},
		{"sc\u00e4le": "1"},
		{"fraems": "3", "width": "x", "stpes": "3", "height": "-2"},
		{"Frames": "3", "hieght": "1", "context_length": "2", "context": "4", "cont": "5", "w": "6"},
		{"channels": "2", "delay": "65536", "scale": "40000"},
		{"width": "20000", "height": "20000", "scale": "4", "frames": "abc"},
	} {
		pc := paramCase{Params: m, Problems: [][2]string{}}
		if _, err := model.ParseParams(m); err != nil {
			pc.Error = err.Error()
		}
		for _, p := range model.ParamProblems(m) {
			pc.Problems = append(pc.Problems, [2]string{p.Param, p.Message})
		}
		params = append(params, pc)
	}

	out := golden{
		Comment: "generated by `go run ./examples/toy-python/golden > examples/toy-python/testdata/golden.json`; do not edit",
		Cases:   cases,
		Params:  params,
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fail("json", err)
	}
}

// timeDemo prints the best of 20 runs of each function on the demo.
func timeDemo() {
	p := model.DefaultParams()
	best := [3]time.Duration{1 << 62, 1 << 62, 1 << 62}
	for range 20 {
		t0 := time.Now()
		cond, latent := model.Encode(p, "a red fox in the snow", 42)
		t1 := time.Now()
		if err := model.Denoise(context.Background(), p, cond, latent, 20); err != nil {
			fail("denoise", err)
		}
		t2 := time.Now()
		if _, err := model.Decode(p, latent); err != nil {
			fail("decode", err)
		}
		t3 := time.Now()
		for i, d := range []time.Duration{t1.Sub(t0), t2.Sub(t1), t3.Sub(t2)} {
			best[i] = min(best[i], d)
		}
	}
	fmt.Printf("go: encode %v, denoise (20 steps) %v, decode %v\n", best[0], best[1], best[2])
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "golden: %s: %v\n", what, err)
	os.Exit(1)
}
