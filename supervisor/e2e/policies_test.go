package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/gif"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phased/phased/plugins/model"
	"github.com/phased/phased/plugins/pluginstest"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/policytest"
	"github.com/phased/phased/supervisor"
	phasedcli "github.com/phased/phased/supervisor/cli"
)

// TestPolicies runs the pipeline under each shipped policy, chosen in the
// config the way a user does: the binary phased-policy-NAME in the plugin
// directory, named by the phase. Every artifact equals the reference, and
// the spread is the policy's.
func TestPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy, extra, key string
		check              func(used map[string]int) error
	}{
		{"leastloaded", "", "", both},
		{"colocate", "", "", both}, // one host: least loaded, ties in turn
		{"p2c", "", "", nil},
		{"random", "", "", nil},
		{"weighted", "weights = [3, 1]", "", func(used map[string]int) error {
			if used["transformer-0"] != 6 || used["transformer-1"] != 2 {
				return fmt.Errorf("weights 3, 1 over 8 requests gave %v, want 6 and 2", used)
			}
			return nil
		}},
		{"affinity", "", "lora-a", func(used map[string]int) error {
			if len(used) != 1 {
				return fmt.Errorf("one key went to %v, want one instance", used)
			}
			return nil
		}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			dir := shortDir(t)
			cfg := fmt.Sprintf(`
phase "encoder"     { plugin = "encoder" }
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  policy    = %q
  %s
}
phase "decoder"     { plugin = "decoder" }
`, tc.policy, tc.extra)
			p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
			const n = 8
			infos := p.submitAll(t, n, func(i int) supervisor.Submission {
				return supervisor.Submission{Prompt: fmt.Sprintf("p %d", i), Seed: int64(i), Steps: 2, Key: tc.key}
			})
			used := map[string]int{}
			for i, info := range infos {
				used[info.Instances["transformer"]]++
				if i%4 != 0 {
					continue
				}
				got, err := os.ReadFile(info.Artifact)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, reference(t, fmt.Sprintf("p %d", i), int64(i), 2)) {
					t.Fatalf("request %d: the artifact differs from the reference", i)
				}
			}
			if tc.check != nil {
				if err := tc.check(used); err != nil {
					t.Fatal(err)
				}
			}
			p.release(t)
		})
	}
}

// both checks that both transformers took requests.
func both(used map[string]int) error {
	if used["transformer-0"] == 0 || used["transformer-1"] == 0 {
		return fmt.Errorf("transformer use %v: want both used", used)
	}
	return nil
}

// TestPolicyBinariesConform runs the conformance kit against every policy
// binary built for these tests, started as the supervisor starts them.
func TestPolicyBinariesConform(t *testing.T) {
	bins, err := filepath.Glob(filepath.Join(pluginDir, "phased-policy-*"))
	if err != nil || len(bins) < 7 {
		t.Fatalf("policy binaries in %s: %v (%v), want the seven shipped", pluginDir, bins, err)
	}
	for _, bin := range bins {
		t.Run(filepath.Base(bin), func(t *testing.T) { policytest.RunBinary(t, bin) })
	}
}

// load submits requests, at most four in flight, until stop is closed,
// and returns every request's final info.
func load(t *testing.T, p *proc, stop <-chan struct{}) <-chan []supervisor.RequestInfo {
	out := make(chan []supervisor.RequestInfo, 1)
	go func() {
		var (
			mu    sync.Mutex
			infos []supervisor.RequestInfo
			wg    sync.WaitGroup
		)
		slots := make(chan struct{}, 4)
		for i := 0; ; i++ {
			select {
			case <-stop:
				wg.Wait()
				out <- infos
				return
			case slots <- struct{}{}:
			}
			wg.Add(1)
			go func() {
				defer func() { <-slots; wg.Done() }()
				ctx := context.Background()
				info := supervisor.RequestInfo{ID: fmt.Sprintf("submission %d", i), State: "not submitted"}
				id, err := p.client.Submit(ctx, supervisor.Submission{Prompt: fmt.Sprintf("load %d", i), Seed: int64(i), Steps: 1})
				if err == nil {
					info, err = p.client.Watch(ctx, id, nil)
				}
				if err != nil {
					info.Reason = err.Error()
				}
				mu.Lock()
				infos = append(infos, info)
				mu.Unlock()
			}()
		}
	}()
	return out
}

