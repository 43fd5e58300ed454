package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
)

// designFloor is what any request costs in the design of DESIGN.md
// before a phase computes anything, made of bare parts: one call to the
// policy plugin process (the decision) and one to each of the three phase
// plugin processes (their Run), as the supervisor calls them (over their
// control channel, started by go-plugin with AutoMTLS), and, per hop, the libzmq sockets a room
// has (invariant 3: each instance binds its own socket per room and
// connects to its peer's; one descriptor and one status message through
// them; all closed, their files unlinked). The calls are Info (no work, a few bytes back); the
// rooms are made in this process over ipc:// in /dev/shm, as the
// supervisor's run directory is. No shared memory, no journal, no
// progress, no timeline: a lower bound.
type designFloor struct {
	policy sdk.Policy
	phases []sdk.PhaseControl
	pids   []int // the four plugin processes
	zctx   *zmq.Context
	dir    string
	rooms  atomic.Int64
}

func newDesignFloor(b testing.TB) *designFloor {
	b.Helper()
	f := &designFloor{}
	p := plugintest.Start(b, filepath.Join(pluginDir, "phased-policy-roundrobin"), sdk.KindPolicy)
	f.policy, f.pids = p.Raw.(sdk.Policy), append(f.pids, p.Pid)
	for _, name := range []string{"encoder", "transformer", "decoder"} {
		p := plugintest.Start(b, filepath.Join(pluginDir, "phased-phase-"+name), sdk.KindPhase)
		f.phases, f.pids = append(f.phases, p.Raw.(sdk.PhaseControl)), append(f.pids, p.Pid)
	}
	zctx, err := zmq.NewContext()
	if err != nil {
		b.Fatal(err)
	}
	f.zctx = zctx
	b.Cleanup(func() {
		if err := zctx.Term(); err != nil {
			b.Error(err)
		}
	})
	f.dir, err = os.MkdirTemp("/dev/shm", "phased-floor-")
	if err != nil {
		f.dir = b.TempDir()
	} else {
		b.Cleanup(func() { os.RemoveAll(f.dir) })
	}
	return f
}

// one makes one request's bare parts: the four calls, then two rooms.
func (f *designFloor) one(ctx context.Context) error {
	if _, err := f.policy.Info(ctx); err != nil {
		return err
	}
	for _, p := range f.phases {
		if _, err := p.Info(ctx); err != nil {
			return err
		}
	}
	for range len(f.phases) - 1 {
		if err := f.room(); err != nil {
			return err
		}
	}
	return nil
}

// room opens a room's sockets as the design has them (the sender's and
// the receiver's PULL, each bound; each side's PUSH connected to the
// other's), sends a descriptor one way and a status the other, and closes
// them.
func (f *designFloor) room() (err error) {
	var socks []*zmq.Socket
	defer func() {
		for _, s := range socks {
			if cerr := s.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	open := func(t zmq.Type) (*zmq.Socket, error) {
		s, err := f.zctx.NewSocket(t)
		if err != nil {
			return nil, err
		}
		socks = append(socks, s)
		return s, s.SetLinger(0)
	}
	id := f.rooms.Add(1)
	var pulls, pushes [2]*zmq.Socket
	for i, side := range []string{"s", "r"} {
		if pulls[i], err = open(zmq.PULL); err != nil {
			return err
		}
		// libzmq leaves an ipc socket's file behind: a room unlinks it.
		path := fmt.Sprintf("%s/%d-%s", f.dir, id, side)
		defer func() {
			if rerr := os.Remove(path); rerr != nil && err == nil {
				err = rerr
			}
		}()
		if err := pulls[i].Bind("ipc://" + path); err != nil {
			return err
		}
	}
	for i, peer := range []string{"r", "s"} {
		if pushes[i], err = open(zmq.PUSH); err != nil {
			return err
		}
		if err := pushes[i].Connect(fmt.Sprintf("ipc://%s/%d-%s", f.dir, id, peer)); err != nil {
			return err
		}
	}
	// The receiver's descriptor to the sender, the sender's status back.
	for _, m := range []struct {
		from, to *zmq.Socket
		size     int
	}{{pushes[1], pulls[0], 256}, {pushes[0], pulls[1], 16}} {
		if _, err := m.from.SendBytes(make([]byte, m.size), 0); err != nil {
			return err
		}
		if _, err := m.to.RecvBytes(0); err != nil {
			return err
		}
	}
	return nil
}

// cpu returns the CPU time this process and pids have used so far.
func cpu(b testing.TB, pids []int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	total := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for _, pid := range pids {
		// utime and stime, in clock ticks (100 a second), are the 14th
		// and 15th fields of /proc/PID/stat, the 12th and 13th after the
		// command.
		f := stat(pid)
		if len(f) < 13 {
			b.Fatalf("no /proc/%d/stat", pid)
		}
		for _, i := range []int{11, 12} {
			ticks, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += time.Duration(ticks) * 10 * time.Millisecond
		}
	}
	return total
}

// TestDesignFloor: the floor BenchmarkThroughput judges by runs: its
// calls reach the four plugin processes, its rooms carry their messages
// and leave no socket file, and the CPU time it reads grows.
func TestDesignFloor(t *testing.T) {
	f := newDesignFloor(t)
	before := cpu(t, f.pids)
	for range 20 {
		if err := f.one(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if after := cpu(t, f.pids); after <= before {
		t.Errorf("CPU time %v after 20 requests' floor, %v before", after, before)
	}
	if left, _ := filepath.Glob(filepath.Join(f.dir, "*")); len(left) > 0 {
		t.Errorf("socket files left: %v", left)
	}
}
