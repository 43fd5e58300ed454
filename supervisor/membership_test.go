package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/phased/phased/supervisor/agentv1"
)

func TestParseAgent(t *testing.T) {
	valid := agentRecord{Host: "hostb", Address: "10.0.0.2:7443", ZMQHost: "10.0.0.2", GPUs: []string{"0", "1"},
		Offers: map[string]int{"transformer": 2}, LeaseTTLms: 10000}
	record := func(edit func(*agentRecord)) string {
		r := valid
		if edit != nil {
			edit(&r)
		}
		b, _ := json.Marshal(r)
		return string(b)
	}
	big := record(func(r *agentRecord) { r.ZMQHost = strings.Repeat("x", maxRecord) })
	tests := []struct {
		name, key, value string
		want             agentRecord
		wantErr          string
	}{
		{name: "valid", key: "/t/agents/hostb", value: record(nil), want: valid},
		{name: "IPv6 address", key: "/t/agents/hostb", value: record(func(r *agentRecord) { r.Address = "[fd00::2]:7443" }),
			want: agentRecord{Host: "hostb", Address: "[fd00::2]:7443", ZMQHost: "10.0.0.2", GPUs: []string{"0", "1"}, Offers: map[string]int{"transformer": 2}, LeaseTTLms: 10000}},
		{name: "host not the key's", key: "/t/agents/hostc", value: record(nil),
			wantErr: `etcd key /t/agents/hostc: host "hostb": expected the key's last part, a host label`},
		{name: "key under another prefix", key: "/u/agents/hostb", value: record(nil),
			wantErr: `etcd key /u/agents/hostb: host "hostb": expected the key's last part, a host label`},
		{name: "host not a label", key: "/t/agents/host b", value: record(func(r *agentRecord) { r.Host = "host b" }),
			wantErr: `etcd key /t/agents/host b: host "host b": expected the key's last part, a host label`},
		{name: "no host", key: "/t/agents/", value: record(func(r *agentRecord) { r.Host = "" }),
			wantErr: `etcd key /t/agents/: host "": expected the key's last part, a host label`},
		{name: "address without a port", key: "/t/agents/hostb", value: record(func(r *agentRecord) { r.Address = "10.0.0.2" }),
			wantErr: `etcd key /t/agents/hostb: address "10.0.0.2": expected HOST:PORT`},
		{name: "address without a host", key: "/t/agents/hostb", value: record(func(r *agentRecord) { r.Address = ":7443" }),
			wantErr: `etcd key /t/agents/hostb: address ":7443": expected HOST:PORT`},
		{name: "address with port 0", key: "/t/agents/hostb", value: record(func(r *agentRecord) { r.Address = "10.0.0.2:0" }),
			wantErr: `etcd key /t/agents/hostb: address "10.0.0.2:0": expected HOST:PORT`},
		{name: "address with an empty port", key: "/t/agents/hostb", value: record(func(r *agentRecord) { r.Address = "10.0.0.2:" }),
			wantErr: `etcd key /t/agents/hostb: address "10.0.0.2:": expected HOST:PORT`},
		{name: "address with a port out of range", key: "/t/agents/hostb", value: record(func(r *agentRecord) { r.Address = "10.0.0.2:99999" }),
			wantErr: `etcd key /t/agents/hostb: address "10.0.0.2:99999": expected HOST:PORT`},
		{name: "oversized", key: "/t/agents/hostb", value: big,
			wantErr: fmt.Sprintf("etcd key /t/agents/hostb: %d bytes: a registration holds at most %d", len(big), maxRecord)},
		{name: "bad JSON", key: "/t/agents/hostb", value: `{"host":"hostb",`,
			wantErr: "etcd key /t/agents/hostb: unexpected end of JSON input"},
		{name: "JSON of the wrong type", key: "/t/agents/hostb", value: `{"host":"hostb","address":7443}`,
			wantErr: "etcd key /t/agents/hostb: json: cannot unmarshal number into Go struct field agentRecord.address of type string"},
		{name: "empty value", key: "/t/agents/hostb", value: ``,
			wantErr: "etcd key /t/agents/hostb: unexpected end of JSON input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAgent("/t", []byte(tt.key), []byte(tt.value))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error %v\nwant %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("record %+v, want %+v", got, tt.want)
			}
		})
	}
}

