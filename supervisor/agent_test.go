package supervisor

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/agentv1"
	"github.com/phased/phased/supervisor/config"
	"github.com/phased/phased/supervisor/pki"
)

func TestAgentConfigCheck(t *testing.T) {
	hostname, _ := os.Hostname()
	base := func(edit func(*AgentConfig)) AgentConfig {
		c := AgentConfig{Host: "hostb", Listen: "10.0.0.2:7443", TLSDir: "tls"}
		if edit != nil {
			edit(&c)
		}
		return c
	}
	tests := []struct {
		name string
		cfg  AgentConfig
		// want, when no error: the defaults filled in
		host, prefix, advertise, zmqHost string
		ttl                              time.Duration
		wantErr                          []string
	}{
		{
			name: "defaults", cfg: base(nil),
			host: "hostb", prefix: DefaultEtcdPrefix, advertise: "10.0.0.2:7443", zmqHost: "10.0.0.2", ttl: DefaultLeaseTTL,
		},
		{
			name: "host name by default", cfg: base(func(c *AgentConfig) { c.Host = "" }),
			host: hostname, prefix: DefaultEtcdPrefix, advertise: "10.0.0.2:7443", zmqHost: "10.0.0.2", ttl: DefaultLeaseTTL,
		},
		{
			name: "wildcard listen, advertised name",
			cfg:  base(func(c *AgentConfig) { c.Listen, c.Advertise = "0.0.0.0:7443", "agent-b.lan:7000" }),
			host: "hostb", prefix: DefaultEtcdPrefix, advertise: "agent-b.lan:7000", zmqHost: "agent-b.lan", ttl: DefaultLeaseTTL,
		},
		{
			name: "own zmq host, prefix and TTL",
			cfg: base(func(c *AgentConfig) {
				c.ZMQHost, c.Prefix, c.LeaseTTL, c.Health = "192.168.7.2", "/prod", 3*time.Second, "127.0.0.1:8080"
				c.Offers = map[string]int{"transformer": 64, "encoder": 0}
			}),
			host: "hostb", prefix: "/prod", advertise: "10.0.0.2:7443", zmqHost: "192.168.7.2", ttl: 3 * time.Second,
		},
		{
			// The zmq host of an IPv6 advertise address is bracketed, as
			// transfer.CheckHost wants it.
			name: "IPv6 advertise", cfg: base(func(c *AgentConfig) { c.Listen = "[fd00::2]:7443" }),
			host: "hostb", prefix: DefaultEtcdPrefix, advertise: "[fd00::2]:7443", zmqHost: "[fd00::2]", ttl: DefaultLeaseTTL,
		},
		{
			name:    "wildcard advertise",
			cfg:     base(func(c *AgentConfig) { c.Listen = "0.0.0.0:7443" }),
			wantErr: []string{`advertise "0.0.0.0:7443": expected HOST:PORT that supervisors can dial: no wildcard, no port 0`},
		},
		{
			name:    "IPv6 wildcard advertise",
			cfg:     base(func(c *AgentConfig) { c.Listen, c.Advertise = "10.0.0.2:7443", "[::]:7443" }),
			wantErr: []string{`advertise "[::]:7443": expected HOST:PORT that supervisors can dial: no wildcard, no port 0`},
		},
		{
			name:    "advertise without a host",
			cfg:     base(func(c *AgentConfig) { c.Listen = ":7443" }),
			wantErr: []string{`advertise ":7443": expected HOST:PORT that supervisors can dial: no wildcard, no port 0`},
		},
		{
			// Supervisors ignore a registration with port 0 (parseAgent).
			name:    "advertise port 0",
			cfg:     base(func(c *AgentConfig) { c.Listen = "127.0.0.1:0" }),
			wantErr: []string{`advertise "127.0.0.1:0"`},
		},
		{
			name:    "listen without a port",
			cfg:     base(func(c *AgentConfig) { c.Listen, c.Advertise = "10.0.0.2", "10.0.0.2:7443" }),
			wantErr: []string{`listen "10.0.0.2": expected HOST:PORT, e.g. 10.0.0.2:7443`},
		},
		{
			name:    "bad host label",
			cfg:     base(func(c *AgentConfig) { c.Host = "host/b" }),
			wantErr: []string{`host "host/b": expected 1 to 63 letters, digits, '.', '_' or '-'`},
		},
		{
			name:    "host label too long",
			cfg:     base(func(c *AgentConfig) { c.Host = strings.Repeat("b", 64) }),
			wantErr: []string{`host "` + strings.Repeat("b", 64) + `": expected 1 to 63 letters`},
		},
		{
			name:    "sub-second lease TTL",
			cfg:     base(func(c *AgentConfig) { c.LeaseTTL = 500 * time.Millisecond }),
			wantErr: []string{`lease ttl 500ms: expected whole seconds, 1s or more`},
		},
		{
			name:    "fractional lease TTL",
			cfg:     base(func(c *AgentConfig) { c.LeaseTTL = 1500 * time.Millisecond }),
			wantErr: []string{`lease ttl 1.5s: expected whole seconds, 1s or more`},
		},
		{
			name:    "negative lease TTL",
			cfg:     base(func(c *AgentConfig) { c.LeaseTTL = -time.Second }),
			wantErr: []string{`lease ttl -1s: expected whole seconds, 1s or more`},
		},
		{
			name:    "serve count over 64",
			cfg:     base(func(c *AgentConfig) { c.Offers = map[string]int{"transformer": 65} }),
			wantErr: []string{`serve transformer=65: expected 0 to 64 instances`},
		},
		{
			name:    "negative serve count",
			cfg:     base(func(c *AgentConfig) { c.Offers = map[string]int{"decoder": -1} }),
			wantErr: []string{`serve decoder=-1: expected 0 to 64 instances`},
		},
		{
			name:    "bad health",
			cfg:     base(func(c *AgentConfig) { c.Health = "8080" }),
			wantErr: []string{`health "8080": expected HOST:PORT`},
		},
		{
			name:    "bad zmq host",
			cfg:     base(func(c *AgentConfig) { c.ZMQHost = "tcp://10.0.0.2" }),
			wantErr: []string{`zmq host "tcp://10.0.0.2": expected a host name or IP address`},
		},
		{
			name:    "no TLS dir",
			cfg:     base(func(c *AgentConfig) { c.TLSDir = "" }),
			wantErr: []string{"tls dir: required (a bundle from `supervisor tls issue HOST`)"},
		},
		{
			name: "every mistake at once",
			cfg: base(func(c *AgentConfig) {
				c.Host, c.Listen, c.LeaseTTL, c.Health, c.TLSDir = "-b", "0.0.0.0:1", 2500*time.Millisecond, "x", ""
			}),
			wantErr: []string{`host "-b"`, `advertise "0.0.0.0:1"`, `lease ttl 2.5s`, `health "x"`, "tls dir: required"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "host name by default" && !config.HostLabelRE.MatchString(hostname) {
				t.Skipf("this host's name %q is not a host label", hostname)
			}
			c := tt.cfg
			err := c.check()
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("checked (%+v); want an error", c)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []any{c.Host, c.Prefix, c.Advertise, c.ZMQHost, c.LeaseTTL}
			want := []any{tt.host, tt.prefix, tt.advertise, tt.zmqHost, tt.ttl}
			for i, what := range []string{"host", "prefix", "advertise", "zmq host", "lease TTL"} {
				if got[i] != want[i] {
					t.Errorf("%s %v, want %v", what, got[i], want[i])
				}
			}
			if c.Logger == nil {
				t.Error("no logger filled in")
			}
		})
	}
	// NewAgent checks, with the agent prefix.
	if _, err := NewAgent(AgentConfig{Host: "b", Listen: "0.0.0.0:1", TLSDir: "tls"}); err == nil ||
		!strings.HasPrefix(err.Error(), `agent: advertise "0.0.0.0:1"`) {
		t.Errorf("NewAgent of a wildcard advertise address: %v", err)
	}
}

