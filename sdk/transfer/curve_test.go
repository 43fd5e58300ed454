package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// curveKeys returns a new CURVE key pair.
func curveKeys(t testing.TB) CurveKeys {
	t.Helper()
	keys, err := NewCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// withCurve sets Config.Curve.
func withCurve(keys CurveKeys) func(*Config) {
	return func(c *Config) { c.Curve = &keys }
}

// withPeerTimeout sets Config.PeerTimeout.
func withPeerTimeout(d time.Duration) func(*Config) {
	return func(c *Config) { c.PeerTimeout = d }
}

// newPairWith starts a sender and a receiver manager in one run
// directory, each configured by its own functions.
func newPairWith(t testing.TB, snd, rcv []func(*Config), tweakRcv func(*Manager)) *pair {
	t.Helper()
	p := &pair{dir: shortDir(t), sn: uniqueName(), rn: uniqueName()}
	p.snd = startManager(t, p.dir, p.sn, nil, snd...)
	p.rcv = startManager(t, p.dir, p.rn, tweakRcv, rcv...)
	return p
}

// newCurvePair is a pair of managers sharing one CURVE key pair.
func newCurvePair(t testing.TB) *pair {
	t.Helper()
	keys := curveKeys(t)
	return newPairWith(t, []func(*Config){withCurve(keys)}, []func(*Config){withCurve(keys)}, nil)
}

func writeKeyFile(t *testing.T, path, text string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return path
}

func TestCurveKeyFile(t *testing.T) {
	dir := t.TempDir()
	a, b := curveKeys(t), curveKeys(t)
	good := filepath.Join(dir, "good.key")
	if err := WriteCurveKeyFile(good, a); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(good)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("written key file: %v, %v; want mode 0600", fi, err)
	}
	got, err := ReadCurveKeyFile(good)
	if err != nil || got != a {
		t.Fatalf("ReadCurveKeyFile = %+v, %v; want the keys written", got, err)
	}
	if err := WriteCurveKeyFile(good, b); err == nil || !errors.Is(err, os.ErrExist) {
		t.Fatalf("WriteCurveKeyFile over an existing file = %v, want it refused", err)
	}
	if err := WriteCurveKeyFile(filepath.Join(dir, "bad.key"), CurveKeys{Public: a.Public, Secret: b.Secret}); err == nil ||
		!strings.Contains(err.Error(), "the public key is not the secret key's") {
		t.Fatalf("WriteCurveKeyFile of a mismatched pair = %v", err)
	}

	pair := "public " + a.Public + "\nsecret " + a.Secret + "\n"
	tests := []struct {
		name    string
		text    string
		mode    os.FileMode
		wantErr string // "": the keys a
	}{
		{"comments and blank lines", "# cluster key\n\npublic " + a.Public + "\n  secret " + a.Secret + "  \n", 0o600, ""},
		{"read only", pair, 0o400, ""},
		{"others may read", pair, 0o644, "mode 0644 lets others read the secret key: chmod 600 it"},
		{"group may read", pair, 0o640, "mode 0640 lets others read the secret key: chmod 600 it"},
		{"third line", pair + "public " + b.Public + "\n", 0o600, "line 3: expected `public KEY` then `secret KEY`, each once"},
		{"unknown word", "pub " + a.Public + "\n", 0o600, "line 1: expected `public KEY` then `secret KEY`"},
		{"no secret", "public " + a.Public + "\n", 0o600, "expected two lines, `public KEY` and `secret KEY`"},
		{"empty", "", 0o600, "expected two lines"},
		{"mismatched pair", "public " + a.Public + "\nsecret " + b.Secret + "\n", 0o600, "the public key is not the secret key's"},
		{"short key", "public " + a.Public[:39] + "\nsecret " + a.Secret + "\n", 0o600, "the public key is not 40 characters of Z85"},
		{"not Z85", "public " + strings.Repeat("\"", 40) + "\nsecret " + a.Secret + "\n", 0o600, "the public key is not"},
		{"too large", pair + "#" + strings.Repeat("x", 5000) + "\n", 0o600, "bytes: a key file holds two lines"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeKeyFile(t, filepath.Join(dir, "k"+string(rune('a'+i))), tt.text, tt.mode)
			got, err := ReadCurveKeyFile(path)
			if tt.wantErr == "" {
				if err != nil || got != a {
					t.Fatalf("ReadCurveKeyFile = %+v, %v; want the keys", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("ReadCurveKeyFile = %v; want an error naming %s with %q", err, path, tt.wantErr)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		if _, err := ReadCurveKeyFile(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("ReadCurveKeyFile = %v, want ErrNotExist", err)
		}
	})
	t.Run("a directory", func(t *testing.T) {
		if _, err := ReadCurveKeyFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("ReadCurveKeyFile = %v", err)
		}
	})
}

func TestCurveFromEnv(t *testing.T) {
	dir := t.TempDir()
	a := curveKeys(t)
	t.Setenv(CurveKeyFileEnv, "")
	if keys, err := CurveFromEnv(); keys != nil || err != nil {
		t.Fatalf("CurveFromEnv unset = %v, %v; want nil, nil", keys, err)
	}
	good := filepath.Join(dir, "good.key")
	if err := WriteCurveKeyFile(good, a); err != nil {
		t.Fatal(err)
	}
	t.Setenv(CurveKeyFileEnv, good)
	if keys, err := CurveFromEnv(); err != nil || keys == nil || *keys != a {
		t.Fatalf("CurveFromEnv = %v, %v; want the keys", keys, err)
	}
	loose := writeKeyFile(t, filepath.Join(dir, "loose.key"), "public "+a.Public+"\nsecret "+a.Secret+"\n", 0o644)
	t.Setenv(CurveKeyFileEnv, loose)
	_, err := CurveFromEnv()
	if err == nil || !strings.HasPrefix(err.Error(), "transfer: $"+CurveKeyFileEnv+": CURVE key file "+loose+": mode 0644") {
		t.Fatalf("CurveFromEnv of a 0644 file = %v", err)
	}
}

// TestCurveTransferIntact: two managers with the cluster's keys move
// tensors over a zmq room, byte for byte, in 4 MiB data parts (which
// CURVE makes longer on the wire than the receiver's ZMQ_MAXMSGSIZE
// without its allowance).
func TestCurveTransferIntact(t *testing.T) {
	p := newCurvePair(t)
	ts := []tensor.Tensor{
		filled(t, tensor.Spec{Name: "context", DType: tensor.Float32, Shape: []int64{512, 4096}}, 1), // 8 MiB: two full data parts
		filled(t, tensor.Spec{Name: "mask", DType: tensor.Uint8, Shape: []int64{3, 5, 7}}, 2),
		filled(t, tensor.Spec{Name: "latent", DType: tensor.Float32, Shape: []int64{16, 21, 60, 104}}, 4),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for room := uint64(1); room <= 2; room++ {
		p.openZMQ(t, room, specsOf(ts))
		if err := p.transfer(ctx, room, ts); err != nil {
			t.Fatalf("room %d: %v", room, err)
		}
		wantStatus(t, p.snd, room, Success)
		wantStatus(t, p.rcv, room, Success)
		if err := errors.Join(p.snd.Remove(room), p.rcv.Remove(room)); err != nil {
			t.Fatal(err)
		}
	}
	// shm rooms of the same managers: ipc, no CURVE.
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Float32, Shape: []int64{1000}}, 9)
	p.open(t, 3, []tensor.Spec{x.Spec})
	if err := p.transfer(ctx, 3, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(p.snd.Remove(3), p.rcv.Remove(3)); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Manager{p.snd, p.rcv} {
		if d, r := m.Dropped(), m.Refused(); d != 0 || r != 0 {
			t.Errorf("%d frames dropped, %d clients refused", d, r)
		}
	}
	assertClean(t, p.dir, p.sn, p.rn)
}

// TestCurveKeyMismatch: a receiver whose sender does not share its CURVE
// setup fails within PeerTimeout with a reason that says why, and its
// descriptor never reaches the sender, which goes on waiting for it.
func TestCurveKeyMismatch(t *testing.T) {
	const timeout = 300 * time.Millisecond
	cluster, other := curveKeys(t), curveKeys(t)
	short := withPeerTimeout(timeout)
	tests := []struct {
		name     string
		snd, rcv []func(*Config)
		tweak    func(*Manager)
		want     string
		refused  uint64 // by the sender's ZAP handler
	}{
		{"sender with keys, receiver without", []func(*Config){withCurve(cluster)}, []func(*Config){short}, nil,
			"it uses CURVE and this process has no key: every host needs the cluster's CURVE key file, $PHASED_CURVE_KEY_FILE", 0},
		{"receiver with keys, sender without", nil, []func(*Config){withCurve(cluster), short}, nil,
			"it has no CURVE key: every host needs", 0},
		{"receiver presents another pair", []func(*Config){withCurve(cluster)}, []func(*Config){withCurve(cluster), short},
			func(m *Manager) { m.clientKeys = &other },
			"it refused this process's CURVE key, ZAP status 400", 1},
		{"receiver of another cluster", []func(*Config){withCurve(cluster)}, []func(*Config){withCurve(other), short}, nil,
			// It expects another server key: the sender cannot open its
			// hello and closes the connection.
			"the connection closed during the CURVE handshake (", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPairWith(t, tt.snd, tt.rcv, tt.tweak)
			x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4096}}, 3)
			start := time.Now()
			ep, err := p.snd.OpenSenderWith(1, sdk.BackendZMQ)
			if err != nil {
				t.Fatal(err)
			}
			// libzmq may drop the connection's pipe so soon after a
			// failed handshake that the descriptor finds none: the open
			// fails then, at once, as a refusal too.
			if err := p.rcv.OpenReceiverWith(1, sdk.BackendZMQ, ep, []tensor.Spec{x.Spec}); err != nil {
				if !strings.Contains(err.Error(), "send descriptor to "+ep+": resource temporarily unavailable") {
					t.Fatalf("OpenReceiverWith = %v, want nil or the descriptor refused", err)
				}
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
				defer cancel()
				_, _, err := p.rcv.Receive(ctx, 1)
				took := time.Since(start)
				// Which side of the handshake gives up first is libzmq's
				// timing: the peer's specific reason, or its closing.
				want := "peer timeout: the handshake with the sender at " + ep + " failed ("
				if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "within 300ms (PeerTimeout)") ||
					!strings.Contains(err.Error(), want+tt.want) && !strings.Contains(err.Error(), want+"the connection closed during the CURVE handshake (") {
					t.Fatalf("Receive = %v, want ErrFailed with %q", err, want+tt.want)
				}
				if testing.Verbose() {
					t.Log(err)
				}
				if took < timeout || took > timeout+3*time.Second {
					t.Errorf("the room failed after %v, want between %v and %v", took, timeout, timeout+3*time.Second)
				}
			}
			// Nothing reached the sender: no descriptor, nothing dropped,
			// and a Send has nowhere to write.
			wantStatus(t, p.snd, 1, Bootstrapping)
			sctx, scancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer scancel()
			if err := p.snd.Send(sctx, 1, []tensor.Tensor{x}); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Send = %v, want it waiting for the descriptor", err)
			}
			if n := p.snd.Dropped(); n != 0 {
				t.Errorf("the sender dropped %d frames", n)
			}
			if n := p.snd.Refused(); n != tt.refused {
				t.Errorf("the sender's ZAP handler refused %d clients, want %d", n, tt.refused)
			}
			if err := errors.Join(p.snd.Remove(1), p.rcv.Remove(1)); err != nil {
				t.Fatal(err)
			}
			assertClean(t, p.dir, p.sn, p.rn)
		})
	}
}

