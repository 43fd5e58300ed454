package tensor

import (
	"errors"
	"strings"
	"testing"

	"github.com/zeebo/xxh3"
)

func TestNumBytes(t *testing.T) {
	tests := []struct {
		spec Spec
		want int64
		err  string
	}{
		{Spec{"a", Float32, []int64{2, 3}}, 24, ""},
		{Spec{"s", Float32, nil}, 4, ""},
		{Spec{"z", Uint8, []int64{0, 7}}, 0, ""},
		{Spec{"h", Float16, []int64{5}}, 10, ""},
		{Spec{"i", Int64, []int64{3}}, 24, ""},
		{Spec{"w", Float32, []int64{512, 4096}}, 8 << 20, ""},
		{Spec{"bad", Invalid, []int64{1}}, 0, `tensor "bad": unknown dtype 0`},
		{Spec{"bad", DType(99), []int64{1}}, 0, `tensor "bad": unknown dtype 99`},
		{Spec{"neg", Float32, []int64{2, -1}}, 0, `tensor "neg": negative dimension -1`},
		{Spec{"big", Float32, []int64{1 << 31, 1 << 31}}, 0, "exceeds 1099511627776 bytes"},
		{Spec{"ovf", Uint8, []int64{1 << 62, 1 << 62, 4}}, 0, "exceeds"},
	}
	for _, tt := range tests {
		got, err := tt.spec.NumBytes()
		if tt.err != "" {
			if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: error %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %d, %v; want %d", tt.spec, got, err, tt.want)
		}
	}
}

func TestFromFloat32AndValidate(t *testing.T) {
	x, err := FromFloat32("x", []int64{2, 2}, []float32{1, 2, 3, 4})
	if err != nil {
		t.Fatal(err)
	}
	if got := x.Float32s(); len(got) != 4 || got[3] != 4 {
		t.Fatalf("Float32s %v", got)
	}
	if x.Data[0] != 0 || x.Data[3] != 0x3f { // 1.0f little-endian: 00 00 80 3f
		t.Fatalf("bytes % x, want little-endian float32", x.Data[:4])
	}
	if err := x.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := FromFloat32("x", []int64{3}, []float32{1}); err == nil || !strings.Contains(err.Error(), "1 values for shape [3]") {
		t.Fatalf("error %v", err)
	}
	bad := Tensor{Spec: x.Spec, Data: x.Data[:5]}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "5 bytes of data for x:float32[2 2] (16 bytes)") {
		t.Fatalf("Validate: %v", err)
	}
	if (Tensor{Spec: Spec{"u", Uint8, []int64{4}}, Data: make([]byte, 4)}).Float32s() != nil {
		t.Fatal("Float32s of a uint8 tensor is not nil")
	}
}

func TestSpecEqualAndChecksum(t *testing.T) {
	a := Spec{"a", Float32, []int64{2, 3}}
	for _, b := range []Spec{{"b", Float32, []int64{2, 3}}, {"a", Float16, []int64{2, 3}}, {"a", Float32, []int64{3, 2}}, {"a", Float32, []int64{6}}} {
		if a.Equal(b) {
			t.Errorf("%s equals %s", a, b)
		}
	}
	if !a.Equal(Spec{"a", Float32, []int64{2, 3}}) {
		t.Error("equal specs differ")
	}
	// XXH3-64 with seed 0 of "" and of "123456789" (reference values).
	if got := Checksum(nil); got != 0x2d06800538d394c2 {
		t.Fatalf("Checksum(nil) = %#x, want 0x2d06800538d394c2", got)
	}
	if a, b := Checksum([]byte("123456789")), Checksum([]byte("123456788")); a == b {
		t.Fatalf("one changed byte gives the same checksum %#x", a)
	}
	if Float32.String() != "float32" || DType(42).String() != "dtype(42)" {
		t.Fatal("dtype names")
	}
}

func TestChecksumBlocks(t *testing.T) {
	b := make([]byte, 2*ChecksumBlock+100)
	for i := range b {
		b[i] = byte(i * 31)
	}
	// Up to one block, Checksum is the plain XXH3-64.
	if got, want := Checksum(b[:ChecksumBlock]), xxh3.Hash(b[:ChecksumBlock]); got != want {
		t.Fatalf("one block: %#x, want plain XXH3 %#x", got, want)
	}
	// Beyond, each block is seeded with the previous result.
	want := xxh3.HashSeed(b[2*ChecksumBlock:], xxh3.HashSeed(b[ChecksumBlock:2*ChecksumBlock], xxh3.Hash(b[:ChecksumBlock])))
	if got := Checksum(b); got != want {
		t.Fatalf("three blocks: %#x, want %#x", got, want)
	}
	var c Chain
	for off := 0; off < len(b); off += ChecksumBlock {
		c.Block(b[off:min(off+ChecksumBlock, len(b))])
	}
	if c.Sum() != want {
		t.Fatalf("Chain: %#x, want %#x", c.Sum(), want)
	}
	// A change in a later block, or moving bytes between blocks, changes it.
	b[ChecksumBlock+7]++
	if Checksum(b) == want {
		t.Fatal("a byte changed in the second block keeps the checksum")
	}
	b[ChecksumBlock+7]--
	if Checksum(b[:len(b)-1]) == want {
		t.Fatal("a shorter tensor has the same checksum")
	}
}