// testPKI is a CA and the bundles issued from it, in a directory of the
// test's.
type testPKI struct{ dir string }

func newTestPKI(t *testing.T, hosts ...string) testPKI {
	t.Helper()
	p := testPKI{filepath.Join(t.TempDir(), "ca")}
	if err := pki.Init(p.dir); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		role := pki.RoleAgent
		if h == "supervisor" {
			role = pki.RoleSupervisor
		}
		if err := pki.Issue(p.dir, h, "", nil, nil, role); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// bundle is the directory of host's bundle.
func (p testPKI) bundle(host string) string { return filepath.Join(p.dir, host) }

func (p testPKI) load(t *testing.T, host string) *pki.Bundle {
	t.Helper()
	b, err := pki.LoadBundle(p.bundle(host))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// freeAddr returns 127.0.0.1:PORT with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// testAgent is an agent run in the test's process, and a supervisor's
// connection to it.
type testAgent struct {
	a      *Agent
	cfg    AgentConfig
	pki    testPKI
	conn   *grpc.ClientConn
	client agentv1.AgentClient
	log    *syncBuffer
	stop   func() error // ends Run and returns its error; once
}

// startAgent runs an agent of host "hostb" on a free port of 127.0.0.1
// with the plugins of dir, and dials it as the host "supervisor"; edit
// changes its config. The agent is stopped when the test ends.
func startAgent(t *testing.T, dir string, edit func(*AgentConfig)) *testAgent {
	t.Helper()
	p := newTestPKI(t, "hostb", "supervisor")
	log := &syncBuffer{}
	cfg := AgentConfig{
		Host: "hostb", Listen: freeAddr(t), TLSDir: p.bundle("hostb"), PluginDir: dir,
		GPUs: []string{"0", "1"}, Offers: map[string]int{"transformer": 2},
		Logger: hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug}),
	}
	if edit != nil {
		edit(&cfg)
	}
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	ta := &testAgent{a: a, cfg: cfg, pki: p, log: log, stop: func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-ran:
			case <-time.After(time.Minute):
				runErr = errors.New("Run did not return within a minute of its context's end")
			}
		})
		return runErr
	}}
	t.Cleanup(func() {
		if err := ta.stop(); err != nil {
			t.Errorf("agent Run: %v", err)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})
	ta.conn = dialAgent(t, cfg.Listen, p.load(t, "supervisor").ClientTLS("hostb"))
	ta.client = agentv1.NewAgentClient(ta.conn)
	// Wait for the agent to serve (or fail to).
	hctx, hcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer hcancel()
	if _, err := ta.client.Hello(hctx, &agentv1.HelloRequest{}, grpc.WaitForReady(true)); err != nil {
		select {
		case rerr := <-ran:
			t.Fatalf("agent Run: %v", rerr)
		default:
		}
		t.Fatalf("Hello: %v", err)
	}
	return ta
}

