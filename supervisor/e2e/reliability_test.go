package e2e

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// forkerPipeline is the pipeline with the forker encoder
// (testdata/forker), which writes its own child's pid to
// DIR/grandchild.pid; extra goes into its phase block.
func forkerPipeline(dir, extra string) string {
	return strings.Replace(pipeline, `phase "encoder"     { plugin = "encoder" }`,
		`phase "encoder" {
  plugin = "forker"
  params = { pidfile = "`+filepath.Join(dir, "grandchild.pid")+`" `+extra+`}
}`, 1)
}

// grandchild returns the pid of the forker's child, which must run; it is
// killed at the end of the test if it still runs.
func grandchild(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "grandchild.pid"))
	if err != nil {
		t.Fatal(err)
	}
	gc, err := strconv.Atoi(string(b))
	if err != nil || !running(gc) {
		t.Fatalf("the plugin's child %q is not running (%v)", b, err)
	}
	t.Cleanup(func() {
		if running(gc) {
			_ = syscall.Kill(gc, syscall.SIGKILL)
		}
	})
	return gc
}

// TestProcessGroup: a plugin's own children die with it at release, since
// the supervisor kills each plugin as a process group.
func TestProcessGroup(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, forkerPipeline(dir, "")))
	gc := grandchild(t, dir)
	p.release(t)
	if !eventually(2*time.Second, func() bool { return !running(gc) }) {
		t.Fatalf("the plugin's own child %d outlived the release", gc)
	}
}

// TestLoopbackOnly: with the defaults, nothing the supervisor or its
// plugins run listens on anything but loopback, zmq hops included (their
// rooms bind tcp while they are open). The test reads each process's
// socket inodes and the listening TCP sockets of /proc/net/tcp and tcp6.
func TestLoopbackOnly(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, `
phase "encoder"     {
  plugin = "encoder"
  host   = "a"
}
phase "transformer" {
  plugin = "transformer"
  host   = "b"
}
phase "decoder"     { plugin = "decoder" }
`))
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{st.PID}
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			pids = append(pids, in.PID)
		}
	}
	for _, pr := range st.Policies.Running {
		pids = append(pids, pr.PID)
	}
	done := make(chan []supervisor.RequestInfo, 1)
	go func() {
		done <- p.submitAll(t, 8, func(i int) supervisor.Submission {
			return supervisor.Submission{Prompt: "loopback", Seed: int64(i), Steps: 50}
		})
	}()
	seen := map[string]bool{}
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(2 * time.Millisecond):
		}
		for _, addr := range listening(t, pids) {
			seen[addr] = true
		}
	}
	if len(seen) == 0 {
		t.Fatal("no listening TCP socket seen while zmq rooms were open: the check sees nothing")
	}
	for addr := range seen {
		if !strings.HasPrefix(addr, "127.0.0.1:") && !strings.HasPrefix(addr, "[::1]:") {
			t.Errorf("a phased process listens on %s, not loopback", addr)
		}
	}
	t.Logf("%d listening addresses seen, all loopback", len(seen))
	p.release(t)
}

// listening returns the local addresses of the listening TCP sockets that
// the processes pids hold.
func listening(t *testing.T, pids []int) []string {
	t.Helper()
	inodes := map[string]bool{}
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if ino, ok := strings.CutPrefix(link, "socket:["); ok && err == nil {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	var out []string
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			out = append(out, hexAddr(t, f[1]))
		}
	}
	return out
}

