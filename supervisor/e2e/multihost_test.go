package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/phased/phased/internal/netns"
	"github.com/phased/phased/supervisor"
)

// daemon is a long-running process of a test host: etcd, an agent.
type daemon struct {
	name   string
	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
	err    error
}

// startDaemon starts name (its binary and args) on host h (nil: this
// one); it is stopped (SIGTERM, then SIGKILL) at the end of the test.
func startDaemon(t *testing.T, h *netns.Host, name string, bin string, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if h != nil {
		cmd = h.Command(bin, args...)
	}
	d := &daemon{name: name, cmd: cmd, log: &syncBuffer{}, exited: make(chan struct{})}
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout = d.cmd.Stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			d.log.Write([]byte(sc.Text() + "\n"))
		}
		d.err = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.stop()
		if strings.Contains(d.log.String(), "WARNING: DATA RACE") {
			t.Errorf("%s: a data race was reported in its log", name)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, d.log.String())
		}
	})
	return d
}

// stop stops the daemon: SIGTERM, and SIGKILL after 15 s.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// waitLog waits until the daemon's log matches re.
func waitLog(t *testing.T, name string, log *syncBuffer, re string, d time.Duration) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if m := rx.FindString(log.String()); m != "" {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: no log line matching %q within %s", name, re, d)
	return ""
}

// instancesOn returns the ready instances of p on each host, by phase.
func instancesOn(t *testing.T, p *proc) map[string]map[string][]string {
	t.Helper()
	st, err := p.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]string{}
	for _, ph := range st.Phases {
		for _, in := range ph.Instances {
			if in.State != "ready" {
				continue
			}
			if out[in.Host] == nil {
				out[in.Host] = map[string][]string{}
			}
			out[in.Host][ph.Name] = append(out[in.Host][ph.Name], in.ID)
		}
	}
	return out
}

// waitInstances waits until ok holds of p's ready instances by host.
func waitInstances(t *testing.T, p *proc, what string, d time.Duration, ok func(map[string]map[string][]string) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := instancesOn(t, p)
		if ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; ready instances by host: %v", what, d, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// etcdKeys lists the keys under prefix, read with etcdctl on host h.
func etcdKeys(t *testing.T, h *netns.Host, endpoint, prefix string) []string {
	t.Helper()
	cmd := h.Command("etcdctl", "--endpoints", endpoint, "get", "--prefix", "--keys-only", prefix)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl get %s: %v: %s", prefix, err, out)
	}
	var keys []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			keys = append(keys, l)
		}
	}
	return keys
}