func dialAgent(t *testing.T, addr string, tc *tls.Config) *grpc.ClientConn {
	t.Helper()
	return dialAgentWith(t, addr, credentials.NewTLS(tc))
}

func dialAgentWith(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// launch launches the transformer as instance id of session; it fails
// the test if it does not start.
func (ta *testAgent) launch(t *testing.T, session, id string) *agentv1.LaunchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := ta.client.Launch(ctx, &agentv1.LaunchRequest{Session: session, Instance: id, Plugin: "transformer", Phase: "transformer"})
	if err != nil {
		t.Fatalf("Launch %s: %v", id, err)
	}
	return resp
}

// alive reports whether pid runs (or is a zombie).
func alive(pid int64) bool { return syscall.Kill(int(pid), 0) == nil }

// gone reports whether pid does not exist at all.
func gone(pid int64) bool { return errors.Is(syscall.Kill(int(pid), 0), syscall.ESRCH) }

// waitFor waits up to d for cond; it reports whether cond came true.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// wantCode checks that err is a gRPC status of code whose message holds
// each of texts.
func wantCode(t *testing.T, err error, code codes.Code, texts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %s", code)
	}
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Errorf("code %s (%v), want %s", st.Code(), err, code)
	}
	for _, w := range texts {
		if !strings.Contains(st.Message(), w) {
			t.Errorf("error %q does not contain %q", st.Message(), w)
		}
	}
}

