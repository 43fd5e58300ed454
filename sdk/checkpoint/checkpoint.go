// Package checkpoint reads and writes the checkpoint file of a denoising
// phase: its state after some step of one request, kept outside the
// process that wrote it, so that a Run of the request's next attempt, on
// any instance, resumes from it (docs/protocol.md section 8.4).
//
// The file is 8 bytes of magic ("PHDCKPT1"), a little-endian uint32
// header length H, H bytes of JSON header, then each tensor's bytes back
// to back. Write replaces a file atomically (a temporary file in the
// same directory, renamed over it); Read trusts nothing in it.
//
// Phase authors do not use this package: they call sdk.Checkpoint and
// sdk.Resume, and the phase runtime calls it.
package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/phased/phased/sdk/tensor"
)

// Magic opens every checkpoint file.
const Magic = "PHDCKPT1"

// Limits on what Read accepts.
const (
	// MaxHeader is the largest header, in bytes.
	MaxHeader = 64 << 10
	// MaxTensors is the most tensors one checkpoint holds.
	MaxTensors = 64
	// prefixLen is the magic and the header length.
	prefixLen = 12 // len(Magic) + 4
)

// ErrBad is wrapped by every error about a file that is not a checkpoint
// this Run may resume from: malformed, truncated, of another request, of
// other inputs, or corrupt.
var ErrBad = errors.New("bad checkpoint")

// Header is what a checkpoint says about itself.
type Header struct {
	Request string `json:"request"` // the request id
	Step    int    `json:"step"`    // the steps done when it was saved, 0 < Step < Total
	Total   int    `json:"total"`   // the Run's steps in all
	// Inputs are the checksums (tensor.Checksum) of the Run's inputs, in
	// order: a retry whose inputs differ does not resume.
	Inputs  []uint64      `json:"inputs"`
	Tensors []TensorEntry `json:"tensors"`
}

// TensorEntry is one saved tensor's spec and checksum.
type TensorEntry struct {
	Name     string       `json:"name"`
	DType    tensor.DType `json:"dtype"`
	Shape    []int64      `json:"shape"`
	Checksum uint64       `json:"checksum"`
}

// Write saves state as the checkpoint at path: a temporary file in
// path's directory (which must exist: it is not made), created
// exclusively with mode 0600, then renamed over path. h's Tensors are
// filled from state; the other fields are the caller's. It does not
// fsync: the file has to outlive a process, not the machine.
func Write(path string, h Header, state []tensor.Tensor) error {
	if len(state) > MaxTensors {
		return fmt.Errorf("checkpoint: %d tensors, at most %d", len(state), MaxTensors)
	}
	h.Tensors = make([]TensorEntry, len(state))
	for i, t := range state {
		if t.OnDevice() {
			return fmt.Errorf("checkpoint: tensor %q is in GPU memory: copy it to the host first", t.Name)
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
		h.Tensors[i] = TensorEntry{Name: t.Name, DType: t.DType, Shape: t.Shape, Checksum: tensor.Checksum(t.Data)}
	}
	if h.Inputs == nil {
		h.Inputs = []uint64{}
	}
	for i := range h.Tensors {
		if h.Tensors[i].Shape == nil {
			h.Tensors[i].Shape = []int64{}
		}
	}
	head, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if len(head) > MaxHeader {
		return fmt.Errorf("checkpoint: header of %d bytes, at most %d", len(head), MaxHeader)
	}
	dir, name := filepath.Split(path)
	f, tmp, err := createTemp(dir, name)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	prefix := make([]byte, prefixLen, prefixLen+len(head))
	copy(prefix, Magic)
	binary.LittleEndian.PutUint32(prefix[len(Magic):], uint32(len(head)))
	if _, err := f.Write(append(prefix, head...)); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	for _, t := range state {
		if _, err := f.Write(t.Data); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	ok = true
	return nil
}

// createTemp creates ".NAME.<random>" in dir exclusively, mode 0600.
func createTemp(dir, name string) (*os.File, string, error) {
	seed := uint64(time.Now().UnixNano()) ^ uint64(os.Getpid())<<32
	for range 100 {
		seed = seed*6364136223846793005 + 1442695040888963407
		tmp := filepath.Join(dir, "."+name+"."+strconv.FormatUint(seed>>16, 36))
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return f, tmp, err
	}
	return nil, "", fmt.Errorf("no free temporary name for %s in %s", name, dir)
}

// Read returns the checkpoint at path: its header and its tensors, in
// the order they were written. A missing file is an error wrapping
// os.ErrNotExist; anything else wrong with it (its size, its magic, its
// header, a tensor's spec or checksum) is one wrapping ErrBad that says
// what. It checks the file against nothing else: see Check.
func Read(path string) (Header, []tensor.Tensor, error) {
	// Non-blocking: a FIFO at path must not stall the Run (it is then
	// refused below, as is anything but a regular file).
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Header{}, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Header{}, nil, err
	}
	if !st.Mode().IsRegular() {
		return Header{}, nil, fmt.Errorf("%w: %s is not a regular file", ErrBad, path)
	}
	size := st.Size()
	prefix := make([]byte, prefixLen)
	if _, err := io.ReadFull(f, prefix); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %s: %d bytes, shorter than the magic and header length", ErrBad, path, size)
	}
	if string(prefix[:len(Magic)]) != Magic {
		return Header{}, nil, fmt.Errorf("%w: %s: no %s magic", ErrBad, path, Magic)
	}
	n := int64(binary.LittleEndian.Uint32(prefix[len(Magic):]))
	if n < 2 || n > MaxHeader || prefixLen+n > size {
		return Header{}, nil, fmt.Errorf("%w: %s: header length %d (want 2 to %d, within the file's %d bytes)", ErrBad, path, n, MaxHeader, size)
	}
	head := make([]byte, n)
	if _, err := io.ReadFull(f, head); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %s: %v", ErrBad, path, err)
	}
	h, err := parseHeader(head)
	if err != nil {
		return Header{}, nil, fmt.Errorf("%w: %s: header: %v", ErrBad, path, err)
	}
	want := prefixLen + n
	specs := make([]tensor.Spec, len(h.Tensors))
	for i, e := range h.Tensors {
		specs[i] = tensor.Spec{Name: e.Name, DType: e.DType, Shape: e.Shape}
		b, err := specs[i].NumBytes()
		if err != nil {
			return Header{}, nil, fmt.Errorf("%w: %s: %v", ErrBad, path, err)
		}
		if want += b; want > size {
			break
		}
	}
	if want != size {
		return Header{}, nil, fmt.Errorf("%w: %s: %d bytes, but its header describes %d", ErrBad, path, size, want)
	}
	ts := make([]tensor.Tensor, len(specs))
	for i, s := range specs {
		t, err := tensor.New(s)
		if err != nil {
			return Header{}, nil, fmt.Errorf("%w: %s: %v", ErrBad, path, err)
		}
		if _, err := io.ReadFull(f, t.Data); err != nil {
			return Header{}, nil, fmt.Errorf("%w: %s: tensor %q: %v", ErrBad, path, s.Name, err)
		}
		if sum := tensor.Checksum(t.Data); sum != h.Tensors[i].Checksum {
			return Header{}, nil, fmt.Errorf("%w: %s: tensor %q: checksum %#016x, its header says %#016x", ErrBad, path, s.Name, sum, h.Tensors[i].Checksum)
		}
		ts[i] = t
	}
	return h, ts, nil
}

