package transfer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
	"golang.org/x/sys/unix"

	"github.com/phased/phased/internal/netns"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// BenchmarkZMQHopVeth is BenchmarkZMQHop between two test hosts
// (internal/netns: network namespaces on one bridge, so a veth pair
// each), the sender in host a and the receiver in host b, each a process
// of its own (this test binary again, running TestVethPeer): sub-benchmarks
// raw (libzmq PUSH/PULL, one message per hop), zmq (a room hop), raw+curve
// and curve (the same with CURVE), all of 8 MiB and in the same run, so
// that `make bench` prints the ratios it prints for BenchmarkZMQHop: zmq
// and curve to raw, curve to zmq (what CURVE costs a hop across hosts) and
// to raw+curve.
//
// Each call of a sub-benchmark runs a pair of processes for
// max(b.N, vethMinHops) hops after vethWarmUps untimed ones, a room per
// hop as in BenchmarkZMQHop, opened (until the sender has the receiver's
// descriptor) and removed outside the timing. The receiver times each hop: from the sender's
// CLOCK_MONOTONIC just before Send (raw: zmq_send) to its own once
// Receive (raw: zmq_recv) has returned (the two hosts share one kernel,
// so one clock), and reports their mean and median. ns/op and MB/s are
// the mean, set with ReportMetric (the framework's own would count the
// processes' start), p50-µs the median: on a shared machine a few slow
// hops move the mean. It needs root (netns.Available), and skips without.
func BenchmarkZMQHopVeth(b *testing.B) {
	if err := netns.Available(); err != nil {
		b.Skip(err)
	}
	n, err := netns.New("hop", "a", "b")
	if err != nil {
		b.Fatal(err)
	}
	// Registered first, so it runs last: the sub-benchmarks' cleanups
	// have stopped their processes by then.
	b.Cleanup(func() {
		if err := n.Close(); err != nil {
			b.Error(err)
		}
	})
	keyFile := filepath.Join(b.TempDir(), "curve.key")
	if err := WriteCurveKeyFile(keyFile, curveKeys(b)); err != nil {
		b.Fatal(err)
	}
	const size = 8 << 20
	for _, m := range []struct{ name, mode string }{
		{"raw", "raw"}, {"zmq", "plain"}, {"raw+curve", "raw+curve"}, {"curve", "curve"},
	} {
		b.Run(fmt.Sprintf("%s-%dMiB", m.name, size>>20), func(b *testing.B) {
			mean, p50 := vethHops(b, n.Host("a"), n.Host("b"), m.mode, size, max(b.N, vethMinHops), keyFile)
			b.ReportMetric(mean, "ns/op")
			b.ReportMetric(size*1e3/mean, "MB/s")
			b.ReportMetric(p50/1e3, "p50-µs")
		})
	}
}

// vethMinHops is the fewest hops a sub-benchmark of BenchmarkZMQHopVeth
// times (with -benchtime 1x too), after vethWarmUps untimed ones.
const (
	vethMinHops = 20
	vethWarmUps = 3 // one leaves the first timed hops 5 to 10 times slower
)

// The environment of a TestVethPeer process.
const (
	vethRoleEnv  = "PHASED_VETH_ROLE"  // sender or receiver; unset: TestVethPeer skips
	vethModeEnv  = "PHASED_VETH_MODE"  // raw, plain, curve or raw+curve
	vethBytesEnv = "PHASED_VETH_BYTES" // the hop's size
	vethHopsEnv  = "PHASED_VETH_HOPS"  // timed hops, after vethWarmUps untimed ones
	vethAddrEnv  = "PHASED_VETH_ADDR"  // this host's address, where its sockets bind
	vethKeysEnv  = "PHASED_VETH_KEYS"  // the CURVE key file (curve modes)
)

// TestVethPeer is one end of BenchmarkZMQHopVeth's hops, in a process the
// benchmark starts in a test host; it skips unless $PHASED_VETH_ROLE is
// set. It talks with the benchmark one line at a time, "veth VERB ARG",
// on stdin and stdout; per hop, the benchmark passing each line on to the
// other end:
//
//	receiver: hello EP           (raw: its PULL socket's endpoint; else -)
//	sender:   open EP            (the room's endpoint; raw: -)
//	receiver: ready              (its side of the room is open)
//	sender:   sent T0            (T0: CLOCK_MONOTONIC before Send)
//	receiver: done               (received, a room's verified and removed)
//	...
//	receiver: result ns/op=N p50-ns=M bytes=B hops=H
//
// hello comes once, before the first hop; result once, after the last.
func TestVethPeer(t *testing.T) {
	role := os.Getenv(vethRoleEnv)
	if role == "" {
		t.Skip("BenchmarkZMQHopVeth's peer process: it runs only when that benchmark starts it, with $" + vethRoleEnv + " set")
	}
	p, err := vethParamsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	l := &vethLink{sc: bufio.NewScanner(os.Stdin), w: os.Stdout}
	switch role {
	case "sender":
		err = vethSender(t, p, l)
	case "receiver":
		err = vethReceiver(t, p, l)
	default:
		err = fmt.Errorf("$%s=%q: want sender or receiver", vethRoleEnv, role)
	}
	if err != nil {
		t.Fatalf("%s: %v", role, err)
	}
}