// policyList runs `supervisor policy list --json`.
func policyList(t *testing.T, socket string) supervisor.PolicyList {
	t.Helper()
	out, errOut, code := cli(t, socket, "policy", "list", "--json")
	var l supervisor.PolicyList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil {
		t.Fatalf("policy list: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	return l
}

func phasePolicy(l supervisor.PolicyList, phase string) supervisor.PhasePolicy {
	for _, p := range l.Phases {
		if p.Phase == phase {
			return p
		}
	}
	return supervisor.PhasePolicy{}
}

func policyProc(l supervisor.PolicyList, name string) (supervisor.PolicyProc, bool) {
	for _, p := range l.Running {
		if p.Name == name {
			return p, true
		}
	}
	return supervisor.PolicyProc{}, false
}

// TestPolicySwapUnderLoad swaps the transformer's policy twice while
// requests keep coming: no request fails, each swap shows in `policy list`,
// and a policy process that no phase uses any more is stopped.
func TestPolicySwapUnderLoad(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	stop := make(chan struct{})
	results := load(t, p, stop)
	waitDone := func(n int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for phasePolicy(policyList(t, p.socket), "transformer").Decisions < int64(n) {
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d requests scheduled in 60s", n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitDone(5)
	out, errOut, code := cli(t, p.socket, "policy", "set", "transformer", "leastloaded")
	if code != 0 || !regexp.MustCompile(`(?m)^transformer\s+leastloaded\s`).MatchString(out) {
		t.Fatalf("policy set leastloaded: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	ll, ok := policyProc(policyList(t, p.socket), "leastloaded")
	if !ok || ll.PID == 0 || ll.State != "running" {
		t.Fatalf("leastloaded process: %+v (%t)", ll, ok)
	}
	waitDone(15)
	if _, errOut, code := cli(t, p.socket, "policy", "set", "transformer", "p2c"); code != 0 {
		t.Fatalf("policy set p2c: exit %d: %s", code, errOut)
	}
	waitDone(25)
	close(stop)
	infos := <-results
	for _, info := range infos {
		if info.State != supervisor.StateDone {
			t.Fatalf("request %s: %s (%s) during the swaps", info.ID, info.State, info.Reason)
		}
	}
	l := policyList(t, p.socket)
	if pp := phasePolicy(l, "transformer"); pp.Policy != "p2c" || pp.Fallbacks != 0 {
		t.Fatalf("transformer after the swaps: %+v", pp)
	}
	if _, ok := policyProc(l, "leastloaded"); ok {
		t.Fatalf("leastloaded still runs with no phase using it: %+v", l.Running)
	}
	if !eventually(10*time.Second, func() bool { return !running(ll.PID) }) {
		t.Fatalf("the leastloaded process %d is still alive", ll.PID)
	}
	t.Logf("%d requests, none failed, across two swaps", len(infos))
	p.release(t)
}

// TestPolicyFailures: a policy that crashes, or hangs past policy_timeout,
// costs no request: the built-in round robin schedules it, the failure is
// counted, and the plugin is restarted. A shadow policy's agreement is
// counted. Bad names are refused with what exists.
func TestPolicyFailures(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(pipeline, `policy    = "roundrobin"`, `policy    = "faulty"`, 1) + "policy_timeout = \"500ms\"\n"
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	first, _ := policyProc(policyList(t, p.socket), "faulty")
	for i, key := range []string{"", "crash", "", "hang", ""} {
		infos := p.submitAll(t, 1, func(int) supervisor.Submission {
			return supervisor.Submission{Prompt: "f", Seed: int64(i), Steps: 1, Key: key}
		})
		if infos[0].Instances["transformer"] == "" {
			t.Fatalf("request %d (key %q): no transformer", i, key)
		}
		if key == "" {
			continue
		}
		// The plugin is restarted; wait for it before the next request.
		want := map[string]int{"crash": 1, "hang": 2}[key]
		if !eventually(30*time.Second, func() bool {
			pr, _ := policyProc(policyList(t, p.socket), "faulty")
			return pr.State == "running" && pr.Restarts == want
		}) {
			t.Fatalf("after %q: faulty not restarted: %+v", key, policyList(t, p.socket).Running)
		}
	}
	l := policyList(t, p.socket)
	pr, _ := policyProc(l, "faulty")
	if pp := phasePolicy(l, "transformer"); pp.Fallbacks != 2 || pp.Decisions != 5 {
		t.Fatalf("transformer: %+v, want 5 decisions, 2 by the fallback", pp)
	}
	if pr.PID == first.PID || !strings.Contains(pr.LastError, "did not answer within 500ms (policy_timeout)") {
		t.Fatalf("faulty after two restarts: %+v (first pid %d)", pr, first.PID)
	}
	if running(first.PID) {
		t.Fatalf("the crashed policy process %d is alive", first.PID)
	}

	// Shadow: counted, not used.
	if _, errOut, code := cli(t, p.socket, "policy", "shadow", "transformer", "roundrobin"); code != 0 {
		t.Fatalf("policy shadow: %s", errOut)
	}
	p.submitAll(t, 6, func(i int) supervisor.Submission { return supervisor.Submission{Prompt: "s", Seed: int64(i), Steps: 1} })
	if !eventually(10*time.Second, func() bool { return phasePolicy(policyList(t, p.socket), "transformer").ShadowCalls == 6 }) {
		t.Fatalf("shadow calls: %+v", phasePolicy(policyList(t, p.socket), "transformer"))
	}
	pp := phasePolicy(policyList(t, p.socket), "transformer")
	if pp.Shadow != "roundrobin" || pp.ShadowAgree > 6 || pp.Decisions != 11 {
		t.Fatalf("with a shadow: %+v", pp)
	}
	out, _, code := cli(t, p.socket, "policy", "shadow", "--off", "transformer")
	if code != 0 || !regexp.MustCompile(`(?m)^transformer\s+faulty\s+11\s+2\s+-\s+-\s*$`).MatchString(out) {
		t.Fatalf("policy shadow --off: exit %d, %q", code, out)
	}

	// Bad names.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"set", "transformer", "nosuch"}, `policy plugin "nosuch": ` + filepath.Join(pluginDir, "phased-policy-nosuch") + " does not exist; plugins in "},
		{[]string{"set", "upscaler", "roundrobin"}, `no such phase "upscaler"; the phases are: encoder, transformer, decoder`},
		{[]string{"set", "transformer", "../x"}, `policy "../x" is not a valid name`},
		{[]string{"set", "transformer"}, "want `policy set PHASE NAME`"},
	} {
		_, errOut, code := cli(t, p.socket, append([]string{"policy"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("policy %v: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
	if pp := phasePolicy(policyList(t, p.socket), "transformer"); pp.Policy != "faulty" {
		t.Fatalf("a refused change changed the policy: %+v", pp)
	}
	p.release(t)
}

// eventually polls cond every 50 ms for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestThirdPartyPolicy builds the policy in examples/policies, a Go module
// of its own that imports only phased's SDK, the way its author would
// (outside phased's module), drops the binary into the plugin directory of
// a running supervisor, and selects it with `policy set`: no rebuild and
// no restart of phased.
func TestThirdPartyPolicy(t *testing.T) {
	dir := shortDir(t)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(pluginDir, "phased-policy-fastest")
	build := exec.Command("go", "build", "-o", bin, "./cmd/phased-policy-fastest")
	build.Dir = filepath.Join(strings.TrimSpace(string(root)), "examples", "policies")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the third-party policy: %v\n%s", err, out)
	}
	t.Cleanup(func() { os.Remove(bin) })
	out, errOut, code := cli(t, p.socket, "policy", "set", "transformer", "fastest")
	if code != 0 || !regexp.MustCompile(`(?m)^transformer\s+fastest\s`).MatchString(out) || !strings.Contains(out, "fastest") {
		t.Fatalf("policy set transformer fastest: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	infos := p.submitAll(t, 6, func(i int) supervisor.Submission {
		return supervisor.Submission{Prompt: fmt.Sprintf("third %d", i), Seed: int64(i), Steps: 1}
	})
	got, err := os.ReadFile(infos[0].Artifact)
	if err != nil || !bytes.Equal(got, reference(t, "third 0", 0, 1)) {
		t.Fatalf("artifact under the third-party policy differs from the reference (%v)", err)
	}
	if pp := phasePolicy(policyList(t, p.socket), "transformer"); pp.Policy != "fastest" || pp.Fallbacks != 0 {
		t.Fatalf("transformer: %+v", pp)
	}
	p.release(t)
}

// TestStatusWhilePolicyStarts: `policy set` to a policy whose process is
// slow to start keeps neither status nor policy list waiting; the set
// completes once the process is up.
func TestStatusWhilePolicyStarts(t *testing.T) {
	dir := shortDir(t)
	gate := filepath.Join(dir, "gate")
	t.Setenv("PHASED_TEST_GATE", gate)
	p := startSupervisor(t, dir, writeConfig(t, dir, pipeline))
	set := make(chan error, 1)
	go func() {
		_, errOut, code := cli(t, p.socket, "policy", "set", "transformer", "gated")
		if code != 0 {
			set <- fmt.Errorf("exit %d: %s", code, errOut)
			return
		}
		set <- nil
	}()
	if !eventually(30*time.Second, func() bool { _, err := os.Stat(gate + ".started"); return err == nil }) {
		t.Fatal("the gated policy did not start")
	}
	// The policy's process is starting and waits for the gate: status and
	// policy list answer meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := p.client.Status(ctx)
	if err != nil {
		t.Fatalf("status while a policy starts: %v", err)
	}
	if pp := phasePolicy(policyList(t, p.socket), "transformer"); pp.Policy != "roundrobin" || len(st.Phases) != 3 {
		t.Fatalf("while gated starts: transformer's policy %q, %d phases", pp.Policy, len(st.Phases))
	}
	select {
	case err := <-set:
		t.Fatalf("policy set returned before the policy was up: %v", err)
	default:
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-set; err != nil {
		t.Fatalf("policy set gated: %v", err)
	}
	if pp := phasePolicy(policyList(t, p.socket), "transformer"); pp.Policy != "gated" {
		t.Fatalf("after the set: transformer's policy %q", pp.Policy)
	}
	p.submitAll(t, 2, func(i int) supervisor.Submission { return supervisor.Submission{Prompt: "g", Seed: int64(i), Steps: 1} })
}

// TestPhaseBinariesConform runs the phase conformance kit against every
// built-in phase binary, started as the supervisor starts it.
func TestPhaseBinariesConform(t *testing.T) {
	for name, c := range pluginstest.Cases() {
		t.Run(name, func(t *testing.T) { phasetest.RunBinary(t, filepath.Join(pluginDir, "phased-phase-"+name), c) })
	}
}

// TestThirdPartyPhase: the phase of examples/phases, a Go module of its
// own, built and dropped into the plugin directory, runs between the
// transformer and the decoder from the example config. At strength 0 the
// artifact is the reference, byte for byte (the extra hop moves the latent
// unchanged); at 0.5 it is another GIF of as many frames.
func TestThirdPartyPhase(t *testing.T) {
	dir := shortDir(t)
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(pluginDir, "phased-phase-smooth")
	build := exec.Command("go", "build", "-o", bin, "./cmd/phased-phase-smooth")
	build.Dir = filepath.Join(strings.TrimSpace(string(root)), "examples", "phases")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the third-party phase: %v\n%s", err, out)
	}
	t.Cleanup(func() { os.Remove(bin) })
	example, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(root)), "examples", "configs", "smooth.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string][]phasedcli.Result{}
	for _, strength := range []string{"0", "0.5"} {
		body := strings.Replace(string(example), `strength = "0.5"`, `strength = "`+strength+`"`, 1)
		sub := filepath.Join(dir, "s"+strength) // its own artifact directory
		if err := os.Mkdir(sub, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := writeConfig(t, sub, body)
		cmd := exec.Command(supervisorBin, "run", "--config", cfg, "--prompt", "smooth fox", "--seed", "4", "--steps", "3", "--count", "2", "--json")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("run with strength %s: %v\n%s", strength, err, out)
		}
		runs[strength] = decodeResults(t, out)
	}
	// Request i is seed 4+i, whichever id it got.
	refs := [][]byte{reference(t, "smooth fox", 4, 3), reference(t, "smooth fox", 5, 3)}
	isRef := func(b []byte) bool { return bytes.Equal(b, refs[0]) || bytes.Equal(b, refs[1]) }
	var still [][]byte
	for _, r := range runs["0"] {
		b, err := os.ReadFile(r.Artifact)
		if err != nil || !isRef(b) {
			t.Fatalf("with strength 0, %s differs from the references (%v)", r.Artifact, err)
		}
		still = append(still, b)
	}
	if bytes.Equal(still[0], still[1]) {
		t.Fatal("with strength 0, both requests made the same artifact")
	}
	for _, r := range runs["0.5"] {
		b, _ := os.ReadFile(r.Artifact)
		g, err := gif.DecodeAll(bytes.NewReader(b))
		if err != nil || isRef(b) || len(g.Image) != model.DefaultParams().Frames {
			t.Fatalf("with strength 0.5, %s: %d bytes, decoded %v, a reference: %t", r.Artifact, len(b), err, isRef(b))
		}
	}
}

// decodeResults reads the JSON lines of `supervisor run --json`; every
// request must be done.
func decodeResults(t *testing.T, out []byte) []phasedcli.Result {
	t.Helper()
	var rs []phasedcli.Result
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var r phasedcli.Result
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("run output: %v\n%s", err, out)
		}
		if r.State != supervisor.StateDone {
			t.Fatalf("request %s: %s (%s)", r.ID, r.State, r.Reason)
		}
		rs = append(rs, r)
	}
	return rs
}

// TestPolicyGivenUp: a policy restarts by the config's restart rule, as
// instances do; past it, it is left failed and the built-in round robin
// schedules its phases, costing no request; `policy set` to it starts it
// again.
func TestPolicyGivenUp(t *testing.T) {
	dir := shortDir(t)
	cfg := strings.Replace(pipeline, `policy    = "roundrobin"`, `policy    = "faulty"`, 1) +
		"restart {\n  max     = 1\n  backoff = \"10ms\"\n}\n"
	p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
	state := func() PolicyProcState {
		pr, _ := policyProc(policyList(t, p.socket), "faulty")
		return PolicyProcState{pr.State, pr.Restarts}
	}
	for i, want := range []PolicyProcState{{"running", 1}, {"failed", 1}} {
		p.submitAll(t, 1, func(int) supervisor.Submission {
			return supervisor.Submission{Prompt: "g", Seed: int64(i), Steps: 1, Key: "crash"}
		})
		if !eventually(30*time.Second, func() bool { return state() == want }) {
			t.Fatalf("after crash %d: faulty %+v, want %+v", i+1, state(), want)
		}
	}
	infos := p.submitAll(t, 2, func(i int) supervisor.Submission { return supervisor.Submission{Prompt: "f", Seed: int64(i), Steps: 1} })
	for _, info := range infos {
		if info.State != supervisor.StateDone {
			t.Fatalf("with the policy failed: %s %s (%s)", info.ID, info.State, info.Reason)
		}
	}
	if pp := phasePolicy(policyList(t, p.socket), "transformer"); pp.Fallbacks != 4 {
		t.Fatalf("transformer with its policy failed: %+v, want 4 fallbacks (2 crashes, 2 requests)", pp)
	}
	if _, errOut, code := cli(t, p.socket, "policy", "set", "transformer", "faulty"); code != 0 {
		t.Fatalf("policy set transformer faulty: %s", errOut)
	}
	if got := state(); got.State != "running" {
		t.Fatalf("after policy set: faulty %+v, want running", got)
	}
	p.submitAll(t, 1, func(int) supervisor.Submission { return supervisor.Submission{Prompt: "h", Steps: 1} })
	if pp := phasePolicy(policyList(t, p.socket), "transformer"); pp.Fallbacks != 4 {
		t.Fatalf("transformer after the policy came back: %+v, want no new fallback", pp)
	}
}

// PolicyProcState is what TestPolicyGivenUp follows of a policy process.
type PolicyProcState struct {
	State    string
	Restarts int
}
