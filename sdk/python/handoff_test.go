package python_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// The zero-copy hand-off (docs/protocol.md section 5.6) between the two
// SDKs: an output written into memory from the sender's allocator crosses
// a shm hop as a read-only mapping of the sender's output segment, not a
// copy, whichever SDK sends and whichever receives, and goes back to the
// sender once the receiver let go of it.

// mappingOf returns the line of /proc/self/maps whose range holds p, or
// "" if none does.
func mappingOf(t *testing.T, p uintptr) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		z, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && uint64(p) >= a && uint64(p) < z {
			return l
		}
	}
	return ""
}

// TestHandoffGoToPython: a Go sender's output from Alloc reaches a Python
// receiver intact, as a read-only array mapping the Go process's output
// segment; once the Python side removed its room and dropped the array,
// the segment is back and the Go sender's next Alloc reuses it. An output
// hashed by its writer (Written) is lent the same way.
func TestHandoffGoToPython(t *testing.T) {
	dir := runDir(t)
	snd := goManager(t, dir, "gohand")
	needPython(t)
	p := startPeer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 3<<20 + 5
	spec := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{n}}
	want := make([]byte, n)
	fillPattern(want)
	sum := tensor.Checksum(want)
	for i, written := range []bool{false, true} {
		room := uint64(i + 1)
		out, err := snd.Alloc(spec)
		if err != nil {
			t.Fatal(err)
		}
		copy(out.Data, want)
		if written {
			if err := snd.Written(out, sum); err != nil {
				t.Fatal(err)
			}
		}
		ep, err := snd.OpenSenderWith(room, sdk.BackendShm)
		if err != nil {
			t.Fatal(err)
		}
		p.expect(t, fmt.Sprintf("lendrecv %d %d %s", n, room, ep), "open")
		if err := snd.Send(ctx, room, []tensor.Tensor{out}); err != nil {
			t.Fatal(err)
		}
		got := strings.Fields(p.expect(t, "", "ok "))
		wantFile := "file=phased-" + transfer.ProcessName("gohand", os.Getpid()) + "-out-"
		if len(got) != 4 || got[1] != strconv.FormatUint(sum, 10) || got[2] != "readonly=1" || !strings.HasPrefix(got[3], wantFile) {
			t.Errorf("room %d: the Python receiver reports %q; want the checksum %d, a read-only array, and a mapping of %s*", room, got, sum, wantFile)
		}
		snd.Free(out)
		if err := snd.Remove(room); err != nil {
			t.Fatal(err)
		}
		again, err := snd.Alloc(spec)
		if err != nil {
			t.Fatal(err)
		}
		if &again.Data[0] != &out.Data[0] {
			t.Errorf("room %d: the next Alloc did not reuse the segment the Python receiver gave back", room)
		}
		snd.Free(again)
	}
}

// TestHandoffPythonToGo: a Python sender's output from alloc reaches a Go
// receiver intact as a read-only mapping of the Python process's output
// segment (not a copy in the receiver's own segment); once the Go side
// released it and removed its room, the Python sender's next alloc reuses
// the segment.
func TestHandoffPythonToGo(t *testing.T) {
	dir := runDir(t)
	rcv := goManager(t, dir, "gorecv")
	needPython(t)
	p := startPeer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 2<<20 + 77
	spec := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{n}}
	want := make([]byte, n)
	fillPattern(want)
	outFile := "phased-" + transfer.ProcessName("pya", p.pid) + "-out-"
	for i, written := range []bool{false, true} {
		room := uint64(i + 1)
		cmd := fmt.Sprintf("lendsend %d %d", n, room)
		if written {
			cmd += " written"
		}
		ep := strings.TrimPrefix(p.expect(t, cmd, "ep "), "ep ")
		if err := rcv.OpenReceiverWith(room, sdk.BackendShm, ep, []tensor.Spec{spec}); err != nil {
			t.Fatal(err)
		}
		got, release, err := rcv.Receive(ctx, room)
		if err != nil {
			t.Fatal(err)
		}
		sent := p.expect(t, "", "sent ")
		if !strings.HasPrefix(sent, "sent "+outFile) {
			t.Errorf("room %d: the Python sender's output is not in an output segment: %q", room, sent)
		}
		if !bytes.Equal(got[0].Data, want) {
			t.Errorf("room %d: the lent bytes differ from the pattern", room)
		}
		m := mappingOf(t, uintptr(unsafe.Pointer(&got[0].Data[0])))
		if f := strings.Fields(m); len(f) < 6 || f[1] != "r--s" || !strings.HasPrefix(filepath.Base(f[5]), outFile) {
			t.Errorf("room %d: the received tensor lies in %q; want a read-only mapping of the Python process's %s* file", room, m, outFile)
		}
		release()
		if err := rcv.Remove(room); err != nil {
			t.Fatal(err)
		}
		p.expect(t, fmt.Sprintf("lendfree %d", room), "ok")
		p.expect(t, fmt.Sprintf("realloc %d", n), "same")
	}
}
