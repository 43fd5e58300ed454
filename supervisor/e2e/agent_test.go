package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// freePort returns a TCP port free on loopback a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestStaticAgents runs agents listed in the config, without etcd, on
// this machine's loopback (no root needed): the encoder and decoder on
// the supervisor's host, a transformer on agent hostb, and one on agent
// hostc, whose bundle holds another cluster's CURVE key. Requests through
// hostb's transformer give the single-host artifacts over zmq with CURVE;
// those placed on hostc's fail, saying its key was refused, and no
// tensor reaches it. Killing hostb's agent loses the host once it is
// unreachable for lease_ttl; started again, it joins again with a new
// instance.
func TestStaticAgents(t *testing.T) {
	dir := shortDir(t)
	ca, other := filepath.Join(dir, "ca"), filepath.Join(dir, "other")
	tlsCLI(t, "init", "--dir", ca)
	tlsCLI(t, "init", "--dir", other)
	tlsCLI(t, "issue", "hosta", "--dir", ca, "--ip", "127.0.0.1", "--role", "supervisor")
	for _, h := range []string{"hostb", "hostc"} {
		tlsCLI(t, "issue", h, "--dir", ca, "--ip", "127.0.0.1")
	}
	// hostc's certificate is the cluster's, its CURVE key another's.
	key, err := os.ReadFile(filepath.Join(other, "curve.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ca, "hostc", "curve.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	portB, portC := freePort(t), freePort(t)
	agent := func(host string, port int) *daemon {
		d := startDaemon(t, nil, "agent "+host, supervisorBin, "agent", "--host", host, "--listen", "127.0.0.1:"+strconv.Itoa(port),
			"--tls-dir", filepath.Join(ca, host), "--plugin-dir", pluginDir, "--serve", "transformer=1", "--lease-ttl", "2s", "--log-level", "debug")
		waitLog(t, "agent "+host, d.log, "agent serving", 30*time.Second)
		return d
	}
	agentB := agent("hostb", portB)
	agent("hostc", portC)
	cfg := writeConfig(t, dir, fmt.Sprintf(`
peer_timeout = "2s"
phase "encoder"     { plugin = "encoder" }
phase "transformer" {
  plugin    = "transformer"
  instances = 0
}
phase "decoder"     { plugin = "decoder" }
cluster {
  host      = "hosta"
  address   = "127.0.0.1"
  tls_dir   = %q
  lease_ttl = "2s"
  agent "hostb" { address = "127.0.0.1:%d" }
  agent "hostc" { address = "127.0.0.1:%d" }
}
`, filepath.Join(ca, "hosta"), portB, portC))
	p := startSupervisor(t, dir, cfg)
	both := func(m map[string]map[string][]string) bool {
		return len(m["hostb"]["transformer"]) == 1 && len(m["hostc"]["transformer"]) == 1 && len(m["hosta"]["encoder"]) == 1
	}
	waitInstances(t, p, "both agents' transformers ready", time.Minute, both)
	onB := instancesOn(t, p)["hostb"]["transformer"][0]

	// Requests in turn on both transformers: hostb's give the reference
	// over zmq, hostc's fail on its CURVE key.
	ctx := context.Background()
	done, refused := 0, 0
	for i := range 4 {
		id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: fmt.Sprintf("a kite %d", i), Seed: int64(i), Steps: 3})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		info, err := p.client.Watch(wctx, id, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		full, err := p.client.Request(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		switch via := full.Instances["transformer"]; {
		case via == onB:
			if info.State != supervisor.StateDone || !slices.Equal(full.Backends, []string{"zmq", "zmq"}) {
				t.Fatalf("request %s through hostb: state %s (%s), backends %v", id, info.State, info.Reason, full.Backends)
			}
			got, err := os.ReadFile(info.Artifact)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(reference(t, fmt.Sprintf("a kite %d", i), int64(i), 3)) {
				t.Fatalf("request %s through hostb: artifact differs from the single-host reference", id)
			}
			done++
		default:
			if info.State != supervisor.StateFailed || !strings.Contains(info.Reason, "CURVE") {
				t.Fatalf("request %s through hostc (another cluster's CURVE key): state %s, reason %q; want failed, saying CURVE", id, info.State, info.Reason)
			}
			t.Logf("through hostc: %s", info.Reason)
			refused++
		}
	}
	if done == 0 || refused == 0 {
		t.Fatalf("%d requests done through hostb, %d refused on hostc: want both", done, refused)
	}

	// hostb's agent dies: the host is lost once unreachable for
	// lease_ttl, and joins again, with a new instance, when it is back.
	_ = agentB.cmd.Process.Kill()
	<-agentB.exited
	waitInstances(t, p, "hostb lost", time.Minute, func(m map[string]map[string][]string) bool { return len(m["hostb"]) == 0 })
	agent("hostb", portB)
	waitInstances(t, p, "hostb back", time.Minute, both)
	if again := instancesOn(t, p)["hostb"]["transformer"][0]; again == onB {
		t.Fatalf("hostb came back with instance %s of before: want a new one", again)
	}
	pids := instancePIDs(t, p)
	p.release(t)
	for _, pid := range pids {
		if running(pid) {
			t.Fatalf("instance process %d still runs after release", pid)
		}
	}
	if left := leftovers(t, dir, pids); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