// TestCurveRawClients: clients that are not the room's receiver connect
// to a CURVE sender's room socket and send junk. One with its own key
// pair is refused by the ZAP handler and one without CURVE by libzmq:
// neither junk arrives (nothing is dropped), and the room still serves
// its receiver. One with the cluster's keys gets through, and its junk is
// dropped, as without CURVE.
func TestCurveRawClients(t *testing.T) {
	p := newCurvePair(t)
	cluster := *p.snd.cfg.Curve
	zctx := rawContext(t)
	ep, err := p.snd.OpenSenderWith(1, sdk.BackendZMQ)
	if err != nil {
		t.Fatal(err)
	}
	junk := func(t *testing.T, keys *CurveKeys) {
		t.Helper()
		push := rawSocket(t, zctx, zmq.PUSH)
		if keys != nil {
			if err := curveClient(push, cluster.Public, keys); err != nil {
				t.Fatal(err)
			}
		}
		if err := push.Connect(ep); err != nil {
			t.Fatal(err)
		}
		// Queued until the connection is up, which it never is for the
		// refused ones.
		if _, err := push.SendBytes([]byte("junk, not a descriptor"), zmq.DONTWAIT); err != nil {
			t.Fatal(err)
		}
	}
	own := curveKeys(t)
	junk(t, &own)
	eventually(t, "the ZAP handler to refuse the client", func() bool { return p.snd.Refused() == 1 })
	junk(t, nil)
	junk(t, &cluster)
	eventually(t, "the cluster client's junk to be dropped", func() bool { return p.snd.Dropped() == 1 })
	if n := p.snd.Refused(); n != 1 {
		t.Errorf("%d clients refused, want 1", n)
	}
	wantStatus(t, p.snd, 1, Bootstrapping)
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{1 << 20}}, 5)
	if err := p.rcv.OpenReceiverWith(1, sdk.BackendZMQ, ep, []tensor.Spec{x.Spec}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.transfer(ctx, 1, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
	if n := p.snd.Dropped(); n != 1 {
		t.Errorf("%d frames dropped, want the one", n)
	}
}

func TestZAPVerdict(t *testing.T) {
	keys := curveKeys(t)
	key := zmq.Z85decode(keys.Public)
	other := zmq.Z85decode(curveKeys(t).Public)
	req := func(version, domain, mechanism string, creds ...string) [][]byte {
		r := [][]byte{[]byte(version), []byte("1"), []byte(domain), []byte("10.0.0.5"), nil, []byte(mechanism)}
		for _, c := range creds {
			r = append(r, []byte(c))
		}
		return r
	}
	tests := []struct {
		name string
		req  [][]byte
		code int
		text string
	}{
		{"the cluster's key", req("1.0", zapDomain, "CURVE", key), 200, "OK"},
		{"another key", req("1.0", zapDomain, "CURVE", other), 400, "not the cluster's CURVE key"},
		{"another domain", req("1.0", "global", "CURVE", key), 400, `ZAP domain "global"`},
		{"NULL", req("1.0", zapDomain, "NULL"), 400, `mechanism "NULL": only CURVE is allowed`},
		{"PLAIN", req("1.0", zapDomain, "PLAIN", "admin", "secret"), 400, `mechanism "PLAIN"`},
		{"version 2", req("2.0", zapDomain, "CURVE", key), 500, `ZAP version "2.0"`},
		{"no credentials", req("1.0", zapDomain, "CURVE"), 500, "CURVE credentials that are not one 32-byte key"},
		{"two credentials", req("1.0", zapDomain, "CURVE", key, key), 500, "CURVE credentials"},
		{"short key", req("1.0", zapDomain, "CURVE", key[:31]), 500, "CURVE credentials"},
		{"five frames", req("1.0", zapDomain, "CURVE")[:5], 500, "a ZAP request of 5 frames"},
		{"nothing", nil, 500, "a ZAP request of 0 frames"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, text := zapVerdict(tt.req, key)
			if code != tt.code || !strings.Contains(text, tt.text) {
				t.Fatalf("zapVerdict = %d %q, want %d %q", code, text, tt.code, tt.text)
			}
		})
	}
}