// TestMultiHost runs a pipeline over three test hosts, network
// namespaces joined by a bridge: host a runs etcd and the supervisor
// (no instance of its own), host b an agent with an encoder, a
// transformer and a decoder, host c an agent with two transformers.
// Requests must give the single-host artifacts byte for byte, with their
// hops between hosts over zmq (CURVE); cutting host c's link must have
// its requests dispatched again and done on host b once c's lease
// expires; restoring the link brings c's instances back; an agent whose
// certificate is from another CA is refused; release and the agents'
// stop leave no process, socket, segment or etcd key behind.
func TestMultiHost(t *testing.T) {
	if err := netns.Available(); err != nil {
		t.Skip("TestMultiHost: ", err)
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("TestMultiHost needs etcd and etcdctl: apt-get install etcd-server etcd-client (.ci/run does)")
	}
	dir := shortDir(t)
	n, err := netns.New("phd", "a", "b", "c", "d")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // last: every process of theirs is stopped by then
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	A, B, C, D := n.Host("a"), n.Host("b"), n.Host("c"), n.Host("d")

	// Credentials: one CA for the cluster, and another CA's for host d.
	ca, rogue := filepath.Join(dir, "ca"), filepath.Join(dir, "ca2")
	tlsCLI(t, "init", "--dir", ca)
	tlsCLI(t, "init", "--dir", rogue)
	tlsCLI(t, "issue", "hosta", "--dir", ca, "--ip", A.Addr, "--role", "supervisor")
	for _, h := range []*netns.Host{B, C} {
		tlsCLI(t, "issue", "host"+h.Name, "--dir", ca, "--ip", h.Addr)
	}
	tlsCLI(t, "issue", "hostd", "--dir", rogue, "--ip", D.Addr)

	// The lease TTL: 3 s, or PHASED_TEST_LEASE_TTL, to measure the
	// failover against other TTLs (it is logged).
	ttl := 3 * time.Second
	if v := os.Getenv("PHASED_TEST_LEASE_TTL"); v != "" {
		if ttl, err = time.ParseDuration(v); err != nil {
			t.Fatalf("PHASED_TEST_LEASE_TTL: %v", err)
		}
	}
	endpoint := "http://" + A.Addr + ":2379"
	etcd := startDaemon(t, A, "etcd", "etcd", "--name", "a", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
		"--listen-peer-urls", "http://"+A.Addr+":2380", "--initial-advertise-peer-urls", "http://"+A.Addr+":2380",
		"--initial-cluster", "a=http://"+A.Addr+":2380")
	waitLog(t, "etcd", etcd.log, "ready to serve client requests", 30*time.Second)

	agent := func(h *netns.Host, caDir string, flags ...string) *daemon {
		args := []string{"agent", "--host", "host" + h.Name, "--listen", h.Addr + ":7443", "--tls-dir", filepath.Join(caDir, "host"+h.Name),
			"--plugin-dir", pluginDir, "--etcd", endpoint, "--lease-ttl", ttl.String(), "--log-level", "debug"}
		return startDaemon(t, h, "agent "+h.Name, supervisorBin, append(args, flags...)...)
	}
	// Host b has room for one more transformer, for scaling.
	agentB := agent(B, ca, "--serve", "encoder=1", "--serve", "transformer=1", "--serve", "decoder=1", "--max", "transformer=2")
	agentC := agent(C, ca, "--serve", "transformer=2")

	cfg := writeConfig(t, dir, fmt.Sprintf(`
retries = 3
phase "encoder"     {
  plugin    = "encoder"
  instances = 0
}
phase "transformer" {
  plugin    = "flaky" # the transformer, paced at 40 ms a step
  instances = 0
  max       = 8 # instances on every host, as supervisor scale counts them
  params    = { marker_dir = %q, pace = "40ms" }
}
phase "decoder"     {
  plugin    = "decoder"
  instances = 0
}
cluster {
  host      = "hosta"
  address   = %q
  tls_dir   = %q
  etcd      = [%q]
  lease_ttl = %q
}
`, dir, A.Addr, filepath.Join(ca, "hosta"), endpoint, ttl))
	p := startSupervisorIn(t, dir, cfg, A)
	full := func(m map[string]map[string][]string) bool {
		return len(m["hostb"]["encoder"]) == 1 && len(m["hostb"]["transformer"]) == 1 && len(m["hostb"]["decoder"]) == 1 && len(m["hostc"]["transformer"]) == 2
	}
	waitInstances(t, p, "the agents' instances ready", time.Minute, full)

	// 1. Artifacts as on one host; hops between hosts on zmq, on one
	// host on shm.
	check := func(infos []supervisor.RequestInfo, prompt func(i int) string, steps int) {
		t.Helper()
		for i, info := range infos {
			got, err := os.ReadFile(info.Artifact)
			if err != nil {
				t.Fatal(err)
			}
			if want := reference(t, prompt(i), int64(i), steps); string(got) != string(want) {
				t.Fatalf("request %d (%s): artifact differs from the single-host reference", i, info.ID)
			}
		}
	}
	prompt := func(i int) string { return fmt.Sprintf("a lighthouse %d", i) }
	infos := p.submitAll(t, 6, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: prompt(i), Seed: int64(i), Steps: 4}
	})
	check(infos, prompt, 4)
	onC := 0
	for _, info := range infos {
		full, err := p.client.Request(context.Background(), info.ID)
		if err != nil {
			t.Fatal(err)
		}
		cross := !slices.Contains(instancesOn(t, p)["hostb"]["transformer"], full.Instances["transformer"])
		want := []string{"shm", "shm"}
		if cross {
			want, onC = []string{"zmq", "zmq"}, onC+1
		}
		if !slices.Equal(full.Backends, want) {
			t.Fatalf("request %s through transformer %s: backends %v, want %v", info.ID, full.Instances["transformer"], full.Backends, want)
		}
	}
	if onC == 0 {
		t.Fatalf("no request went through host c's transformers")
	}

	// 2. Cut host c while its transformers compute: its requests are
	// dispatched again, done on host b.
	ctx := context.Background()
	slow := func(i int) string { return fmt.Sprintf("a harbour %d", i) }
	const slowSteps = 40 // 1.6 s each at 40 ms a step
	var ids []string
	for i := range 6 {
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: slow(i), Seed: int64(i), Steps: slowSteps})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	cTransformers := instancesOn(t, p)["hostc"]["transformer"]
	waitComputingOn := func() {
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			for _, id := range ids {
				info, err := p.client.Request(ctx, id)
				if err == nil && slices.Contains(cTransformers, info.Instances["transformer"]) {
					for _, pr := range info.Progress {
						if pr.Phase == "transformer" && pr.Done > 0 {
							return
						}
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("no request computing on host c")
	}
	waitComputingOn()
	cut := time.Now()
	if err := C.Cut(); err != nil {
		t.Fatal(err)
	}
	waitInstances(t, p, "host c's instances taken for lost", time.Minute, func(m map[string]map[string][]string) bool { return len(m["hostc"]) == 0 })
	lost := time.Since(cut)
	results := make([]supervisor.RequestInfo, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			results[i], _ = p.client.Watch(wctx, id, nil)
		})
	}
	wg.Wait()
	retried := 0
	for i, info := range results {
		if info.State != supervisor.StateDone {
			t.Fatalf("request %d (%s) after the cut: state %q, reason %q", i, ids[i], info.State, info.Reason)
		}
		if info.Attempts > 1 {
			retried++
		}
	}
	check(results, slow, slowSteps)
	if retried == 0 {
		t.Fatal("no request was dispatched again after host c was cut")
	}
	t.Logf("failover: host c taken for lost %s after its link was cut (lease TTL %s); %d requests dispatched again, all done with the reference artifacts", lost.Round(10*time.Millisecond), ttl, retried)

	// 3. Restore the link: host c registers again and its transformers
	// come back (new instances).
	if err := C.Restore(); err != nil {
		t.Fatal(err)
	}
	waitInstances(t, p, "host c's instances back", time.Minute, full)
	back := instancesOn(t, p)["hostc"]["transformer"]
	for _, id := range back {
		if slices.Contains(cTransformers, id) {
			t.Fatalf("host c came back with instance %s of before the cut: want new instances", id)
		}
	}
	infos = p.submitAll(t, 4, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: prompt(i), Seed: int64(i), Steps: 4}
	})
	check(infos, prompt, 4)

	// Scaling counts every host's instances: a fourth transformer
	// starts on host b, the one with room (host c is full), and a
	// scale-in retires it, never an agent's own.
	res, err := p.client.Scale(ctx, "transformer", 4)
	if err != nil || len(res.Started) != 1 || res.From != 3 || res.To != 4 {
		t.Fatalf("scale transformer 4: %+v, %v", res, err)
	}
	if on := instancesOn(t, p)["hostb"]["transformer"]; !slices.Contains(on, res.Started[0]) || len(on) != 2 {
		t.Fatalf("scale-out started %s; host b's transformers: %v", res.Started[0], on)
	}
	if _, err := p.client.Scale(ctx, "transformer", 5); err == nil || !strings.Contains(err.Error(), "no host has room for 1 more instances") {
		t.Fatalf("scale transformer 5 with every host full: %v", err)
	}
	down, err := p.client.Scale(ctx, "transformer", 3)
	if err != nil || !slices.Equal(down.Retired, res.Started) {
		t.Fatalf("scale transformer 3: %+v, %v; want %v retired", down, err, res.Started)
	}
	if _, err := p.client.Scale(ctx, "transformer", 2); err == nil || !strings.Contains(err.Error(), "the agents' own") {
		t.Fatalf("scale transformer 2, below the agents' own: %v", err)
	}
	waitInstances(t, p, "three transformers after scaling", time.Minute, full)

	// 4. An agent whose certificate is from another CA registers in etcd
	// and is refused: the supervisor never joins it.
	agentD := agent(D, rogue, "--serve", "transformer=1")
	waitLog(t, "agent d", agentD.log, "registered in etcd", 30*time.Second)
	waitLog(t, "supervisor", p.log, `an agent does not answer.*host=hostd.*(certificate|authority)`, 30*time.Second)
	if m := instancesOn(t, p); len(m["hostd"]) > 0 {
		t.Fatalf("an instance on host d, whose certificate is from another CA: %v", m["hostd"])
	}
	agentD.stop()

	// 5. Release, then stop the agents: no process, socket, segment or
	// etcd key is left.
	pids := instancePIDs(t, p)
	p.release(t)
	if keys := etcdKeys(t, A, endpoint, "/phased/instances/"); len(keys) > 0 {
		t.Fatalf("etcd keys of instances after release: %v", keys)
	}
	for _, pid := range pids {
		if running(pid) {
			t.Fatalf("instance process %d still runs after release", pid)
		}
	}
	runDirs := regexp.MustCompile(`run_dir=(\S+)`)
	var agentDirs []string
	for _, d := range []*daemon{agentB, agentC} {
		for _, m := range runDirs.FindAllStringSubmatch(d.log.String(), -1) {
			agentDirs = append(agentDirs, m[1])
		}
		d.stop()
		if d.err != nil {
			t.Fatalf("%s exited with %v", d.name, d.err)
		}
	}
	if keys := etcdKeys(t, A, endpoint, "/phased/"); len(keys) > 0 {
		t.Fatalf("etcd keys after the agents stopped: %v", keys)
	}
	for _, d := range agentDirs {
		if _, err := os.Stat(d); err == nil {
			t.Fatalf("an agent's run directory is left: %s", d)
		}
	}
	if left := leftovers(t, dir, pids); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
