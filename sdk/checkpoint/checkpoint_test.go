package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/phased/phased/sdk/tensor"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.ckpt")

// golden is the checkpoint of testdata/golden.ckpt, which the Python
// SDK's tests read and write too (sdk/python/tests/test_checkpoint.py).
func golden(t *testing.T) (Header, []tensor.Tensor) {
	t.Helper()
	lat, err := tensor.FromFloat32("latent", []int64{2, 3}, []float32{0, 1, 2, 3, 4, -0.5})
	if err != nil {
		t.Fatal(err)
	}
	ids := tensor.Tensor{Spec: tensor.Spec{Name: "rng", DType: tensor.Int64, Shape: []int64{2}}, Data: make([]byte, 16)}
	binary.LittleEndian.PutUint64(ids.Data, 7)
	binary.LittleEndian.PutUint64(ids.Data[8:], 1<<63+5)
	return Header{Request: "r000001", Step: 15, Total: 20, Inputs: []uint64{1, 1<<64 - 1}}, []tensor.Tensor{lat, ids}
}

func TestGolden(t *testing.T) {
	h, state := golden(t)
	path := filepath.Join(t.TempDir(), "transformer.ckpt")
	if err := Write(path, h, state); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("testdata/golden.ckpt", got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/golden.ckpt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Write's bytes differ from testdata/golden.ckpt (go test -update rewrites it):\n got %q\nwant %q", got, want)
	}
	wantHead := `{"request":"r000001","step":15,"total":20,"inputs":[1,18446744073709551615],"tensors":[{"name":"latent","dtype":1,"shape":[2,3],"checksum":`
	if !bytes.Contains(got, []byte(wantHead)) {
		t.Fatalf("header is not %s…: %q", wantHead, got)
	}
	rh, rs, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if rh.Request != h.Request || rh.Step != 15 || rh.Total != 20 || len(rh.Inputs) != 2 || rh.Inputs[1] != 1<<64-1 {
		t.Fatalf("header %+v", rh)
	}
	if len(rs) != 2 || !bytes.Equal(rs[0].Data, state[0].Data) || !bytes.Equal(rs[1].Data, state[1].Data) || !rs[1].Spec.Equal(state[1].Spec) {
		t.Fatalf("tensors %+v, want %+v", rs, state)
	}
	if err := Check(rh, "r000001", 20, []uint64{1, 1<<64 - 1}); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("the directory holds %d files, want the checkpoint alone (no temporary file left)", len(entries))
	}
}

func TestWriteReplaces(t *testing.T) {
	h, state := golden(t)
	path := filepath.Join(t.TempDir(), "c.ckpt")
	if err := Write(path, h, state); err != nil {
		t.Fatal(err)
	}
	h.Step = 16
	if err := Write(path, h, state[:1]); err != nil {
		t.Fatal(err)
	}
	rh, rs, err := Read(path)
	if err != nil || rh.Step != 16 || len(rs) != 1 {
		t.Fatalf("after a second Write: %+v, %d tensors, %v", rh, len(rs), err)
	}
	// Into a directory that is gone (the request ended): an error, no file.
	gone := filepath.Join(t.TempDir(), "gone")
	if err := Write(filepath.Join(gone, "c.ckpt"), h, state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Write into a missing directory: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Write made the missing directory: %v", err)
	}
	if _, _, err := Read(filepath.Join(gone, "c.ckpt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read of a missing file: %v, want ErrNotExist", err)
	}
}

func TestCheck(t *testing.T) {
	h := Header{Request: "r1", Step: 5, Total: 20, Inputs: []uint64{3}}
	for _, c := range []struct {
		request string
		total   int
		inputs  []uint64
		want    string
	}{
		{"r2", 20, []uint64{3}, "it is request r1's, not r2's"},
		{"r1", 10, []uint64{3}, "saved by a Run of 20 steps, not 10"},
		{"r1", 20, []uint64{4}, "with other inputs"},
		{"r1", 20, nil, "with other inputs"},
	} {
		err := Check(h, c.request, c.total, c.inputs)
		if !errors.Is(err, ErrBad) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%s, %d, %v) = %v, want %q", c.request, c.total, c.inputs, err, c.want)
		}
	}
}