// TestAgent runs an agent in the test's process, with the built
// transformer plugin, and drives it as a supervisor does.
func TestAgent(t *testing.T) {
	plugins := buildPlugins(t)
	health := freeAddr(t)
	ta := startAgent(t, plugins, func(c *AgentConfig) { c.Health = health })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	t.Run("Hello", func(t *testing.T) {
		h, err := ta.client.Hello(ctx, &agentv1.HelloRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if h.GetHost() != "hostb" || h.GetZmqHost() != "127.0.0.1" || h.GetLeaseTtlMs() != DefaultLeaseTTL.Milliseconds() || h.GetVersion() == "" {
			t.Errorf("host %q, zmq host %q, lease TTL %dms, version %q; want hostb, 127.0.0.1, %d, a version",
				h.GetHost(), h.GetZmqHost(), h.GetLeaseTtlMs(), h.GetVersion(), DefaultLeaseTTL.Milliseconds())
		}
		if o := h.GetOffers(); len(o) != 1 || o["transformer"] != 2 {
			t.Errorf("offers %v, want transformer: 2", o)
		}
		if g := h.GetGpus(); strings.Join(g, ",") != "0,1" {
			t.Errorf("GPUs %v, want [0 1]", g)
		}
	})

	t.Run("Launch refused", func(t *testing.T) {
		// A plugin outside the plugin directory, which must never run.
		outside := t.TempDir()
		marker := filepath.Join(outside, "ran")
		evil := filepath.Join(outside, "evil")
		if err := os.WriteFile(evil, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		traversal := "/" + strings.Repeat("../", 40) + strings.TrimPrefix(evil, "/")
		ok := agentv1.LaunchRequest{Session: "s1", Instance: "transformer-0", Plugin: "transformer", Phase: "transformer"}
		tests := []struct {
			name  string
			edit  func(*agentv1.LaunchRequest)
			code  codes.Code
			texts []string
		}{
			{"instance id not PHASE-N", func(r *agentv1.LaunchRequest) { r.Instance = "transformer" }, codes.InvalidArgument,
				[]string{`agent hostb: instance id "transformer": expected PHASE-N`}},
			{"instance id with upper case", func(r *agentv1.LaunchRequest) { r.Instance = "Transformer-0" }, codes.InvalidArgument,
				[]string{`instance id "Transformer-0": expected PHASE-N`}},
			{"instance id with a path", func(r *agentv1.LaunchRequest) { r.Instance = "../transformer-0" }, codes.InvalidArgument,
				[]string{`instance id "../transformer-0": expected PHASE-N`}},
			{"no instance id", func(r *agentv1.LaunchRequest) { r.Instance = "" }, codes.InvalidArgument,
				[]string{`instance id "": expected PHASE-N`}},
			{"no session", func(r *agentv1.LaunchRequest) { r.Session = "" }, codes.InvalidArgument,
				[]string{`agent hostb: session "": expected letters, digits, '.', '_' or '-'`}},
			{"bad session", func(r *agentv1.LaunchRequest) { r.Session = "s 1" }, codes.InvalidArgument,
				[]string{`session "s 1"`}},
			{"unknown plugin", func(r *agentv1.LaunchRequest) { r.Plugin = "nosuch" }, codes.NotFound,
				[]string{"agent hostb:", `phase plugin "nosuch"`, "phased-phase-nosuch does not exist", "phased-phase-transformer"}},
			{"GPU not in the inventory", func(r *agentv1.LaunchRequest) { r.Gpu = "7" }, codes.InvalidArgument,
				[]string{`agent hostb: GPU "7" is not one of this host's [0 1]`}},
			{"pin mismatch", func(r *agentv1.LaunchRequest) { r.Pin = strings.Repeat("0", 64) }, codes.FailedPrecondition,
				[]string{"agent hostb:", "does not match its pin", "the supervisor's config pins " + strings.Repeat("0", 64)}},
			{"plugin name with a path", func(r *agentv1.LaunchRequest) { r.Plugin = traversal }, codes.InvalidArgument,
				[]string{"agent hostb:", "plugin"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				req := agentv1.LaunchRequest{Session: ok.Session, Instance: ok.Instance, Plugin: ok.Plugin, Phase: ok.Phase}
				tt.edit(&req)
				resp, err := ta.client.Launch(ctx, &req)
				if err == nil {
					t.Errorf("launched (pid %d)", resp.GetPid())
					_, _ = ta.client.Stop(ctx, &agentv1.StopRequest{Session: "s1", Instance: req.Instance, Now: true})
					return
				}
				wantCode(t, err, tt.code, tt.texts...)
			})
		}
		if exists(marker) {
			t.Errorf("Launch of plugin %q ran %s, outside the plugin directory", traversal, evil)
		}
		// Nothing was left running.
		if _, err := sdk.RemotePhaseControl(ta.conn, "s1/transformer-0").Info(ctx); !errors.Is(err, sdk.ErrPluginGone) {
			t.Errorf("Info of transformer-0 after refused launches: %v; want ErrPluginGone", err)
		}
	})

	t.Run("Launch, Phase calls, Stop", func(t *testing.T) {
		resp := ta.launch(t, "s1", "transformer-0")
		pid := resp.GetPid()
		if pid <= 0 || !alive(pid) {
			t.Fatalf("pid %d: not a live process", pid)
		}
		if resp.GetZmqHost() != "127.0.0.1" || !strings.HasPrefix(filepath.Base(resp.GetRunDir()), "transformer-0.") {
			t.Errorf("zmq host %q, run dir %q; want 127.0.0.1, .../transformer-0.N", resp.GetZmqHost(), resp.GetRunDir())
		}
		if fi, err := os.Stat(resp.GetRunDir()); err != nil || !fi.IsDir() {
			t.Errorf("run dir %s: %v", resp.GetRunDir(), err)
		}
		_, err := ta.client.Launch(ctx, &agentv1.LaunchRequest{Session: "s1", Instance: "transformer-0", Plugin: "transformer", Phase: "transformer"})
		wantCode(t, err, codes.AlreadyExists, "agent hostb runs instance transformer-0 already (pid "+strconv.FormatInt(pid, 10)+")")

		info, err := sdk.RemotePhaseControl(ta.conn, "s1/transformer-0").Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != "transformer" || info.Kind != sdk.KindPhase || !info.Speaks(sdk.PhaseAPIVersion) {
			t.Errorf("Info %+v: want the transformer phase plugin, speaking version %d", info, sdk.PhaseAPIVersion)
		}
		for _, id := range []string{"transformer-9", ""} {
			_, err := sdk.RemotePhaseControl(ta.conn, id).Info(ctx)
			if !errors.Is(err, sdk.ErrPluginGone) || !strings.Contains(err.Error(), `agent hostb runs no instance "`+id+`"`) {
				t.Errorf("Info of instance %q: %v; want ErrPluginGone naming it", id, err)
			}
		}

		st, err := ta.client.Stop(ctx, &agentv1.StopRequest{Session: "s1", Instance: "transformer-0"})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetStatus() == "" || st.GetStatus() == "not running" {
			t.Errorf("Stop status %q; want how it ended", st.GetStatus())
		}
		if err := syscall.Kill(int(pid), 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d after Stop: kill -0: %v; want ESRCH", pid, err)
		}
		if exists(resp.GetRunDir()) {
			t.Errorf("run dir %s is left after Stop", resp.GetRunDir())
		}
		if _, err := sdk.RemotePhaseControl(ta.conn, "s1/transformer-0").Info(ctx); !errors.Is(err, sdk.ErrPluginGone) {
			t.Errorf("Info after Stop: %v; want ErrPluginGone", err)
		}
		st, err = ta.client.Stop(ctx, &agentv1.StopRequest{Session: "s1", Instance: "transformer-0"})
		if err != nil || st.GetStatus() != "not running" {
			t.Errorf("second Stop: %q, %v; want \"not running\"", st.GetStatus(), err)
		}
		// Launched again under the same id: a new process.
		again := ta.launch(t, "s1", "transformer-0")
		if again.GetPid() == pid || !alive(again.GetPid()) {
			t.Errorf("launched again: pid %d (was %d)", again.GetPid(), pid)
		}
		st, err = ta.client.Stop(ctx, &agentv1.StopRequest{Session: "s1", Instance: "transformer-0", Now: true})
		if err != nil || !gone(again.GetPid()) {
			t.Errorf("Stop now: %q, %v; pid %d gone: %v", st.GetStatus(), err, again.GetPid(), gone(again.GetPid()))
		}
	})

	t.Run("Launch twice at once", func(t *testing.T) {
		type result struct {
			resp *agentv1.LaunchResponse
			err  error
		}
		results := make(chan result, 2)
		for range 2 {
			go func() {
				resp, err := ta.client.Launch(ctx, &agentv1.LaunchRequest{Session: "s1", Instance: "transformer-5", Plugin: "transformer", Phase: "transformer"})
				results <- result{resp, err}
			}()
		}
		var won []*agentv1.LaunchResponse
		for range 2 {
			r := <-results
			if r.err == nil {
				won = append(won, r.resp)
				continue
			}
			if c := status.Code(r.err); c != codes.AlreadyExists && c != codes.Aborted {
				t.Errorf("the second Launch: %v; want AlreadyExists or Aborted", r.err)
			}
		}
		if len(won) != 1 {
			t.Fatalf("%d launches of transformer-5 succeeded; want 1", len(won))
		}
		t.Cleanup(func() {
			_, _ = ta.client.Stop(context.Background(), &agentv1.StopRequest{Session: "s1", Instance: "transformer-5", Now: true})
		})
		if !alive(won[0].GetPid()) {
			t.Errorf("the instance that won, pid %d, does not run", won[0].GetPid())
		}
		if fi, err := os.Stat(won[0].GetRunDir()); err != nil || !fi.IsDir() {
			t.Errorf("the run directory of the instance that won: %v", err)
		}
	})

	t.Run("SIGKILL is reported by Watch", func(t *testing.T) {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		stream, err := ta.client.Watch(wctx, &agentv1.WatchRequest{Session: "s2"})
		if err != nil {
			t.Fatal(err)
		}
		resp := ta.launch(t, "s2", "transformer-1")
		if err := syscall.Kill(int(resp.GetPid()), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		e, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e.GetInstance() != "transformer-1" || e.GetPid() != resp.GetPid() || e.GetStatus() != "signal: killed" {
			t.Errorf("exit %v; want transformer-1, pid %d, signal: killed", e, resp.GetPid())
		}
		// The agent has cleaned up after it before reporting it.
		if exists(resp.GetRunDir()) {
			t.Errorf("run dir %s is left after the instance died", resp.GetRunDir())
		}
		if _, err := sdk.RemotePhaseControl(ta.conn, "s1/transformer-1").Info(ctx); !errors.Is(err, sdk.ErrPluginGone) {
			t.Errorf("Info of the killed instance: %v; want ErrPluginGone", err)
		}
		st, err := ta.client.Stop(ctx, &agentv1.StopRequest{Session: "s1", Instance: "transformer-1"})
		if err != nil || st.GetStatus() != "not running" {
			t.Errorf("Stop of the killed instance: %q, %v; want \"not running\"", st.GetStatus(), err)
		}
	})

	t.Run("Watch of a bad session", func(t *testing.T) {
		stream, err := ta.client.Watch(ctx, &agentv1.WatchRequest{Session: "../s"})
		if err == nil {
			_, err = stream.Recv()
		}
		wantCode(t, err, codes.InvalidArgument, `session "../s"`)
	})

	t.Run("health", func(t *testing.T) {
		for _, tt := range []struct{ path, method, body string }{
			{"/healthz", http.MethodGet, "ok\n"},
			{"/readyz", http.MethodGet, "ready\n"},
		} {
			req, _ := http.NewRequestWithContext(ctx, tt.method, "http://"+health+tt.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != tt.body {
				t.Errorf("%s %s: %d %q, want 200 %q", tt.method, tt.path, resp.StatusCode, body, tt.body)
			}
		}
		resp, err := http.Post("http://"+health+"/healthz", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /healthz: %d, want 405", resp.StatusCode)
		}
	})

	t.Run("Close stops everything", func(t *testing.T) {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		stream, err := ta.client.Watch(wctx, &agentv1.WatchRequest{Session: "s3"})
		if err != nil {
			t.Fatal(err)
		}
		a := ta.launch(t, "s3", "transformer-2")
		b := ta.launch(t, "s4", "transformer-3") // a session never watched
		runDir := filepath.Dir(a.GetRunDir())
		if err := ta.stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		for _, pid := range []int64{a.GetPid(), b.GetPid()} {
			if !gone(pid) {
				t.Errorf("pid %d runs after the agent stopped", pid)
			}
		}
		if exists(runDir) {
			t.Errorf("the agent's run directory %s is left", runDir)
		}
		// The Watch stream ends, and the agent answers no more.
		if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("Watch after the agent stopped: %v; want Unavailable", err)
		}
		if _, err := ta.client.Hello(ctx, &agentv1.HelloRequest{}); status.Code(err) != codes.Unavailable {
			t.Errorf("Hello after the agent stopped: %v; want Unavailable", err)
		}
		if _, err := http.Get("http://" + health + "/healthz"); err == nil {
			t.Error("/healthz answers after the agent stopped")
		}
		if err := ta.a.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// TestAgentSessionExpiry: the instances of a session are stopped once no
// Watch of it has been open for the lease TTL; those of a session still
// watched run on.
func TestAgentSessionExpiry(t *testing.T) {
	plugins := buildPlugins(t)
	ta := startAgent(t, plugins, func(c *AgentConfig) { c.LeaseTTL, c.Max = time.Second, map[string]int{"transformer": 4} })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Session "kept" is watched throughout.
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	if _, err := ta.client.Watch(kctx, &agentv1.WatchRequest{Session: "kept"}); err != nil {
		t.Fatal(err)
	}
	kept := ta.launch(t, "kept", "transformer-0")

	// Session "dropped": its Watch is seen to work (it reports the exit
	// of one instance), then ends.
	dctx, dcancel := context.WithCancel(ctx)
	stream, err := ta.client.Watch(dctx, &agentv1.WatchRequest{Session: "dropped"})
	if err != nil {
		t.Fatal(err)
	}
	victim := ta.launch(t, "dropped", "transformer-1")
	left := ta.launch(t, "dropped", "transformer-2")
	if err := syscall.Kill(int(victim.GetPid()), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if e, err := stream.Recv(); err != nil || e.GetInstance() != "transformer-1" {
		t.Fatalf("Watch: %v, %v; want the exit of transformer-1", e, err)
	}
	dcancel()
	if !waitFor(30*time.Second, func() bool { return gone(left.GetPid()) && !exists(left.GetRunDir()) }) {
		t.Fatalf("transformer-2 (pid %d) of a session no longer watched: running %v, run dir left %v, 30s after its Watch ended (lease TTL 1s)",
			left.GetPid(), !gone(left.GetPid()), exists(left.GetRunDir()))
	}
	if !alive(kept.GetPid()) {
		t.Errorf("transformer-0 of the watched session was stopped too")
	}
	if _, err := sdk.RemotePhaseControl(ta.conn, "kept/transformer-0").Info(ctx); err != nil {
		t.Errorf("Info of the watched session's instance: %v", err)
	}
	if _, err := sdk.RemotePhaseControl(ta.conn, "dropped/transformer-2").Info(ctx); !errors.Is(err, sdk.ErrPluginGone) {
		t.Errorf("Info of the expired instance: %v; want ErrPluginGone", err)
	}

	// A session that launched and never watched (its supervisor died
	// between Launch and Watch) expires too.
	orphan := ta.launch(t, "never", "transformer-3")
	if !waitFor(15*time.Second, func() bool { return gone(orphan.GetPid()) }) {
		t.Errorf("transformer-3 (pid %d) of a session never watched still runs 15s after its launch (lease TTL 1s)", orphan.GetPid())
	}
}

// TestAgentTLS: the agent serves only clients with a certificate of its
// CA, and a client trusts only an agent of its CA named as it dialled.
func TestAgentTLS(t *testing.T) {
	dir := t.TempDir() // no plugins: none is launched
	ta := startAgent(t, dir, nil)
	other := newTestPKI(t, "supervisor")
	good, foreign := ta.pki.load(t, "supervisor"), other.load(t, "supervisor")
	// The client's handshake ends before the agent checks the client's
	// certificate (TLS 1.3): the agent's refusal reaches the client as
	// its alert or as a connection closed, whichever comes first, so
	// only the code is checked then.
	tests := []struct {
		name  string
		creds credentials.TransportCredentials
		texts []string
	}{
		{"client of another CA", credentials.NewTLS(foreign.ClientTLS("hostb")),
			[]string{"authentication handshake failed", "certificate signed by unknown authority"}},
		{"certificate of another CA, trusting the agent's", credentials.NewTLS(&tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: foreign.ClientTLS("hostb").Certificates, RootCAs: good.CA, ServerName: "hostb"}),
			nil},
		{"no client certificate", credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: good.CA, ServerName: "hostb"}),
			nil},
		{"agent of another name", credentials.NewTLS(good.ClientTLS("hostc")),
			[]string{"authentication handshake failed", "certificate is valid for hostb, not hostc"}},
		{"no TLS", insecure.NewCredentials(), nil},
		// Another agent's certificate (the agent's own, here), its role
		// check off on its side: the agent serves supervisors only.
		{"an agent's certificate", credentials.NewTLS(func() *tls.Config {
			c := ta.pki.load(t, "hostb").ClientTLS("hostb")
			c.VerifyPeerCertificate = nil
			return c
		}()), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialAgentWith(t, ta.cfg.Listen, tt.creds)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := agentv1.NewAgentClient(conn).Hello(ctx, &agentv1.HelloRequest{})
			wantCode(t, err, codes.Unavailable, tt.texts...)
			_, err = sdk.RemotePhaseControl(conn, "s1/transformer-0").Info(ctx)
			if err == nil {
				t.Error("a Phase call was served")
			}
		})
	}
	// The good client is served.
	if _, err := ta.client.Hello(context.Background(), &agentv1.HelloRequest{}); err != nil {
		t.Errorf("Hello of the agent's own CA: %v", err)
	}
}

// TestAgentRunErrors: Run refuses a bundle it cannot use, and a listen
// address in use, with what to do.
func TestAgentRunErrors(t *testing.T) {
	p := newTestPKI(t, "hostb", "hostc")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name  string
		edit  func(*AgentConfig)
		texts []string
	}{
		{"no bundle", func(c *AgentConfig) { c.TLSDir = filepath.Join(p.dir, "nosuch") }, []string{"agent: TLS bundle", "no such directory"}},
		{"bundle of another host", func(c *AgentConfig) { c.TLSDir = p.bundle("hostc") },
			[]string{`agent: the certificate in ` + p.bundle("hostc") + ` is issued for host "hostc", not "hostb": run ` + "`supervisor tls issue hostb`" + `, or start the agent with --host hostc`}},
		{"address in use", func(c *AgentConfig) { c.Listen = busy.Addr().String() }, []string{"agent:", "address already in use"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := AgentConfig{Host: "hostb", Listen: freeAddr(t), TLSDir: p.bundle("hostb"), PluginDir: t.TempDir()}
			tt.edit(&cfg)
			a, err := NewAgent(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = a.Run(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("Run: %v; want an error at once", err)
			}
			for _, w := range tt.texts {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestAgentCloseBeforeRun: Close of an agent that never ran (or whose Run
// failed before serving) returns, as the lifecycle's cleanup must. A
// panic there is in a goroutine of Close's, which no recover of the test
// reaches: the test runs it in a child test process.
func TestAgentCloseBeforeRun(t *testing.T) {
	if os.Getenv("PHASED_TEST_CLOSE_BEFORE_RUN") == "1" {
		a, err := NewAgent(AgentConfig{Host: "hostb", Listen: "127.0.0.1:7443", TLSDir: "tls"})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close before Run: %v", err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAgentCloseBeforeRun$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PHASED_TEST_CLOSE_BEFORE_RUN=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("Close of an agent that never ran: %v\n%s", err, out)
	}
}
