package transfer

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/sdk/tensor"
)

// TestThousandRoomsOpen: 1,000 rooms open at once on one pair (more
// sockets than libzmq's default limit of 1023 per context), each
// completing a transfer.
func TestThousandRoomsOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	p := newPair(t, nil)
	const rooms = 1000
	spec := tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{256}}
	for room := uint64(1); room <= rooms; room++ {
		p.open(t, room, []tensor.Spec{spec})
	}
	if n := len(p.snd.Rooms()) + len(p.rcv.Rooms()); n != 2*rooms {
		t.Fatalf("%d rooms open, want %d", n, 2*rooms)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, rooms)
	const workers = 8
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for room := uint64(1 + w); room <= rooms; room += workers {
				if err := p.transfer(ctx, room, []tensor.Tensor{filled(t, spec, byte(room))}); err != nil {
					errs <- fmt.Errorf("room %d: %w", room, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for room := uint64(1); room <= rooms; room++ {
		if err := errors.Join(p.snd.Remove(room), p.rcv.Remove(room)); err != nil {
			t.Fatal(err)
		}
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// TestTenThousandRoomsNoGrowth: opening and removing 10,000 rooms leaves
// no file descriptor, goroutine, socket file or segment behind beyond the
// pool's bound, and the set of used room ids stays bounded.
func TestTenThousandRoomsNoGrowth(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	p := newPair(t, nil)
	spec := tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{64}}
	x := filled(t, spec, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Every 100th room moves data, so that the pool recycles segments.
	cycle := func(room uint64) {
		p.open(t, room, []tensor.Spec{spec})
		if room%100 == 0 {
			if err := p.transfer(ctx, room, []tensor.Tensor{x}); err != nil {
				t.Errorf("room %d: %v", room, err)
			}
		}
		if err := errors.Join(p.snd.Remove(room), p.rcv.Remove(room)); err != nil {
			t.Error(err)
		}
	}
	// Four streams of rooms opened and removed one after the other, so
	// that the test fits its time on two cores.
	const total, warm, streams = 10000, 400, 4
	run := func(from, to uint64) {
		var wg sync.WaitGroup
		for s := range uint64(streams) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for room := from + s; room <= to; room += streams {
					cycle(room)
				}
			}()
		}
		wg.Wait()
	}
	run(1, warm) // warm up: the pool and the sender's mapping cache fill
	var baseFDs int
	eventually(t, "libzmq to close the warm-up's sockets", func() bool {
		n := openFDs(t)
		defer func() { baseFDs = n }()
		return n == baseFDs
	})
	baseG := runtime.NumGoroutine()
	run(warm+1, total)
	// libzmq closes sockets in its reaper thread, a little later.
	eventually(t, "file descriptors back to the baseline", func() bool { return openFDs(t) <= baseFDs })
	eventually(t, "goroutines to settle", func() bool { return runtime.NumGoroutine() <= baseG })
	assertClean(t, p.dir, p.sn, p.rn)
	segs, _ := filepath.Glob(filepath.Join(DefaultShmDir, "phased-"+p.rn+"-*"))
	if n, _ := p.rcv.pool.idle(); len(segs) != n || n > p.rcv.cfg.PoolSegments {
		t.Errorf("%d segment files, %d idle in the pool (bound %d)", len(segs), n, p.rcv.cfg.PoolSegments)
	}
	for _, m := range []*Manager{p.snd, p.rcv} {
		m.mu.Lock()
		n, low := len(m.ids.set), m.ids.low
		m.mu.Unlock()
		if n > maxUsedIDs || low == 0 {
			t.Errorf("used-id set holds %d ids (bound %d), low-water mark %d", n, maxUsedIDs, low)
		}
	}
	if _, err := p.snd.OpenSender(5); !errors.Is(err, ErrRoomExists) || !strings.Contains(err.Error(), "no longer accepts ids below") {
		t.Errorf("reopening room 5 = %v, want ErrRoomExists below the low-water mark", err)
	}
}

// TestTooManyFiles: when the socket limit (derived from the fd limit) is
// reached, the open fails with ErrTooManyFiles and a message that says
// what to do, and the rooms already open still work.
func TestTooManyFiles(t *testing.T) {
	dir := shortDir(t)
	// The wake-up pair takes 2 sockets, a room with its peer connected 4
	// (bound PULL, connected PUSH and the two ends of its monitor).
	limit := func(n int) func(*Config) { return func(c *Config) { c.MaxSockets = n } }
	p := &pair{dir: dir, sn: uniqueName(), rn: uniqueName()}
	p.snd = startManager(t, dir, p.sn, nil, limit(2+4+4))
	p.rcv = startManager(t, dir, p.rn, nil, limit(2+4+4))
	spec := tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{100}}
	p.open(t, 1, []tensor.Spec{spec})
	p.open(t, 2, []tensor.Spec{spec})
	eventually(t, "the descriptors to arrive", func() bool {
		a, _, _ := p.snd.Status(1)
		b, _, _ := p.snd.Status(2)
		return a == WaitingForInput && b == WaitingForInput
	})

	ep, err := p.snd.OpenSender(3)
	if err == nil {
		err = p.rcv.OpenReceiver(3, ep, []tensor.Spec{spec})
	}
	if !errors.Is(err, ErrTooManyFiles) || !strings.Contains(err.Error(), "raise the file-descriptor limit (ulimit -n)") ||
		!strings.HasPrefix(err.Error(), "transfer: open ") {
		t.Fatalf("open beyond the limit = %v, want ErrTooManyFiles", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, room := range []uint64{1, 2} {
		if err := p.transfer(ctx, room, []tensor.Tensor{filled(t, spec, byte(room))}); err != nil {
			t.Fatalf("room %d after the failed open: %v", room, err)
		}
	}
	for _, room := range []uint64{1, 2, 3} {
		if err := errors.Join(p.snd.Remove(room), p.rcv.Remove(room)); err != nil {
			t.Fatal(err)
		}
	}
	// The sockets are free again once libzmq's reaper has closed them
	// (asynchronously); a failed open spends its id.
	room := uint64(3)
	eventually(t, "the socket limit to free up", func() bool {
		room++
		ep, err := p.snd.OpenSender(room)
		if err == nil {
			err = p.rcv.OpenReceiver(room, ep, []tensor.Spec{spec})
		}
		// The sender connects to the receiver's status socket when the
		// descriptor arrives: that needs a free socket too.
		for deadline := time.Now().Add(2 * time.Second); err == nil; time.Sleep(time.Millisecond) {
			st, reason, serr := p.snd.Status(room)
			if serr != nil || st == Failed || time.Now().After(deadline) {
				err = errors.Join(serr, errors.New(reason), errors.New("no descriptor"))
			} else if st != Bootstrapping {
				break
			}
		}
		if err != nil {
			_ = errors.Join(p.snd.Remove(room), p.rcv.Remove(room))
		}
		return err == nil
	})
	if err := p.transfer(ctx, room, []tensor.Tensor{filled(t, spec, 4)}); err != nil {
		t.Fatal(err)
	}
}

// TestPeerVanishes: a room whose peer goes away mid-transfer fails within
// PeerTimeout (plus scheduling), with a reason naming the peer.
func TestPeerVanishes(t *testing.T) {
	const timeout = 300 * time.Millisecond
	peerTimeout := func(m *Manager) { m.cfg.PeerTimeout = timeout }
	bounded := func(t *testing.T, d time.Duration) {
		t.Helper()
		if d < timeout || d > timeout+3*time.Second {
			t.Errorf("the room failed after %v, want between %v and %v", d, timeout, timeout+3*time.Second)
		}
	}
	big := tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{8 * chunkSize}}

	t.Run("receiver vanishes after its descriptor", func(t *testing.T) {
		dir := shortDir(t)
		started, proceed := make(chan struct{}), make(chan struct{})
		var once sync.Once
		p := &pair{dir: dir, sn: uniqueName(), rn: uniqueName()}
		p.snd = startManager(t, dir, p.sn, func(m *Manager) {
			peerTimeout(m)
			onChunk(t, m, func(uint64) { once.Do(func() { close(started); <-proceed }) })
		})
		p.rcv = startManager(t, dir, p.rn, nil)
		p.open(t, 1, []tensor.Spec{big})
		sent := make(chan error, 1)
		go func() { sent <- p.snd.Send(context.Background(), 1, []tensor.Tensor{filled(t, big, 1)}) }()
		<-started
		start := time.Now()
		if err := p.rcv.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the sender room to fail", func() bool { st, _, _ := p.snd.Status(1); return st == Failed })
		bounded(t, time.Since(start))
		close(proceed)
		err := <-sent
		want := "peer timeout: the receiver at ipc://" + filepath.Join(dir, "r-1-")
		if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "within 300ms (PeerTimeout)") {
			t.Fatalf("Send = %v, want ErrFailed with %q", err, want)
		}
	})

	t.Run("sender vanishes before Success", func(t *testing.T) {
		dir := shortDir(t)
		started, proceed := make(chan struct{}), make(chan struct{})
		var once sync.Once
		p := &pair{dir: dir, sn: uniqueName(), rn: uniqueName()}
		p.snd = startManager(t, dir, p.sn, func(m *Manager) {
			onChunk(t, m, func(uint64) { once.Do(func() { close(started); <-proceed }) })
		})
		p.rcv = startManager(t, dir, p.rn, peerTimeout)
		p.open(t, 1, []tensor.Spec{big})
		go func() { _ = p.snd.Send(context.Background(), 1, []tensor.Tensor{filled(t, big, 1)}) }()
		<-started
		eventually(t, "the receiver to see Transferring", func() bool { st, _, _ := p.rcv.Status(1); return st == Transferring })
		released := make(chan error, 1)
		start := time.Now()
		go func() { released <- p.snd.Release(context.Background()) }()
		eventually(t, "Release to abort the copy", func() bool { return p.snd.rooms[1] == nil || p.snd.rooms[1].abort.Load() })
		close(proceed)
		if err := <-released; err != nil {
			t.Fatal(err)
		}
		_, _, err := p.rcv.Receive(context.Background(), 1)
		bounded(t, time.Since(start))
		want := "peer timeout: the sender at ipc://" + filepath.Join(dir, "s-1.sock") + " disconnected"
		if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Receive = %v, want ErrFailed with %q", err, want)
		}
	})

	// On the fast path no Success frame marks the end: the control block
	// does, and a sender that finished may go before Receive comes.
	t.Run("sender done, then gone", func(t *testing.T) {
		p := &pair{dir: shortDir(t), sn: uniqueName(), rn: uniqueName()}
		p.snd = startManager(t, p.dir, p.sn, nil)
		p.rcv = startManager(t, p.dir, p.rn, peerTimeout)
		p.open(t, 1, []tensor.Spec{big})
		x := filled(t, big, 7)
		if err := p.snd.Send(context.Background(), 1, []tensor.Tensor{x}); err != nil {
			t.Fatal(err)
		}
		if err := p.snd.Release(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * timeout) // the peer timer would have fired
		if st, reason, _ := p.rcv.Status(1); st != Transferring {
			t.Fatalf("receiver room %s %q, want Transferring (the sender finished)", st, reason)
		}
		got, release, err := p.rcv.Receive(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		if err := sameTensors(got, []tensor.Tensor{x}); err != nil {
			t.Fatal(err)
		}
	})
}