func TestDue(t *testing.T) {
	var got []int
	for s := range 21 {
		if Due(s, 20, 5) {
			got = append(got, s)
		}
	}
	if len(got) != 3 || got[0] != 5 || got[1] != 10 || got[2] != 15 {
		t.Fatalf("due after %v of 20 every 5, want [5 10 15]", got)
	}
	if Due(5, 20, 0) || Due(0, 20, 1) || Due(20, 20, 1) {
		t.Fatal("due with every 0, at step 0, or at the last step")
	}
}

// TestReadBad: every way a file can be wrong is an ErrBad that says
// what, and nothing panics.
func TestReadBad(t *testing.T) {
	h, state := golden(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := Write(good, h, state); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	n := int(binary.LittleEndian.Uint32(b[8:12]))
	head := string(b[12 : 12+n])
	withHead := func(s string) []byte {
		out := append([]byte(Magic), 0, 0, 0, 0)
		binary.LittleEndian.PutUint32(out[8:], uint32(len(s)))
		return append(append(out, s...), b[12+n:]...)
	}
	flip := bytes.Clone(b)
	flip[len(flip)-1] ^= 1
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "shorter than the magic"},
		{"magic", append([]byte("PHDCKPT2"), b[8:]...), "no PHDCKPT1 magic"},
		{"header length", append(append([]byte(Magic), 0xff, 0xff, 0xff, 0x7f), b[12:]...), "header length"},
		{"truncated", b[:len(b)-1], "but its header describes"},
		{"longer", append(bytes.Clone(b), 0), "but its header describes"},
		{"checksum", flip, `tensor "rng": checksum`},
		{"not json", withHead(strings.Repeat("x", n)), "header: invalid character"},
		{"unknown key", withHead(strings.Replace(head, `"step"`, `"stop"`, 1)), `unknown field "stop"`},
		{"missing key", withHead(strings.Replace(head, `"inputs":[1,18446744073709551615],`, "", 1)), `no "inputs"`},
		{"step", withHead(strings.Replace(head, `"step":15`, `"step":20`, 1)), "step 20 of 20"},
		{"negative step", withHead(strings.Replace(head, `"step":15`, `"step":-1`, 1)), "step -1 of 20"},
		{"dtype", withHead(strings.Replace(head, `"dtype":1`, `"dtype":99`, 1)), "unknown dtype 99"},
		{"shape", withHead(strings.Replace(head, `"shape":[2,3]`, `"shape":[-2,3]`, 1)), "negative dimension"},
		{"huge shape", withHead(strings.Replace(head, `"shape":[2,3]`, `"shape":[1099511627776,1099511627776]`, 1)), "exceeds"},
		{"checksum overflow", withHead(strings.Replace(head, `18446744073709551615`, `18446744073709551616`, 1)), "header:"},
		{"trailing", withHead(head + "{}"), "data after the JSON object"},
		{"key case", withHead(strings.Replace(head, `"total":20`, `"total":20,"Step":3`, 1)), `unknown key "Step"`},
		{"null", withHead(strings.Replace(head, `"inputs":[1,18446744073709551615]`, `"inputs":null`, 1)), `"inputs" is null`},
		{"tensor key", withHead(strings.Replace(head, `"dtype":5`, `"DType":5`, 1)), `tensor 1: no "dtype"`},
		{"tensor null", withHead(strings.Replace(head, `"shape":[2]`, `"shape":null`, 1)), `tensor 1: "shape" is null`},
	} {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, c.data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := Read(p)
		if !errors.Is(err, ErrBad) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Read = %v, want ErrBad saying %q", c.name, err, c.want)
		}
	}
	if _, _, err := Read(dir); !errors.Is(err, ErrBad) {
		t.Errorf("Read of a directory: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Read(fifo); !errors.Is(err, ErrBad) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Read of a FIFO (no writer: it must not block): %v", err)
	}
}

func FuzzRead(f *testing.F) {
	if b, err := os.ReadFile("testdata/golden.ckpt"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(Magic + "\x02\x00\x00\x00{}"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		h, ts, err := Read(p)
		if err != nil {
			if !errors.Is(err, ErrBad) {
				t.Fatalf("an error that is not ErrBad: %v", err)
			}
			return
		}
		if h.Step <= 0 || h.Step >= h.Total || len(ts) != len(h.Tensors) {
			t.Fatalf("accepted %+v with %d tensors", h, len(ts))
		}
	})
}