// TestZAPHandlerMalformed sends requests to a manager's ZAP handler over
// inproc in its own context, as libzmq would, malformed ones among them:
// each gets its answer (or, without an envelope, none), the handler
// counts what it refused, and the manager goes on serving CURVE rooms.
func TestZAPHandlerMalformed(t *testing.T) {
	p := newCurvePair(t)
	m := p.snd
	key := zmq.Z85decode(m.cfg.Curve.Public)
	req, err := m.zctx.NewSocket(zmq.REQ)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close()
	for _, set := range []error{req.SetLinger(0), req.SetRcvtimeo(5 * time.Second), req.Connect(zapEndpoint)} {
		if set != nil {
			t.Fatal(set)
		}
	}
	ask := func(frames ...any) []string {
		t.Helper()
		if _, err := req.SendMessage(frames...); err != nil {
			t.Fatal(err)
		}
		reply, err := req.RecvMessage(0)
		if err != nil {
			t.Fatalf("no answer to %q: %v", frames, err)
		}
		return reply
	}
	for _, tt := range []struct {
		frames []any
		code   string
		id     string
	}{
		{[]any{"junk"}, "500", ""},
		{[]any{"1.0", "7"}, "500", "7"},
		{[]any{"1.0", "8", zapDomain, "127.0.0.1", "", "CURVE", key, "extra"}, "500", "8"},
		{[]any{"0.9", "9", zapDomain, "127.0.0.1", "", "CURVE", key}, "500", "9"},
		{[]any{"1.0", "10", zapDomain, "127.0.0.1", "", "NULL"}, "400", "10"},
		{[]any{"1.0", "11", zapDomain, "127.0.0.1", "", "CURVE", strings.Repeat("k", 32)}, "400", "11"},
		{[]any{"1.0", "12", zapDomain, "127.0.0.1", "", "CURVE", key}, "200", "12"},
	} {
		reply := ask(tt.frames...)
		if len(reply) != 6 || reply[0] != "1.0" || reply[1] != tt.id || reply[2] != tt.code {
			t.Errorf("request %q: reply %q, want 1.0, id %q, status %s", tt.frames, reply, tt.id, tt.code)
		}
	}
	if n := m.Refused(); n != 6 {
		t.Errorf("%d requests refused, want 6", n)
	}
	// Without the envelope (a DEALER adds no empty delimiter): no one to
	// answer; counted and dropped.
	dealer, err := m.zctx.NewSocket(zmq.DEALER)
	if err != nil {
		t.Fatal(err)
	}
	defer dealer.Close()
	if err := errors.Join(dealer.SetLinger(0), dealer.Connect(zapEndpoint)); err != nil {
		t.Fatal(err)
	}
	if _, err := dealer.SendMessage("1.0", "13", zapDomain, "127.0.0.1", "", "CURVE", key); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the request without an envelope to be counted", func() bool { return m.Refused() == 7 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	x := filled(t, tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{1000}}, 1)
	p.openZMQ(t, 1, []tensor.Spec{x.Spec})
	if err := p.transfer(ctx, 1, []tensor.Tensor{x}); err != nil {
		t.Fatal(err)
	}
}