// vethParams is what a TestVethPeer process is told by its environment.
type vethParams struct {
	raw  bool       // raw libzmq rather than rooms
	keys *CurveKeys // CURVE, or nil
	size int64
	hops int
	addr string
}

func vethParamsFromEnv() (p vethParams, err error) {
	mode := os.Getenv(vethModeEnv)
	switch mode {
	case "raw", "plain", "curve", "raw+curve":
	default:
		return p, fmt.Errorf("$%s=%q: want raw, plain, curve or raw+curve", vethModeEnv, mode)
	}
	p.raw = strings.HasPrefix(mode, "raw")
	if strings.HasSuffix(mode, "curve") {
		keys, err := ReadCurveKeyFile(os.Getenv(vethKeysEnv))
		if err != nil {
			return p, err
		}
		p.keys = &keys
	}
	if p.size, err = strconv.ParseInt(os.Getenv(vethBytesEnv), 10, 64); err != nil || p.size <= 0 {
		return p, fmt.Errorf("$%s=%q: want a size in bytes", vethBytesEnv, os.Getenv(vethBytesEnv))
	}
	if p.hops, err = strconv.Atoi(os.Getenv(vethHopsEnv)); err != nil || p.hops <= 0 {
		return p, fmt.Errorf("$%s=%q: want a number of hops", vethHopsEnv, os.Getenv(vethHopsEnv))
	}
	if p.addr = os.Getenv(vethAddrEnv); CheckHost(p.addr) != nil {
		return p, fmt.Errorf("$%s=%q: want this host's address", vethAddrEnv, p.addr)
	}
	return p, nil
}

// manager starts the peer's Manager, its zmq rooms bound to its host's
// address.
func (p vethParams) manager(t *testing.T) *Manager {
	return startManager(t, shortDir(t), uniqueName(), nil, func(c *Config) {
		c.ZMQHost, c.Curve = p.addr, p.keys
	})
}

func (p vethParams) spec() tensor.Spec {
	return tensor.Spec{Name: "latent", DType: tensor.Uint8, Shape: []int64{p.size}}
}