// parseHeader decodes a header, which must have exactly Header's keys
// (spelt as they are: encoding/json alone would take "Step" for "step"),
// none null, each tensor exactly TensorEntry's, at most MaxTensors
// tensors, and 0 < step < total.
func parseHeader(b []byte) (Header, error) {
	var h Header
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return Header{}, err
	}
	if dec.More() {
		return Header{}, errors.New("data after the JSON object")
	}
	var keys map[string]json.RawMessage
	var tensors []map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return Header{}, err
	}
	if err := exactKeys(keys, "request", "step", "total", "inputs", "tensors"); err != nil {
		return Header{}, err
	}
	if err := json.Unmarshal(keys["tensors"], &tensors); err != nil {
		return Header{}, err
	}
	for i, t := range tensors {
		if err := exactKeys(t, "name", "dtype", "shape", "checksum"); err != nil {
			return Header{}, fmt.Errorf("tensor %d: %w", i, err)
		}
	}
	if len(h.Tensors) > MaxTensors {
		return Header{}, fmt.Errorf("%d tensors, at most %d", len(h.Tensors), MaxTensors)
	}
	if h.Step <= 0 || h.Step >= h.Total {
		return Header{}, fmt.Errorf("step %d of %d: want 0 < step < total", h.Step, h.Total)
	}
	return h, nil
}

// exactKeys checks that m has exactly the keys names, none null.
func exactKeys(m map[string]json.RawMessage, names ...string) error {
	for _, k := range names {
		v, ok := m[k]
		switch {
		case !ok:
			return fmt.Errorf("no %q", k)
		case string(v) == "null":
			return fmt.Errorf("%q is null", k)
		}
	}
	if len(m) != len(names) {
		for k := range m {
			if !slices.Contains(names, k) {
				return fmt.Errorf("unknown key %q", k)
			}
		}
	}
	return nil
}

// Check reports, as an error wrapping ErrBad, why a checkpoint read from
// a file is not one a Run of request with total steps and inputs whose
// checksums are inputs may resume from; nil when it is.
func Check(h Header, request string, total int, inputs []uint64) error {
	switch {
	case h.Request != request:
		return fmt.Errorf("%w: it is request %s's, not %s's", ErrBad, h.Request, request)
	case h.Total != total:
		return fmt.Errorf("%w: it was saved by a Run of %d steps, not %d", ErrBad, h.Total, total)
	case !slices.Equal(h.Inputs, inputs):
		return fmt.Errorf("%w: it was saved by a Run with other inputs (checksums %x, not %x)", ErrBad, h.Inputs, inputs)
	}
	return nil
}

// Due reports whether a save is due after step of total steps, saving
// every every steps: step is a multiple of every, above 0 and below total.
func Due(step, total, every int) bool {
	return every > 0 && step > 0 && step < total && step%every == 0
}
