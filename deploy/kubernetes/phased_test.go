package kubernetes_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/cli"
	"github.com/phased/phased/supervisor/config"
)

// The checks that know phased: its CLI, its config, its agent.

// verbs are the `supervisor` verbs the manifests and docs/deploy.md
// run, with how many arguments each takes besides its flags (-1: any).
var verbs = []verb{
	{[]string{"agent"}, 0},
	{[]string{"start"}, 0},
	{[]string{"tls", "init"}, 0},
	{[]string{"tls", "issue"}, 1}, // HOST
	{[]string{"validate"}, 0},
	{[]string{"submit"}, 0},
	{[]string{"status"}, -1}, // [ID]
	{[]string{"release"}, 0},
	{[]string{"scale"}, 2}, // PHASE N
}

type verb struct {
	words []string
	args  int
}

// commandLine is `supervisor ARGS...` as the command tree reads it.
type commandLine struct {
	verb  string              // "agent", "tls issue"
	flags map[string][]string // each flag given, with its values
	args  []string            // the arguments that are not flags
}

// last returns the last value of flag name, or def when it is not given.
func (cl *commandLine) last(name, def string) string {
	if v := cl.flags[name]; len(v) > 0 {
		return v[len(v)-1]
	}
	return def
}

// parseCommandLine reads `supervisor ARGS...` against the command tree:
// its verb must be one of verbs, each flag one the verb defines, given a
// value when it takes one, and the whole line must parse (cli.Main with
// --help parses every flag, then prints the help instead of running). It
// returns what is wrong, each problem a sentence.
func parseCommandLine(t *testing.T, args []string) (*commandLine, []string) {
	t.Helper()
	i := slices.IndexFunc(verbs, func(v verb) bool {
		return len(args) >= len(v.words) && slices.Equal(args[:len(v.words)], v.words)
	})
	if i < 0 {
		return nil, []string{fmt.Sprintf("`supervisor %s`: a verb this test does not know; add it to verbs", strings.Join(args, " "))}
	}
	v := verbs[i]
	cl := &commandLine{verb: strings.Join(v.words, " "), flags: map[string][]string{}}
	var problems []string
	defined := verbFlags(t, v.words)
	rest := args[len(v.words):]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if !strings.HasPrefix(a, "--") {
			if strings.HasPrefix(a, "-") && len(a) > 1 {
				problems = append(problems, fmt.Sprintf("%q: write flags in full (--name)", a))
			}
			cl.args = append(cl.args, a)
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		takes, ok := defined[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("--%s is not a flag of `supervisor %s`; it has: --%s", name, cl.verb, strings.Join(sortedKeys(defined), ", --")))
			continue
		}
		if takes && !hasVal {
			if i+1 >= len(rest) {
				problems = append(problems, fmt.Sprintf("--%s needs a value", name))
				break
			}
			i++
			val = rest[i]
		}
		cl.flags[name] = append(cl.flags[name], val)
	}
	if v.args >= 0 && len(cl.args) != v.args {
		problems = append(problems, fmt.Sprintf("%d arguments besides the flags (%q); `supervisor %s` takes %d", len(cl.args), cl.args, cl.verb, v.args))
	}
	var stdout, stderr bytes.Buffer
	if code := cli.Main(append(slices.Clone(args), "--help"), &stdout, &stderr); code != 0 {
		problems = append(problems, fmt.Sprintf("the command line does not parse: exit %d: %s", code, strings.TrimSpace(stderr.String())))
	}
	return cl, problems
}

// flagLine is a flag in `supervisor VERB --help`: its name, and its
// value's placeholder when it takes one.
var flagLine = regexp.MustCompile(`^ {2,6}(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)(?: (\S+))?(?: {2,}|$)`)

// verbFlags returns the flags `supervisor VERB` defines, its own and
// those it inherits, each with whether it takes a value: read from its
// --help, as cli.Main prints it from the command tree. (The package cli
// exports no constructor of the tree, only Main.)
func verbFlags(t *testing.T, verb []string) map[string]bool {
	t.Helper()
	var out, errb bytes.Buffer
	if code := cli.Main(append(slices.Clone(verb), "--help"), &out, &errb); code != 0 {
		t.Fatalf("supervisor %s --help: exit %d: %s", strings.Join(verb, " "), code, errb.String())
	}
	flags := map[string]bool{}
	in := false
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "Flags:" || strings.HasPrefix(line, "Flags of ") && strings.HasSuffix(line, ":"):
			in = true
		case strings.TrimSpace(line) == "":
			in = false
		case in:
			if m := flagLine.FindStringSubmatch(line); m != nil {
				flags[m[1]] = m[2] != ""
			}
		}
	}
	if len(flags) == 0 {
		t.Fatalf("supervisor %s --help lists no flags:\n%s", strings.Join(verb, " "), out.String())
	}
	return flags
}

