package twoproc

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// pair is a sender Manager in this process and a receiving process.
type pair struct {
	dir string
	snd *transfer.Manager
	rx  *child
}

func newPair(t *testing.T) *pair {
	t.Helper()
	dir := runDir(t)
	return &pair{dir: dir, snd: startManager(t, dir, "scaletx"), rx: startChild(t, dir)}
}

// counts returns the receiver's open fds and goroutines.
func (p *pair) counts(t *testing.T) (int, int) {
	t.Helper()
	fmt.Fprintln(p.rx.in, "count")
	f := strings.Fields(p.rx.expect(t, ""))
	fds, _ := strconv.Atoi(f[0])
	gs, _ := strconv.Atoi(f[1])
	return fds, gs
}

func sockets(t *testing.T, dir string) int {
	t.Helper()
	n, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
	return len(n)
}

// TestThousandRoomsOpen opens 1,000 rooms at once between this process and
// a receiving process, completes a transfer on every one and removes them;
// twice, and after the second round the receiver holds no more file
// descriptors or goroutines than after the first (which warms its segment
// pool), and no socket file is left.
func TestThousandRoomsOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	p := newPair(t)
	const n = 1000
	x, err := tensor.New(spec(4096))
	if err != nil {
		t.Fatal(err)
	}
	for i := range x.Data {
		x.Data[i] = byte(i)
	}
	want := fmt.Sprint(tensor.Checksum(x.Data))
	ctx := context.Background()
	round := func(first uint64) {
		for room := first; room < first+n; room++ {
			ep, err := p.snd.OpenSender(room)
			if err != nil {
				t.Fatalf("open sender %d: %v", room, err)
			}
			fmt.Fprintf(p.rx.in, "open %d %s %d\n", room, ep, len(x.Data))
			p.rx.expect(t, "open")
		}
		if got := len(p.snd.Rooms()); got != n {
			t.Fatalf("%d sender rooms open, want %d", got, n)
		}
		for room := first; room < first+n; room++ {
			fmt.Fprintf(p.rx.in, "recv %d\n", room)
			if err := p.snd.Send(ctx, room, []tensor.Tensor{x}); err != nil {
				t.Fatalf("send %d: %v", room, err)
			}
			if got := p.rx.expect(t, "ok"); got != "ok "+want {
				t.Fatalf("room %d: receiver got checksum %q, want %s", room, got, want)
			}
		}
		for room := first; room < first+n; room++ {
			if err := p.snd.Remove(room); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(p.rx.in, "remove %d\n", room)
			p.rx.expect(t, "removed")
		}
	}
	round(1)
	fds0, gs0 := p.counts(t)
	round(1 + n)
	// libzmq closes sockets from its reaper thread, a little after
	// zmq_close returns: give the counts a few seconds to settle.
	fds1, gs1 := p.counts(t)
	for deadline := time.Now().Add(10 * time.Second); (fds1 > fds0 || gs1 > gs0) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		fds1, gs1 = p.counts(t)
	}
	if fds1 > fds0 || gs1 > gs0 {
		t.Errorf("receiver after the second 1,000 rooms: %d fds, %d goroutines; after the first: %d, %d", fds1, gs1, fds0, gs0)
	}
	if s := sockets(t, p.dir); s != 0 {
		t.Errorf("%d socket files left in %s", s, p.dir)
	}
	if len(p.snd.Rooms()) != 0 {
		t.Errorf("sender rooms left: %d", len(p.snd.Rooms()))
	}
}
