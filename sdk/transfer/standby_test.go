package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
	"github.com/phased/phased/sdk/tensor"
)

// TestStandby: a receiver side opened ahead of its request connects to
// its sender but holds no buffers until armed; armed, it carries the
// bytes like a room opened in one go, for each backend; frames before
// arming are dropped; arming with another endpoint or backend, or twice,
// is refused; an unarmed side is removed like any other, leaving nothing.
func TestStandby(t *testing.T) {
	for _, backend := range []sdk.Backend{sdk.BackendShm, sdk.BackendZMQ} {
		t.Run(string(backend), func(t *testing.T) {
			p := newPair(t, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{70000}}, 7)
			ep, err := p.snd.OpenSenderWith(1, backend)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.rcv.OpenStandby(1, backend, ep); err != nil {
				t.Fatal(err)
			}
			wantStatus(t, p.rcv, 1, Bootstrapping)
			if segs, _ := filepath.Glob(filepath.Join(DefaultShmDir, "phased-"+p.rn+"-1-*")); len(segs) != 0 {
				t.Errorf("segments of a room standing by: %v, want none", segs)
			}
			// The connection is made ahead: the sender side sees no
			// descriptor yet, and waits for one.
			wantStatus(t, p.snd, 1, Bootstrapping)

			other := sdk.BackendZMQ
			if backend == other {
				other = sdk.BackendShm
			}
			for _, c := range []struct {
				backend  sdk.Backend
				endpoint string
				want     string
			}{
				{backend, "ipc:///elsewhere.sock", "stands by connected to " + ep + ", not ipc:///elsewhere.sock"},
				{other, ep, "stands by for a " + string(backend) + " hop, not " + string(other)},
			} {
				err := p.rcv.OpenReceiverWith(1, c.backend, c.endpoint, []tensor.Spec{x.Spec})
				if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "open receiver room 1") {
					t.Errorf("arm with %s %s: %v, want an error saying %q", c.backend, c.endpoint, err, c.want)
				}
			}
			wantStatus(t, p.rcv, 1, Bootstrapping) // still standing by

			if err := p.rcv.OpenReceiverWith(1, backend, ep, []tensor.Spec{x.Spec}); err != nil {
				t.Fatal(err)
			}
			wantStatus(t, p.rcv, 1, WaitingForInput)
			if err := p.rcv.OpenReceiverWith(1, backend, ep, []tensor.Spec{x.Spec}); err == nil || !strings.Contains(err.Error(), "room id already used: 1") {
				t.Errorf("arm twice: %v, want the room id used", err)
			}
			if err := p.transfer(ctx, 1, []tensor.Tensor{x}); err != nil {
				t.Fatal(err)
			}
			for _, m := range []*Manager{p.snd, p.rcv} {
				if err := m.Remove(1); err != nil {
					t.Fatal(err)
				}
			}

			// Standing by, never armed: removed in order, nothing left.
			ep, err = p.snd.OpenSenderWith(2, backend)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.rcv.OpenStandby(2, backend, ep); err != nil {
				t.Fatal(err)
			}
			if err := p.snd.Remove(2); err != nil {
				t.Fatal(err)
			}
			if err := p.rcv.Remove(2); err != nil {
				t.Fatal(err)
			}
			if err := p.rcv.OpenReceiverWith(2, backend, ep, []tensor.Spec{x.Spec}); err == nil {
				t.Error("armed a removed standby room")
			}
			if rooms := p.rcv.Rooms(); len(rooms) != 0 {
				t.Errorf("rooms left: %+v", rooms)
			}
			assertClean(t, p.dir, p.sn, p.rn)
		})
	}
}

// TestStandbyDropsEarlyFrames: a frame on the status socket of a room
// that has sent no descriptor yet is dropped, and the room stays
// standing by.
func TestStandbyDropsEarlyFrames(t *testing.T) {
	p := newPair(t, nil)
	ep, err := p.snd.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.rcv.OpenStandby(1, sdk.BackendShm, ep); err != nil {
		t.Fatal(err)
	}
	p.rcv.mu.Lock()
	r := p.rcv.rooms[1]
	statusEP, gen := r.endpoint, r.gen
	p.rcv.mu.Unlock()
	before := p.rcv.Dropped()
	push := rawSocket(t, rawContext(t), zmq.PUSH)
	if err := push.Connect(statusEP); err != nil {
		t.Fatal(err)
	}
	// Its own room and generation: only standing by makes it early.
	mustSend(t, push, marshal(t, &phasedv1.StatusFrame{Version: wireVersion, Room: 1, Generation: gen, Status: Transferring.Proto()}))
	eventually(t, "the frame dropped", func() bool { return p.rcv.Dropped() > before })
	wantStatus(t, p.rcv, 1, Bootstrapping)
}

// TestStandbySenderGone: a room standing by whose sender went and did not
// come back within PeerTimeout fails, and arming it says why.
func TestStandbySenderGone(t *testing.T) {
	dir := shortDir(t)
	snd := startManager(t, dir, uniqueName(), nil)
	rcv := startManager(t, dir, uniqueName(), nil, func(c *Config) { c.PeerTimeout = 50 * time.Millisecond })
	ep, err := snd.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.OpenStandby(1, sdk.BackendShm, ep); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the connection made", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return rcv.rooms[1] != nil && rcv.rooms[1].connected
	})
	if err := snd.Remove(1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the room failed", func() bool { st, _, _ := rcv.Status(1); return st == Failed })
	err = rcv.OpenReceiverWith(1, sdk.BackendShm, ep, []tensor.Spec{{Name: "x", DType: tensor.Uint8, Shape: []int64{8}}})
	if err == nil || !strings.Contains(err.Error(), "peer timeout") {
		t.Errorf("arm a room whose sender went: %v, want the peer timeout", err)
	}
	if err := rcv.Remove(1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(strings.TrimPrefix(ep, "ipc://")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the sender's socket file: %v, want gone", err)
	}
	assertClean(t, dir)
}