// vethSender is the sending end: a PUSH socket that connects to the
// receiver's PULL socket, or a Manager that opens the sender side of a
// room per hop.
func vethSender(t *testing.T, p vethParams, l *vethLink) error {
	src := filled(t, p.spec(), 7)
	peer, err := l.expect("hello")
	if err != nil {
		return err
	}
	var push *zmq.Socket
	var m *Manager
	if p.raw {
		push = rawSocket(t, rawContext(t), zmq.PUSH)
		if p.keys != nil {
			if err := curveClient(push, p.keys.Public, p.keys); err != nil {
				return err
			}
		}
		if err := errors.Join(push.Connect(peer), checkRaw(push)); err != nil {
			return err
		}
	} else {
		m = p.manager(t)
	}
	for room := uint64(1); room <= uint64(vethWarmUps+p.hops); room++ {
		ep := "-"
		if m != nil {
			if ep, err = m.OpenSenderWith(room, sdk.BackendZMQ); err != nil {
				return err
			}
		}
		if err := l.say("open", ep); err != nil {
			return err
		}
		if _, err := l.expect("ready"); err != nil {
			return err
		}
		if m != nil {
			// Until the receiver's descriptor is here (or the room
			// failed, which Send says): the room is open.
			eventually(t, "the receiver's descriptor", func() bool {
				st, _, err := m.Status(room)
				return err != nil || st != Bootstrapping
			})
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		t0 := vethMonotonic()
		if m != nil {
			err = m.Send(ctx, room, []tensor.Tensor{src})
		} else {
			err = sendFrom(push, src.Data, 0)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("hop %d: %w", room, err)
		}
		if err := l.say("sent", strconv.FormatInt(t0, 10)); err != nil {
			return err
		}
		if _, err := l.expect("done"); err != nil {
			return err
		}
		if m != nil {
			if err := m.Remove(room); err != nil {
				return err
			}
		}
	}
	return nil
}

// vethReceiver is the receiving end: a PULL socket bound to its host's
// address, or a Manager that opens the receiver side of each room the
// sender opens. It times the hops.
func vethReceiver(t *testing.T, p vethParams, l *vethLink) error {
	var pull *zmq.Socket
	var m *Manager
	var dst []byte
	ep := "-"
	if p.raw {
		pull = rawSocket(t, rawContext(t), zmq.PULL)
		if p.keys != nil {
			// No ZAP handler in this context: libzmq admits any
			// client that knows the server's key.
			if err := curveServer(pull, p.keys); err != nil {
				return err
			}
		}
		if err := errors.Join(pull.Bind("tcp://"+p.addr+":*"), checkRaw(pull)); err != nil {
			return err
		}
		ep, _ = pull.GetLastEndpoint()
		dst = make([]byte, p.size) // received into, as BenchmarkZMQHop's raw
	} else {
		m = p.manager(t)
	}
	if err := l.say("hello", ep); err != nil {
		return err
	}
	hops := make([]int64, 0, p.hops) // ns
	for room := uint64(1); room <= uint64(vethWarmUps+p.hops); room++ {
		peer, err := l.expect("open")
		if err != nil {
			return err
		}
		if m != nil {
			if err := m.OpenReceiverWith(room, sdk.BackendZMQ, peer, []tensor.Spec{p.spec()}); err != nil {
				return err
			}
		}
		if err := l.say("ready", ""); err != nil {
			return err
		}
		if m != nil {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			var release func()
			_, release, err = m.Receive(ctx, room) // verifies the checksum
			cancel()
			if err == nil {
				release()
			}
		} else {
			var n int
			if n, err = recvInto(pull, dst, 0); err == nil && int64(n) != p.size {
				err = fmt.Errorf("received %d bytes, want %d", n, p.size)
			}
		}
		t1 := vethMonotonic()
		if err != nil {
			return fmt.Errorf("hop %d: %w", room, err)
		}
		sent, err := l.expect("sent")
		if err != nil {
			return err
		}
		t0, err := strconv.ParseInt(sent, 10, 64)
		if err != nil {
			return fmt.Errorf("sent %q: %w", sent, err)
		}
		if room > vethWarmUps {
			hops = append(hops, t1-t0)
		}
		if m != nil {
			if err := m.Remove(room); err != nil {
				return err
			}
		}
		if err := l.say("done", ""); err != nil {
			return err
		}
	}
	var total int64
	for _, h := range hops {
		total += h
	}
	slices.Sort(hops)
	return l.say("result", fmt.Sprintf("ns/op=%d p50-ns=%d bytes=%d hops=%d", total/int64(len(hops)), hops[len(hops)/2], p.size, len(hops)))
}

// vethMonotonic reads CLOCK_MONOTONIC, which every process on the
// machine shares, whatever its network namespace.
func vethMonotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return ts.Nano()
}

// vethLink carries the protocol's lines (see TestVethPeer) one way each:
// it reads sc and writes w. Lines read that are not the protocol's (the
// test framework's, e.g. a failure) are kept in noise.
type vethLink struct {
	sc    *bufio.Scanner
	w     io.Writer
	noise []string
}

const vethPrefix = "veth "

func (l *vethLink) say(verb, arg string) error {
	line := vethPrefix + verb
	if arg != "" {
		line += " " + arg
	}
	_, err := fmt.Fprintln(l.w, line)
	return err
}

// expect reads up to the next line of the protocol and returns its
// argument; it fails unless the line's verb is verb.
func (l *vethLink) expect(verb string) (string, error) {
	for l.sc.Scan() {
		line, ok := strings.CutPrefix(l.sc.Text(), vethPrefix)
		if !ok {
			l.noise = append(l.noise, l.sc.Text())
			continue
		}
		got, arg, _ := strings.Cut(line, " ")
		if got != verb {
			return "", fmt.Errorf("said %q, want %s", l.sc.Text(), verb)
		}
		return strings.TrimSpace(arg), nil
	}
	if err := l.sc.Err(); err != nil {
		return "", fmt.Errorf("reading, want %s: %w", verb, err)
	}
	return "", fmt.Errorf("ended, want %s", verb)
}

// vethPeer is a TestVethPeer process in a test host.
type vethPeer struct {
	role   string
	cmd    *exec.Cmd
	link   *vethLink // reads its stdout, writes its stdin
	stdin  io.WriteCloser
	stderr bytes.Buffer  // read once exited is closed
	exited chan struct{} // closed once cmd.Wait returned
	err    error         // cmd.Wait's, once exited is closed
}