// startEtcd runs etcd on free ports of 127.0.0.1 with a data directory of
// the test's, and returns its client endpoint and a client of it; both
// end with the test. The test is skipped without an etcd binary.
func startEtcd(t *testing.T) (string, *clientv3.Client) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd binary on PATH (Debian: apt-get install etcd-server)")
	}
	client, peer := "http://"+freeAddr(t), "http://"+freeAddr(t)
	log := &syncBuffer{}
	cmd := exec.Command(bin, "--name", "t", "--data-dir", t.TempDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t="+peer,
		"--logger", "zap", "--log-level", "error")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("etcd's log:\n%s", log.String())
		}
	})
	cli, err := etcdClient([]string{client})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	// Calls wait for etcd to serve.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up := make(chan error, 1)
	go func() {
		_, err := cli.Get(ctx, "/")
		up <- err
	}()
	select {
	case err := <-up:
		if err != nil {
			t.Fatalf("etcd at %s does not serve: %v\n%s", client, err, log.String())
		}
	case <-exited:
		cancel()
		t.Fatalf("etcd exited: %s", log.String())
	}
	return client, cli
}

// keys returns the keys under prefix, and their values and leases.
func keys(t *testing.T, cli *clientv3.Client, prefix string) map[string]struct {
	value string
	lease int64
} {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]struct {
		value string
		lease int64
	}{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = struct {
			value string
			lease int64
		}{string(kv.Value), kv.Lease}
	}
	return m
}

// waitKey waits up to 30s for key to be put (again) with a lease other
// than notLease, and returns its lease.
func waitKey(t *testing.T, cli *clientv3.Client, key string, notLease int64) int64 {
	t.Helper()
	var lease int64
	if !waitFor(30*time.Second, func() bool {
		kv, ok := keys(t, cli, key)[key]
		lease = kv.lease
		return ok && lease != notLease
	}) {
		t.Fatalf("%s is not put (under a lease other than %x) within 30s", key, notLease)
	}
	return lease
}

// TestRegistry registers an agent and its instances in a real etcd, and
// leaves.
func TestRegistry(t *testing.T) {
	ep, cli := startEtcd(t)
	lost := make(chan struct{}, 1)
	r, err := newRegistry(AgentConfig{Etcd: []string{ep}, Prefix: "/t", LeaseTTL: 2 * time.Second, Host: "hostb"},
		hclog.NewNullLogger(), func() { lost <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = r.close()
		}
	})
	rec := agentRecord{Host: "hostb", Address: "10.0.0.2:7443", ZMQHost: "10.0.0.2", GPUs: []string{"0"},
		Offers: map[string]int{"transformer": 2}, LeaseTTLms: 2000}
	r.run(rec)
	lease := waitKey(t, cli, "/t/agents/hostb", 0)
	var got agentRecord
	if err := json.Unmarshal([]byte(keys(t, cli, "/t/agents/hostb")["/t/agents/hostb"].value), &got); err != nil || !reflect.DeepEqual(got, rec) {
		t.Errorf("/t/agents/hostb: %+v (%v), want %+v", got, err, rec)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil || ttl.GrantedTTL != 2 {
		t.Errorf("lease %x: granted TTL %d (%v), want 2", lease, ttl.GrantedTTL, err)
	}
	if !waitFor(10*time.Second, r.registered) {
		t.Fatal("registered() is false with the agent's key put")
	}

	in := instanceRecord{ID: "transformer-0", Phase: "transformer", Host: "hostb", PID: 4242, Session: "s1"}
	r.addInstance("transformer-0", in)
	kv, ok := keys(t, cli, "/t/instances/hostb/transformer-0")["/t/instances/hostb/transformer-0"]
	var gotIn instanceRecord
	if !ok || json.Unmarshal([]byte(kv.value), &gotIn) != nil || gotIn != in || kv.lease != lease {
		t.Errorf("/t/instances/hostb/transformer-0: %v %+v, lease %x; want %+v under lease %x", ok, gotIn, kv.lease, in, lease)
	}
	r.removeInstance("transformer-0")
	if _, ok := keys(t, cli, "/t/instances/")["/t/instances/hostb/transformer-0"]; ok {
		t.Error("/t/instances/hostb/transformer-0 is left after removeInstance")
	}
	r.addInstance("transformer-1", instanceRecord{ID: "transformer-1", Phase: "transformer", Host: "hostb", PID: 4243, Session: "s1"})
	if n := len(keys(t, cli, "/t/")); n != 2 {
		t.Errorf("%d keys under /t/, want the agent's and transformer-1's", n)
	}

	closed = true
	if err := r.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	// Revoked at once: the keys do not wait for the lease to expire.
	if left := keys(t, cli, "/t/"); len(left) != 0 {
		t.Errorf("keys left under /t/ after close: %v", left)
	}
	if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(lease)); err != nil || ttl.TTL != -1 {
		t.Errorf("lease %x after close: TTL %d (%v), want -1 (revoked)", lease, ttl.TTL, err)
	}
	select {
	case <-lost:
		t.Error("onLost was called, and the lease was never lost")
	default:
	}
}