// TestCurveRoomsNoGrowth: opening, using and removing zmq rooms with
// CURVE leaves no file descriptor or goroutine behind.
func TestCurveRoomsNoGrowth(t *testing.T) {
	p := newCurvePair(t)
	spec := tensor.Spec{Name: "x", DType: tensor.Uint8, Shape: []int64{4096}}
	x := filled(t, spec, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	room := uint64(0)
	run := func(n int) {
		for range n {
			room++
			p.openZMQ(t, room, []tensor.Spec{spec})
			if err := p.transfer(ctx, room, []tensor.Tensor{x}); err != nil {
				t.Fatalf("room %d: %v", room, err)
			}
			if err := errors.Join(p.snd.Remove(room), p.rcv.Remove(room)); err != nil {
				t.Fatal(err)
			}
		}
	}
	run(20)
	var baseFDs int
	eventually(t, "libzmq to close the warm-up's sockets", func() bool {
		n := openFDs(t)
		defer func() { baseFDs = n }()
		return n == baseFDs
	})
	baseG := runtime.NumGoroutine()
	run(200)
	eventually(t, "file descriptors back to the baseline", func() bool { return openFDs(t) <= baseFDs })
	eventually(t, "goroutines to settle", func() bool { return runtime.NumGoroutine() <= baseG })
	for _, m := range []*Manager{p.snd, p.rcv} {
		if d, r := m.Dropped(), m.Refused(); d != 0 || r != 0 {
			t.Errorf("%d frames dropped, %d clients refused", d, r)
		}
	}
}