// invocation is a container that runs `supervisor VERB ...`: the phased
// image with its own entrypoint.
type invocation struct {
	*commandLine
	w *object
	c *container
}

func (inv *invocation) String() string {
	return fmt.Sprintf("%s: %s (supervisor %s)", inv.w, inv.c, inv.verb)
}

// invocations returns every container that runs `supervisor`, and what
// parseCommandLine finds wrong with their command lines.
func invocations(t *testing.T, m *manifests) (out []*invocation, problems []string) {
	t.Helper()
	for _, w := range m.workloads() {
		for _, c := range allContainers(&w.workload.Template.Spec) {
			if !strings.HasPrefix(c.Image, phasedImage+":") || len(c.Command) > 0 {
				continue // another image, or a shell script
			}
			cl, ps := parseCommandLine(t, c.Args)
			for _, p := range ps {
				problems = append(problems, fmt.Sprintf("%s: %s: %s", w, c, p))
			}
			if cl != nil {
				out = append(out, &invocation{commandLine: cl, w: w, c: c})
			}
		}
	}
	return out, problems
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestCLIFlags checks every `supervisor` command line of the manifests
// against the command tree, and that there is an agent and a supervisor.
func TestCLIFlags(t *testing.T) {
	m := load(t)
	invs, problems := invocations(t, m)
	for _, p := range problems {
		t.Error(p)
	}
	count := map[string]int{}
	for _, inv := range invs {
		count[inv.verb]++
	}
	if count["agent"] == 0 || count["start"] == 0 {
		t.Errorf("want containers running `supervisor agent` and `supervisor start`; found %v", count)
	}
}

// roles returns the one container running `supervisor start` and the
// one running `supervisor agent` (TestCLIFlags reports what is wrong
// with their command lines).
func roles(t *testing.T, m *manifests) (sup, agent *invocation, all []*invocation) {
	t.Helper()
	all, _ = invocations(t, m)
	for _, inv := range all {
		switch {
		case inv.verb == "start" && sup == nil:
			sup = inv
		case inv.verb == "agent" && agent == nil:
			agent = inv
		case inv.verb == "start" || inv.verb == "agent":
			t.Fatalf("%s: a second `supervisor %s`", inv, inv.verb)
		}
	}
	if sup == nil || agent == nil {
		t.Fatal("want one container running `supervisor start` and one running `supervisor agent`")
	}
	return sup, agent, all
}

// TestAgentGPU checks that the agent runs on GPU nodes only, one per
// node, asks for nvidia.com/gpu, and lists as many GPU ordinals as it
// gets.
func TestAgentGPU(t *testing.T) {
	m := load(t)
	_, agent, _ := roles(t, m)
	w, c := agent.w, agent.c
	if w.Kind != "DaemonSet" {
		t.Errorf("%s: the agent runs in a %s; want a DaemonSet, one agent per GPU node", agent, w.Kind)
	}
	pod := &w.workload.Template.Spec
	onGPU := slices.ContainsFunc(sortedKeys(pod.NodeSelector), func(k string) bool { return strings.HasPrefix(k, "nvidia.com/gpu") })
	if pod.Affinity.Kind != 0 {
		b, err := yaml.Marshal(&pod.Affinity)
		onGPU = onGPU || err == nil && strings.Contains(string(b), "nvidia.com/gpu")
	}
	if !onGPU {
		t.Errorf("%s: no nodeSelector (or affinity) for a GPU label such as nvidia.com/gpu.present: the agents would land on every node", w)
	}
	limit, err := strconv.Atoi(c.Resources.Limits["nvidia.com/gpu"])
	if err != nil || limit < 1 {
		t.Fatalf("%s: %s: resources.limits[nvidia.com/gpu] = %q; want 1 or more", w, c, c.Resources.Limits["nvidia.com/gpu"])
	}
	if gpus := agent.last("gpus", ""); gpus != "" && len(strings.Split(gpus, ",")) != limit {
		t.Errorf("%s: --gpus %s lists %d ordinals for the %d GPUs of resources.limits", agent, gpus, len(strings.Split(gpus, ",")), limit)
	}
}

// TestAgentArgs checks the agent's addresses and files: it advertises
// and binds its pod's IP, is named after its node, reads the bundle an
// init container of its pod issued for that name, and answers its
// probes on --health.
func TestAgentArgs(t *testing.T) {
	m := load(t)
	_, agent, all := roles(t, m)
	c := agent.c
	fieldOf := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fieldOf[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	// wantField: the flag's value must hold $(VAR), VAR being the field.
	wantField := func(flag, field string) {
		v := agent.last(flag, "")
		for _, mm := range envRef.FindAllStringSubmatch(v, -1) {
			if fieldOf[mm[2]] == field {
				return
			}
		}
		t.Errorf("%s: --%s %q: want the pod's %s through the downward API, $(VAR) of an env with fieldRef %s", agent, flag, v, field, field)
	}
	wantField("host", "spec.nodeName")
	for _, f := range []string{"listen", "advertise", "zmq-host", "health"} {
		wantField(f, "status.podIP")
	}
	_, port, err := net.SplitHostPort(agent.last("health", ""))
	if err != nil {
		t.Fatalf("%s: --health %q: %v", agent, agent.last("health", ""), err)
	}
	for _, pr := range []struct {
		kind, path string
		p          *probe
	}{{"livenessProbe", "/healthz", c.LivenessProbe}, {"readinessProbe", "/readyz", c.ReadinessProbe}} {
		if pr.p == nil || pr.p.HTTPGet == nil {
			t.Errorf("%s: the %s should be an httpGet of %s on --health", agent, pr.kind, pr.path)
			continue
		}
		if got := pr.p.HTTPGet.Path; got != pr.path {
			t.Errorf("%s: %s path %s; the agent serves %s", agent, pr.kind, got, pr.path)
		}
		ok := slices.ContainsFunc(c.Ports, func(cp containerPort) bool {
			return strconv.Itoa(cp.ContainerPort) == port && (string(pr.p.HTTPGet.Port) == cp.Name || string(pr.p.HTTPGet.Port) == port)
		})
		if !ok {
			t.Errorf("%s: %s port %q is not --health's port %s", agent, pr.kind, pr.p.HTTPGet.Port, port)
		}
	}
	tlsDir := agent.last("tls-dir", "")
	if c.mountOf(tlsDir) == nil {
		t.Errorf("%s: --tls-dir %s is on no volume of the container", agent, tlsDir)
	}
	issued := false
	for _, inv := range all {
		if inv.verb != "tls issue" || inv.w != agent.w {
			continue
		}
		issued = true
		if inv.last("out", "") != tlsDir {
			t.Errorf("%s: --out %q; the agent's --tls-dir is %q", inv, inv.last("out", ""), tlsDir)
		}
		if host := agent.last("host", ""); len(inv.args) == 1 && inv.args[0] != host {
			t.Errorf("%s: issues a certificate for %q; the agent's --host is %q (they must be equal)", inv, inv.args[0], host)
		}
		im, am := inv.c.mountOf(inv.last("out", "")), c.mountOf(tlsDir)
		if im == nil || am == nil || im.Name != am.Name {
			t.Errorf("%s: writes %s on another volume than the one the agent reads --tls-dir %s from", inv, inv.last("out", ""), tlsDir)
		}
	}
	if !issued {
		t.Errorf("%s: no init container of its pod runs `supervisor tls issue` for it", agent)
	}
}

// TestSupervisorConfig checks the supervisor's config: it is in the
// ConfigMap mounted where --config says, config.Parse accepts it, every
// phase runs on the agents, its etcd endpoints are etcd's Service, its
// control API is the container's port behind a Service, its files are on
// volumes, and the agents agree with it (etcd, prefix, lease TTL,
// phases, artifact directory).
func TestSupervisorConfig(t *testing.T) {
	m := load(t)
	sup, agent, _ := roles(t, m)
	c, pod := sup.c, &sup.w.workload.Template.Spec

	path := sup.last("config", "")
	if path == "" {
		t.Fatalf("%s: no --config: it would run the embedded default, without a cluster block", sup)
	}
	vm := c.mountOf(path)
	if vm == nil {
		t.Fatalf("%s: --config %s is on no volume", sup, path)
	}
	v := pod.volume(vm.Name)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("%s: --config %s: volume %q is not a ConfigMap", sup, path, vm.Name)
	}
	key := strings.TrimPrefix(path, strings.TrimRight(vm.MountPath, "/")+"/")
	for _, it := range v.ConfigMap.Items {
		if it.Path == key {
			key = it.Key
		}
	}
	cm := m.find("ConfigMap", v.ConfigMap.Name)
	if cm == nil {
		t.Fatalf("%s: --config %s: no ConfigMap %s", sup, path, v.ConfigMap.Name)
	}
	src, ok := cm.Data[key]
	if !ok {
		t.Fatalf("%s: --config %s: %s has no key %q", sup, path, cm, key)
	}
	cfg, err := config.Parse([]byte(src), cm.file+":"+key)
	if err != nil {
		t.Fatalf("%s: key %s: config.Parse: %v", cm, key, err)
	}

	for _, ph := range cfg.Phases {
		if ph.Instances != 0 {
			t.Errorf("%s: phase %q has instances = %d: the supervisor's pod has no GPU; want 0, every instance on the agents", cm, ph.Name, ph.Instances)
		}
	}
	cl := cfg.Cluster
	if cl == nil {
		t.Fatalf("%s: the config has no cluster block", cm)
	}
	if len(cl.Etcd) == 0 {
		t.Errorf("%s: the cluster block lists no etcd endpoint", cm)
	}
	for _, ep := range cl.Etcd {
		checkEtcdEndpoint(t, m, fmt.Sprintf("%s: cluster etcd endpoint", cm), ep)
	}

	// The control API: the container's port, behind a Service.
	_, port, err := net.SplitHostPort(cfg.Control.Listen)
	if err != nil {
		t.Fatalf("%s: control listen %q: %v; want the control API on TCP for its Service", cm, cfg.Control.Listen, err)
	}
	var named string
	for _, cp := range c.Ports {
		if strconv.Itoa(cp.ContainerPort) == port {
			named = cp.Name
		}
	}
	if named == "" {
		t.Errorf("%s: %s declares no port %s, where the config's control block listens", sup.w, c, port)
	}
	served := false
	for _, s := range m.services() {
		if !selects(s.service.Selector, sup.w.workload.Template.Metadata.Labels) {
			continue
		}
		for _, p := range s.service.Ports {
			if tp := string(p.TargetPort); tp == port || (tp != "" && tp == named) || (tp == "" && strconv.Itoa(p.Port) == port) {
				served = true
			}
		}
	}
	if !served {
		t.Errorf("no Service reaches the supervisor's control API (%s port %s)", sup.w, port)
	}

	// Files: on volumes, and written there by the init container.
	init := ""
	for _, ic := range pod.InitContainers {
		init += ic.script() + "\n"
	}
	for what, p := range map[string]string{"control token_file": cfg.Control.TokenFile, "cluster tls_dir": cl.TLSDir} {
		if p == "" || c.mountOf(p) == nil {
			t.Errorf("%s: %s %q is on no volume of %s", cm, what, p, c)
		}
		if !strings.Contains(init, p) {
			t.Errorf("%s: %s %q: no init container of %s writes it", cm, what, p, sup.w)
		}
	}
	if sd, ok := c.env("PHASED_STATE_DIR"); !ok || c.mountOf(sd) == nil {
		t.Errorf("%s: $PHASED_STATE_DIR %q (the journal) is on no volume", sup, sd)
	}

	// The agents register where the supervisor watches.
	agentEtcd := strings.Split(agent.last("etcd", ""), ",")
	if !slices.Equal(sortedCopy(agentEtcd), sortedCopy(cl.Etcd)) {
		t.Errorf("%s: --etcd %v; the supervisor's config watches %v", agent, agentEtcd, cl.Etcd)
	}
	for _, ep := range agentEtcd {
		checkEtcdEndpoint(t, m, fmt.Sprintf("%s: --etcd", agent), ep)
	}
	if p := agent.last("etcd-prefix", supervisor.DefaultEtcdPrefix); p != cl.Prefix {
		t.Errorf("%s: --etcd-prefix %s; the supervisor's config has prefix %s", agent, p, cl.Prefix)
	}
	ttl, err := time.ParseDuration(agent.last("lease-ttl", supervisor.DefaultLeaseTTL.String()))
	if err != nil || ttl != cl.LeaseTTL {
		t.Errorf("%s: --lease-ttl %s; the supervisor's config has lease_ttl %s", agent, agent.last("lease-ttl", ""), cl.LeaseTTL)
	}
	if len(agent.flags["serve"]) == 0 {
		t.Errorf("%s: no --serve: it would run nothing", agent)
	}
	for _, s := range agent.flags["serve"] {
		name, _, _ := strings.Cut(s, "=")
		if !slices.ContainsFunc(cfg.Phases, func(p config.Phase) bool { return p.Name == name }) {
			t.Errorf("%s: --serve %s: the supervisor's pipeline has no phase %q", agent, s, name)
		}
	}
	// The last phase writes artifact_dir on its agent's node.
	if !filepath.IsAbs(cfg.ArtifactDir) {
		t.Errorf("%s: artifact_dir %q: want an absolute path, which the decoder on an agent writes", cm, cfg.ArtifactDir)
	} else if am := agent.c.mountOf(cfg.ArtifactDir); am == nil || am.ReadOnly {
		t.Errorf("%s: the config's artifact_dir %s is on no writable volume of the agent, where the decoder writes it", agent, cfg.ArtifactDir)
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// checkEtcdEndpoint checks that ep is http://SERVICE:PORT, SERVICE being
// a Service of the manifests (by its name in the namespace, or its DNS
// name) that selects an etcd StatefulSet's pods, PORT one of its ports.
func checkEtcdEndpoint(t *testing.T, m *manifests, what, ep string) {
	t.Helper()
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "http" || u.Port() == "" {
		t.Errorf("%s %q: want http://SERVICE:PORT", what, ep)
		return
	}
	host, port := u.Hostname(), u.Port()
	for _, s := range m.services() {
		ns, name := s.Metadata.Namespace, s.Metadata.Name
		if !slices.Contains([]string{name + "." + ns, name + "." + ns + ".svc", name + "." + ns + ".svc.cluster.local"}, host) && host != name {
			continue
		}
		if s.service.ClusterIP == "None" {
			t.Errorf("%s %q: %s is headless; name the client Service", what, ep, s)
		}
		if !slices.ContainsFunc(s.service.Ports, func(p struct {
			Name       string      `yaml:"name"`
			Port       int         `yaml:"port"`
			TargetPort intOrString `yaml:"targetPort"`
		}) bool {
			return strconv.Itoa(p.Port) == port
		}) {
			t.Errorf("%s %q: %s has no port %s", what, ep, s, port)
		}
		if !slices.ContainsFunc(m.selected(s.service.Selector), isEtcd) {
			t.Errorf("%s %q: %s selects no etcd StatefulSet", what, ep, s)
		}
		return
	}
	t.Errorf("%s %q: host %s is no Service of the manifests (want SERVICE, SERVICE.NAMESPACE or SERVICE.NAMESPACE.svc)", what, ep, host)
}

// isEtcd reports whether w is a StatefulSet running etcd.
func isEtcd(w *object) bool {
	return w.Kind == "StatefulSet" && slices.ContainsFunc(w.workload.Template.Spec.Containers, func(c container) bool {
		return strings.Contains(c.Image, "/etcd:")
	})
}

// TestEtcdMembers checks that each etcd StatefulSet's --initial-cluster
// names exactly its replicas, each at its name under its headless
// Service.
func TestEtcdMembers(t *testing.T) {
	m := load(t)
	found := false
	for _, w := range m.workloads() {
		if !isEtcd(w) {
			continue
		}
		found = true
		replicas := 1
		if w.workload.Replicas != nil {
			replicas = *w.workload.Replicas
		}
		if replicas != 1 && replicas != 3 && replicas != 5 {
			t.Errorf("%s: %d replicas; etcd wants an odd number (1, 3 or 5)", w, replicas)
		}
		var members string
		for _, c := range w.workload.Template.Spec.Containers {
			for _, a := range c.Args {
				if v, ok := strings.CutPrefix(a, "--initial-cluster="); ok {
					members = v
				}
			}
		}
		if members == "" {
			t.Errorf("%s: no --initial-cluster=NAME=URL,...", w)
			continue
		}
		entries := strings.Split(members, ",")
		if len(entries) != replicas {
			t.Errorf("%s: --initial-cluster lists %d members for %d replicas", w, len(entries), replicas)
		}
		for i, e := range entries {
			name, peer, _ := strings.Cut(e, "=")
			want := fmt.Sprintf("%s-%d", w.Metadata.Name, i)
			if name != want || !strings.HasPrefix(peer, "http://"+want+"."+w.workload.ServiceName+".") {
				t.Errorf("%s: --initial-cluster member %d is %q; want %s=http://%s.%s.NAMESPACE.svc:2380", w, i, e, want, want, w.workload.ServiceName)
			}
		}
	}
	if !found {
		t.Error("no etcd StatefulSet among the manifests")
	}
}