// TestRegistryLeaseLost: a lease revoked from outside is lost: the agent
// is told (it stops its instances), and registers again, its instances
// with it, under a new lease.
func TestRegistryLeaseLost(t *testing.T) {
	ep, cli := startEtcd(t)
	lost := make(chan struct{}, 4)
	r, err := newRegistry(AgentConfig{Etcd: []string{ep}, Prefix: "/t", LeaseTTL: 2 * time.Second, Host: "hostb"},
		hclog.NewNullLogger(), func() { lost <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.close() })
	r.run(agentRecord{Host: "hostb", Address: "10.0.0.2:7443"})
	first := waitKey(t, cli, "/t/agents/hostb", 0)
	if !waitFor(10*time.Second, r.registered) {
		t.Fatal("registered() is false with the agent's key put")
	}
	r.addInstance("transformer-0", instanceRecord{ID: "transformer-0", Phase: "transformer", Host: "hostb", PID: 1, Session: "s1"})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(first)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("onLost was not called within 30s of the lease's revocation")
	}
	second := waitKey(t, cli, "/t/agents/hostb", first)
	if l := waitKey(t, cli, "/t/instances/hostb/transformer-0", first); l != second {
		t.Errorf("transformer-0 registered again under lease %x, the agent under %x", l, second)
	}
}

// TestAgentEtcd: an agent with etcd registers itself and the instances it
// launches, ready once registered, and leaves no key when it stops.
func TestAgentEtcd(t *testing.T) {
	ep, cli := startEtcd(t)
	plugins := buildPlugins(t)
	health := freeAddr(t)
	ta := startAgent(t, plugins, func(c *AgentConfig) {
		c.Etcd, c.Prefix, c.LeaseTTL, c.Health = []string{ep}, "/e", 2*time.Second, health
	})
	lease := waitKey(t, cli, "/e/agents/hostb", 0)
	var rec agentRecord
	if err := json.Unmarshal([]byte(keys(t, cli, "/e/agents/hostb")["/e/agents/hostb"].value), &rec); err != nil ||
		rec.Address != ta.cfg.Listen || rec.ZMQHost != "127.0.0.1" || rec.LeaseTTLms != 2000 || rec.Offers["transformer"] != 2 {
		t.Errorf("registration %+v (%v)", rec, err)
	}
	if !waitFor(10*time.Second, func() bool { code, _ := get(t, "http://"+health+"/readyz"); return code == http.StatusOK }) {
		t.Error("/readyz is not 200 with the agent registered")
	}

	resp := ta.launch(t, "s1", "transformer-0")
	kv, ok := keys(t, cli, "/e/instances/hostb/s1.transformer-0")["/e/instances/hostb/s1.transformer-0"]
	var in instanceRecord
	if !ok || json.Unmarshal([]byte(kv.value), &in) != nil || kv.lease != lease ||
		in != (instanceRecord{ID: "transformer-0", Phase: "transformer", Host: "hostb", PID: int(resp.GetPid()), Session: "s1"}) {
		t.Errorf("instance key: %v %+v under lease %x (agent's %x)", ok, in, kv.lease, lease)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := ta.client.Stop(ctx, &agentv1.StopRequest{Session: "s1", Instance: "transformer-0"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := keys(t, cli, "/e/instances/")["/e/instances/hostb/s1.transformer-0"]; ok {
		t.Error("the instance's key is left after Stop")
	}
	ta.launch(t, "s1", "transformer-1")
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if left := keys(t, cli, "/e/"); len(left) != 0 {
		t.Errorf("keys left under /e/ after the agent stopped: %v", left)
	}
}

// TestAgentHealthNotRegistered: an agent that cannot reach etcd is
// healthy and not ready.
func TestAgentHealthNotRegistered(t *testing.T) {
	health := freeAddr(t)
	ta := startAgent(t, t.TempDir(), func(c *AgentConfig) {
		c.Etcd, c.Health = []string{"http://" + freeAddr(t)}, health // nothing serves there
	})
	for _, tt := range []struct {
		path string
		code int
		body string
	}{
		{"/healthz", http.StatusOK, "ok\n"},
		{"/readyz", http.StatusServiceUnavailable, "not registered in etcd yet\n"},
	} {
		code, body := get(t, "http://"+health+tt.path)
		if code != tt.code || body != tt.body {
			t.Errorf("GET %s: %d %q, want %d %q", tt.path, code, body, tt.code, tt.body)
		}
	}
	if err := ta.stop(); err != nil {
		t.Errorf("Run, with etcd unreachable: %v", err)
	}
}

// get returns the status code and body of GET url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