// startVethPeer starts TestVethPeer as role in host h, with env added and
// its own address, and a test timeout of limit. The test's cleanup kills
// it if it still runs and waits for it.
func startVethPeer(b *testing.B, h *netns.Host, role string, env []string, limit time.Duration) *vethPeer {
	b.Helper()
	p := &vethPeer{role: role + " in host " + h.Name, exited: make(chan struct{})}
	p.cmd = h.Command(os.Args[0], "-test.run=^TestVethPeer$", "-test.timeout="+limit.String())
	p.cmd.Env = slices.Concat(os.Environ(), env, []string{vethRoleEnv + "=" + role, vethAddrEnv + "=" + h.Addr})
	p.cmd.Stderr = &p.stderr
	// Killed with the benchmark's process if that dies first.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	// A pipe of our own rather than StdoutPipe: Wait, in its goroutine
	// below, must not close it while lines are still to be read.
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	p.cmd.Stdout = w
	err = p.cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		b.Fatal(err)
	}
	p.stdin = stdin
	p.link = &vethLink{sc: bufio.NewScanner(r), w: stdin}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	b.Cleanup(func() {
		p.kill()
		<-p.exited
		r.Close()
	})
	return p
}

// kill kills the peer; it does nothing once it has exited.
func (p *vethPeer) kill() { _ = p.cmd.Process.Kill() }

// stop ends the peer once the protocol is over: it closes its stdin and
// waits for it to exit, killing it after 30 s. It returns an error if it
// did not exit with status 0.
func (p *vethPeer) stop() error {
	p.stdin.Close()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.kill()
		<-p.exited
		return fmt.Errorf("%s: did not exit 30 s after the last hop: killed", p.role)
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w", p.role, p.err)
	}
	return nil
}

// output is what the peer said outside the protocol, for an error
// message; the peer must have exited.
func (p *vethPeer) output() string {
	stderr := p.stderr.String()
	if len(stderr) > 8<<10 {
		stderr = "..." + stderr[len(stderr)-8<<10:]
	}
	return fmt.Sprintf("%s (%v), stdout:\n%s\nstderr:\n%s", p.role, p.err, strings.Join(p.link.noise, "\n"), stderr)
}

// vethHops runs a sender peer in host sh and a receiver peer in host rh,
// passes their lines on for vethWarmUps hops and hops timed ones, and returns
// the receiver's mean and median time per timed hop, in ns. It stops
// both, and kills both if anything fails or takes too long.
func vethHops(b *testing.B, sh, rh *netns.Host, mode string, size int64, hops int, keyFile string) (mean, p50 float64) {
	b.Helper()
	limit := time.Minute + time.Duration(hops)*time.Second
	env := []string{
		vethModeEnv + "=" + mode, vethBytesEnv + "=" + strconv.FormatInt(size, 10),
		vethHopsEnv + "=" + strconv.Itoa(hops), vethKeysEnv + "=" + keyFile,
	}
	rcv := startVethPeer(b, rh, "receiver", env, limit)
	snd := startVethPeer(b, sh, "sender", env, limit)
	// A peer's test timeout ends a hung peer with its goroutines on
	// stderr; this ends what that does not (a peer blocked on a
	// line from the other).
	watchdog := time.AfterFunc(limit+30*time.Second, func() {
		snd.kill()
		rcv.kill()
	})
	defer watchdog.Stop()
	fail := func(err error) {
		b.Helper()
		snd.kill()
		rcv.kill()
		<-snd.exited
		<-rcv.exited
		b.Fatalf("%s hop: %v\n%s\n%s", mode, err, snd.output(), rcv.output())
	}
	relay := func(from, to *vethPeer, verb string) {
		b.Helper()
		arg, err := from.link.expect(verb)
		if err == nil {
			err = to.link.say(verb, arg)
		}
		if err != nil {
			fail(fmt.Errorf("%s: %w", from.role, err))
		}
	}
	relay(rcv, snd, "hello")
	for range vethWarmUps + hops {
		relay(snd, rcv, "open")
		relay(rcv, snd, "ready")
		relay(snd, rcv, "sent")
		relay(rcv, snd, "done")
	}
	res, err := rcv.link.expect("result")
	if err != nil {
		fail(fmt.Errorf("%s: %w", rcv.role, err))
	}
	var ns, median, gotSize int64
	var gotHops int
	if _, err := fmt.Sscanf(res, "ns/op=%d p50-ns=%d bytes=%d hops=%d", &ns, &median, &gotSize, &gotHops); err != nil || gotSize != size || gotHops != hops || ns <= 0 {
		fail(fmt.Errorf("%s: result %q (%v), want %d bytes, %d hops", rcv.role, res, err, size, hops))
	}
	if err := errors.Join(snd.stop(), rcv.stop()); err != nil {
		fail(err)
	}
	return float64(ns), float64(median)
}