// hexAddr decodes /proc/net/tcp's HEXIP:HEXPORT (the IP in host byte
// order, 32-bit words).
func hexAddr(t *testing.T, s string) string {
	ipHex, portHex, _ := strings.Cut(s, ":")
	port, err := strconv.ParseUint(portHex, 16, 16)
	raw, err2 := hex.DecodeString(ipHex)
	if err != nil || err2 != nil {
		t.Fatalf("bad address %q in /proc/net/tcp", s)
	}
	for i := 0; i+4 <= len(raw); i += 4 { // each word is little-endian
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	return net.JoinHostPort(net.IP(raw).String(), strconv.Itoa(int(port)))
}

// TestStaleCleanup: after kill -9 of the supervisor, its plugins are gone
// within 2 seconds (parent-death signal), and the next start removes what
// they left: the old run directory with its socket files, and the
// instances' shared-memory segments.
func TestStaleCleanup(t *testing.T) {
	dir := shortDir(t)
	cfg := writeConfig(t, dir, pipeline)
	p := startSupervisor(t, dir, cfg)
	p.submitAll(t, 2, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: "stale", Seed: int64(i), Steps: 1}
	})
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			pids = append(pids, in.PID)
		}
	}
	for _, pr := range st.Policies.Running {
		pids = append(pids, pr.PID)
	}
	segs := func() []string {
		var out []string
		for _, ph := range st.Phases {
			for _, in := range ph.Instances {
				m, _ := filepath.Glob(fmt.Sprintf("/dev/shm/phased-%s.%d-*", in.ID, in.PID))
				out = append(out, m...)
			}
		}
		return out
	}
	if len(segs()) == 0 {
		t.Fatal("no pooled segment after two requests: nothing to clean up")
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := p.waitExit(10 * time.Second); err == nil {
		t.Fatal("the killed supervisor exited 0")
	}
	if !eventually(2*time.Second, func() bool {
		for _, pid := range pids {
			if running(pid) {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("plugin processes %v outlived the supervisor's kill -9 by 2s", pids)
	}
	if _, err := os.Stat(st.RunDir); err != nil || len(segs()) == 0 {
		t.Fatalf("kill -9 left no run directory (%v) or no segments: nothing for the next start to do", err)
	}
	p2 := startSupervisor(t, dir, cfg)
	if _, err := os.Stat(st.RunDir); !os.IsNotExist(err) {
		t.Errorf("the old run directory %s is still there (%v)", st.RunDir, err)
	}
	if left := segs(); len(left) != 0 {
		t.Errorf("segments of the killed run are still there: %v", left)
	}
	p2.release(t)
}

// TestPins: `supervisor plugins lock` pins every plugin binary by SHA-256
// beside the config; start checks the pins, and refuses a binary that
// changed with both hashes and where it was pinned; `supervisor plugins`
// shows the mismatch.
func TestPins(t *testing.T) {
	dir := shortDir(t)
	plugins := filepath.Join(dir, "plugins")
	if err := os.MkdirAll(plugins, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"phased-phase-encoder", "phased-phase-transformer", "phased-phase-decoder", "phased-policy-roundrobin"} {
		b, err := os.ReadFile(filepath.Join(pluginDir, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(plugins, n), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, dir, pipeline)
	src, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(src), pluginDir, plugins, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := cli(t, "", "plugins", "lock", "--config", cfg)
	lockFile := filepath.Join(filepath.Dir(cfg), "phased.lock.hcl")
	if code != 0 || !strings.Contains(out, "pinned 4 plugins of "+plugins+" in "+lockFile) {
		t.Fatalf("plugins lock: exit %d, %q, %q", code, out, errOut)
	}
	out, errOut, code = cli(t, "", "plugins", "--config", cfg, "--json")
	var infos []supervisor.PluginInfo
	if code != 0 || json.Unmarshal([]byte(out), &infos) != nil || len(infos) != 4 {
		t.Fatalf("plugins --json: exit %d, %q, %q", code, out, errOut)
	}
	old := map[string]string{}
	for _, pi := range infos {
		if pi.Pin != pi.SHA256 || pi.Version == "" || len(pi.APIVersions) != 1 {
			t.Fatalf("plugin %+v: want pinned to its hash, with a version", pi)
		}
		old[pi.Name] = pi.SHA256
	}
	p := startSupervisor(t, dir, cfg)
	p.release(t)

	// The encoder binary changes under the pin.
	enc := filepath.Join(plugins, "phased-phase-encoder")
	f, err := os.OpenFile(enc, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("tampered")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	now, err := supervisor.FileSHA256(enc)
	if err != nil {
		t.Fatal(err)
	}
	msg := startFails(t, dir, "--config", cfg)
	want := fmt.Sprintf("%s has SHA-256 %s, but %s:", enc, now, lockFile)
	if !strings.Contains(msg, want) || !strings.Contains(msg, "pins "+old["encoder"]) {
		t.Fatalf("start with a changed binary:\n%s\nwant %q and the pinned hash %s", msg, want, old["encoder"])
	}
	out, _, _ = cli(t, "", "plugins", "--config", cfg)
	if !regexp.MustCompile(`(?m)^phase\s+encoder\s.*MISMATCH \(pinned ` + old["encoder"][:12]).MatchString(out) {
		t.Fatalf("plugins does not show the mismatch:\n%s", out)
	}
}

// TestOrphansAfterSupervisorKill: after kill -9 of the supervisor its
// plugins die within 2 s (parent-death signal); what a plugin started
// itself is killed by the next start, which finds the dead supervisor's
// run directory.
func TestOrphansAfterSupervisorKill(t *testing.T) {
	dir := shortDir(t)
	cfg := writeConfig(t, dir, forkerPipeline(dir, ""))
	p := startSupervisor(t, dir, cfg)
	gc := grandchild(t, dir)
	plugin := instanceStatus(t, p, "encoder-0").PID
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.waitExit(10 * time.Second)
	if !eventually(2*time.Second, func() bool { return !running(plugin) }) {
		t.Fatalf("plugin %d outlived its supervisor by 2s", plugin)
	}
	if err := os.Remove(filepath.Join(dir, "grandchild.pid")); err != nil {
		t.Fatal(err)
	}
	p2 := startSupervisor(t, dir, cfg)
	if !eventually(2*time.Second, func() bool { return !running(gc) }) {
		t.Errorf("the dead plugin's own child %d outlived the next start", gc)
	}
	p2.release(t)
}
