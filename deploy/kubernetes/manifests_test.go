package kubernetes_test

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/phased/phased/supervisor/pki"
)

// phasedImage is the image the manifests run phased from, without its
// tag: a placeholder that kustomization.yaml's images entry sets.
const phasedImage = "ghcr.io/phased/phased"

// operatorMade are the objects the manifests refer to that the operator
// creates (docs/deploy.md says how), each with the keys the pods read
// and why it is not a manifest here.
var operatorMade = map[string]struct {
	keys []string
	why  string
}{
	"Secret/phased-ca": {[]string{pki.CAFile, pki.CAKeyFile, pki.CurveFile},
		"the CA of `supervisor tls init`: its key issues certificates, so it is never committed"},
	"Secret/phased-tls-supervisor": {[]string{pki.CAFile, pki.CertFile, pki.KeyFile, pki.CurveFile},
		"the supervisor's bundle of `supervisor tls issue supervisor`: a private key"},
	"Secret/phased-control-token": {[]string{"token"},
		"the control API's bearer token"},
}

// deployDoc is the walk-through that tells the operator how to make
// them, from this directory; deployDocName is its name in messages.
const (
	deployDoc     = "../../docs/deploy.md"
	deployDocName = "docs/deploy.md"
)

func TestKustomizationListsEveryFile(t *testing.T) {
	m := load(t)
	for _, f := range m.files {
		if !slices.Contains(m.kust.Resources, f) {
			t.Errorf("%s: not listed in %s's resources: kubectl apply -k would leave it out", f, kustomizationFile)
		}
	}
	for _, r := range m.kust.Resources {
		if !slices.Contains(m.files, r) {
			t.Errorf("%s lists resource %s, which is not a YAML file in deploy/kubernetes", kustomizationFile, r)
		}
	}
	if m.kust.Namespace == "" {
		t.Errorf("%s: no namespace", kustomizationFile)
	}
	if !slices.ContainsFunc(m.kust.Images, func(i struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	}) bool {
		return i.Name == phasedImage
	}) {
		t.Errorf("%s: no images entry for %s, where an operator sets the image", kustomizationFile, phasedImage)
	}
}

var (
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	portName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// TestObjects checks each object on its own: its name and namespace,
// its workload's selector, its containers' images and port names.
func TestObjects(t *testing.T) {
	m := load(t)
	seen := map[string]*object{}
	for _, o := range m.objects {
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Errorf("%s: apiVersion, kind and metadata.name are required", o)
			continue
		}
		if !dnsLabel.MatchString(o.Metadata.Name) || len(o.Metadata.Name) > 63 {
			t.Errorf("%s: name %q is not a DNS label", o, o.Metadata.Name)
		}
		if first := seen[o.ref()]; first != nil {
			t.Errorf("%s: defined twice; first in %s", o, first)
		}
		seen[o.ref()] = o
		switch {
		case o.Kind == "Namespace":
			if o.Metadata.Name != m.kust.Namespace {
				t.Errorf("%s: the kustomization's namespace is %q", o, m.kust.Namespace)
			}
		case o.Metadata.Namespace != m.kust.Namespace:
			t.Errorf("%s: namespace %q, want %q (the kustomization's), so that kubectl apply -f puts it there too", o, o.Metadata.Namespace, m.kust.Namespace)
		}
	}
	if m.find("Namespace", m.kust.Namespace) == nil {
		t.Errorf("no Namespace %s among the manifests", m.kust.Namespace)
	}
	for _, w := range m.workloads() {
		sel, labels := w.workload.Selector.MatchLabels, w.workload.Template.Metadata.Labels
		if !selects(sel, labels) {
			t.Errorf("%s: selector %v does not match its pod template's labels %v", w, sel, labels)
		}
		for _, other := range m.workloads() {
			if other != w && selects(sel, other.workload.Template.Metadata.Labels) {
				t.Errorf("%s: selector %v also selects the pods of %s", w, sel, other)
			}
		}
		pod := &w.workload.Template.Spec
		names := map[string]bool{}
		for _, c := range allContainers(pod) {
			if c.Image == "" {
				t.Errorf("%s: %s has no image", w, c)
			}
			if strings.HasPrefix(c.Image, phasedImage) && c.Image != phasedImage+":latest" {
				t.Errorf("%s: %s runs %s: name %s:latest and let the kustomization's images entry set the tag", w, c, c.Image, phasedImage)
			}
			for _, p := range c.Ports {
				if len(p.Name) > 15 || !portName.MatchString(p.Name) || !strings.ContainsAny(p.Name, "abcdefghijklmnopqrstuvwxyz") {
					t.Errorf("%s: %s: port name %q: want up to 15 lower-case letters, digits and '-'", w, c, p.Name)
				}
				if names[p.Name] {
					t.Errorf("%s: %s: port name %q is used twice in the pod", w, c, p.Name)
				}
				names[p.Name] = true
			}
		}
	}
}

// TestServiceSelectors checks that every Service selects some workload's
// pods and that their containers have the ports it targets, and that a
// StatefulSet's serviceName is a headless Service selecting its pods.
func TestServiceSelectors(t *testing.T) {
	m := load(t)
	for _, s := range m.services() {
		picked := m.selected(s.service.Selector)
		if len(picked) == 0 {
			t.Errorf("%s: selector %v matches the pod template labels of no workload", s, s.service.Selector)
			continue
		}
		for _, p := range s.service.Ports {
			target := p.TargetPort
			if target == "" {
				target = intOrString(strconv.Itoa(p.Port))
			}
			for _, w := range picked {
				if !slices.ContainsFunc(w.workload.Template.Spec.Containers, func(c container) bool { return c.hasPort(target) }) {
					t.Errorf("%s: port %q targets %q, which no container of %s declares", s, p.Name, target, w)
				}
			}
		}
	}
	for _, w := range m.workloads() {
		name := w.workload.ServiceName
		if w.Kind != "StatefulSet" {
			continue
		}
		s := m.find("Service", name)
		switch {
		case s == nil:
			t.Errorf("%s: serviceName %q is no Service of the manifests", w, name)
		case s.service.ClusterIP != "None":
			t.Errorf("%s: serviceName %q: %s is not headless (clusterIP: None)", w, name, s)
		case !selects(s.service.Selector, w.workload.Template.Metadata.Labels):
			t.Errorf("%s: serviceName %q: %s does not select its pods", w, name, s)
		}
	}
	for _, o := range m.objects {
		if o.netpol == nil {
			continue
		}
		targets := m.selected(o.netpol.PodSelector.MatchLabels)
		if len(targets) == 0 {
			t.Errorf("%s: podSelector %v selects no workload's pods", o, o.netpol.PodSelector.MatchLabels)
		}
		for _, in := range o.netpol.Ingress {
			for _, from := range in.From {
				if from.PodSelector != nil && len(m.selected(from.PodSelector.MatchLabels)) == 0 {
					t.Errorf("%s: ingress from podSelector %v selects no workload's pods", o, from.PodSelector.MatchLabels)
				}
			}
			for _, p := range in.Ports {
				for _, w := range targets {
					if !slices.ContainsFunc(w.workload.Template.Spec.Containers, func(c container) bool { return c.hasPort(p.Port) }) {
						t.Errorf("%s: ingress port %q is declared by no container of %s", o, p.Port, w)
					}
				}
			}
		}
	}
}

// TestReferences checks that every ConfigMap, Secret and
// PersistentVolumeClaim a pod uses (volumes, env, envFrom) is among the
// manifests or in operatorMade, that its keys exist, and that every
// volume mount names a volume of the pod.
func TestReferences(t *testing.T) {
	m := load(t)
	used := map[string]bool{}
	// exists checks the object kind/name that w's what refers to, and
	// its keys.
	exists := func(w *object, what, kind, name string, keys ...string) {
		ref := kind + "/" + name
		if om, ok := operatorMade[ref]; ok {
			used[ref] = true
			for _, k := range keys {
				if !slices.Contains(om.keys, k) {
					t.Errorf("%s: %s reads key %q of %s, which the operator is not told to create (%v)", w, what, k, ref, om.keys)
				}
			}
			return
		}
		o := m.find(kind, name)
		if o == nil {
			t.Errorf("%s: %s refers to %s, which is neither among the manifests nor in operatorMade (with the reason the operator makes it)", w, what, ref)
			return
		}
		for _, k := range keys {
			if _, ok := o.Data[k]; !ok && o.Kind == "ConfigMap" {
				t.Errorf("%s: %s reads key %q of %s, which has no such key", w, what, k, o)
			}
		}
	}
	for _, w := range m.workloads() {
		pod := &w.workload.Template.Spec
		claims := map[string]bool{}
		for _, vct := range w.workload.VolumeClaimTemplates {
			claims[vct.Metadata.Name] = true
		}
		mounted := map[string]bool{}
		for _, c := range allContainers(pod) {
			for _, vm := range c.VolumeMounts {
				mounted[vm.Name] = true
				if pod.volume(vm.Name) == nil && !claims[vm.Name] {
					t.Errorf("%s: %s mounts volume %q at %s, which the pod does not have", w, c, vm.Name, vm.MountPath)
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
					exists(w, fmt.Sprintf("%s env %s", c, e.Name), "ConfigMap", r.Name, r.Key)
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil {
					exists(w, fmt.Sprintf("%s env %s", c, e.Name), "Secret", r.Name, r.Key)
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil {
					exists(w, fmt.Sprintf("%s envFrom", c), "ConfigMap", ef.ConfigMapRef.Name)
				}
				if ef.SecretRef != nil {
					exists(w, fmt.Sprintf("%s envFrom", c), "Secret", ef.SecretRef.Name)
				}
			}
		}
		for _, v := range pod.Volumes {
			what := fmt.Sprintf("volume %s", v.Name)
			if !mounted[v.Name] {
				t.Errorf("%s: %s is mounted by no container", w, what)
			}
			switch {
			case v.ConfigMap != nil:
				exists(w, what, "ConfigMap", v.ConfigMap.Name, itemKeys(v.ConfigMap.Items)...)
			case v.Secret != nil:
				exists(w, what, "Secret", v.Secret.SecretName, itemKeys(v.Secret.Items)...)
			case v.PersistentVolumeClaim != nil:
				exists(w, what, "PersistentVolumeClaim", v.PersistentVolumeClaim.ClaimName)
			}
		}
	}
	for ref := range operatorMade {
		if !used[ref] {
			t.Errorf("operatorMade lists %s, which no pod uses: remove it", ref)
		}
	}
}

func itemKeys(items []keyToKey) []string {
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

// TestOperatorSecrets checks that each Secret the operator makes is
// copied whole where a pod mounts it (its init scripts read every key),
// and that docs/deploy.md says how to create it.
func TestOperatorSecrets(t *testing.T) {
	m := load(t)
	doc, err := os.ReadFile(deployDoc)
	if err != nil {
		t.Fatalf("%v: %s, the walk-through, tells the operator how to create %d Secrets", err, deployDocName, len(operatorMade))
	}
	for ref, om := range operatorMade {
		name := strings.TrimPrefix(ref, "Secret/")
		if !strings.Contains(string(doc), "create secret generic "+name) {
			t.Errorf("%s is made by the operator (%s), but %s has no `kubectl create secret generic %s`", ref, om.why, deployDocName, name)
		}
		for _, w := range m.workloads() {
			pod := &w.workload.Template.Spec
			for _, v := range pod.Volumes {
				if v.Secret == nil || v.Secret.SecretName != name || len(v.Secret.Items) > 0 {
					continue
				}
				for _, c := range allContainers(pod) {
					for _, vm := range c.VolumeMounts {
						if vm.Name != v.Name {
							continue
						}
						for _, k := range om.keys {
							path := strings.TrimRight(vm.MountPath, "/") + "/" + k
							if !strings.Contains(c.script(), path) {
								t.Errorf("%s: %s mounts %s at %s but never reads %s", w, c, ref, vm.MountPath, path)
							}
						}
					}
				}
			}
		}
	}
}

// TestProbes checks that every probe's port is one its container
// declares, that every long-running container has a liveness and a
// readiness probe, and that an exec probe asking the supervisor's control
// socket names the socket the container's supervisor listens on.
func TestProbes(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads() {
		for i := range w.workload.Template.Spec.Containers {
			c := &w.workload.Template.Spec.Containers[i]
			if c.LivenessProbe == nil || c.ReadinessProbe == nil {
				t.Errorf("%s: %s needs a livenessProbe and a readinessProbe", w, c)
			}
			for kind, p := range map[string]*probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
				if p == nil {
					continue
				}
				var port intOrString
				switch {
				case p.HTTPGet != nil:
					port = p.HTTPGet.Port
				case p.TCPSocket != nil:
					port = p.TCPSocket.Port
				case p.GRPC != nil:
					port = p.GRPC.Port
				case p.Exec != nil:
					checkSocketProbe(t, w, c, kind, p.Exec.Command)
					continue
				default:
					t.Errorf("%s: %s: %s has no handler (httpGet, tcpSocket, grpc or exec)", w, c, kind)
					continue
				}
				if !c.hasPort(port) {
					t.Errorf("%s: %s: %s uses port %q, which the container does not declare", w, c, kind, port)
				}
			}
		}
	}
}

// checkSocketProbe checks an exec probe that asks a unix socket
// (curl --unix-socket PATH): PATH must be the container's $PHASED_SOCKET,
// where `supervisor start` listens.
func checkSocketProbe(t *testing.T, w *object, c *container, kind string, cmd []string) {
	t.Helper()
	i := slices.Index(cmd, "--unix-socket")
	if i < 0 {
		return
	}
	if i+1 >= len(cmd) {
		t.Errorf("%s: %s: %s: --unix-socket without a path", w, c, kind)
		return
	}
	sock, ok := c.env("PHASED_SOCKET")
	if !ok || sock != cmd[i+1] {
		t.Errorf("%s: %s: %s asks socket %s, but the supervisor listens on $PHASED_SOCKET = %q", w, c, kind, cmd[i+1], sock)
	}
	if c.mountOf(cmd[i+1]) == nil {
		t.Errorf("%s: %s: %s: socket %s is on no volume (the root file system is read-only)", w, c, kind, cmd[i+1])
	}
}

var envRef = regexp.MustCompile(`(\$*)\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// TestEnvReferences checks that each $(VAR) in a container's command,
// args and env values names a variable the container defines: Kubernetes
// leaves an unknown one as it is written.
func TestEnvReferences(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads() {
		for _, c := range allContainers(&w.workload.Template.Spec) {
			defined := map[string]bool{}
			for _, e := range c.Env {
				defined[e.Name] = true
			}
			check := func(where, s string) {
				for _, mm := range envRef.FindAllStringSubmatch(s, -1) {
					if len(mm[1])%2 == 1 {
						continue // $$(VAR) is an escaped $(VAR)
					}
					if !defined[mm[2]] && len(c.EnvFrom) == 0 {
						t.Errorf("%s: %s: %s refers to $(%s), which the container does not define", w, c, where, mm[2])
					}
				}
			}
			for i, s := range c.Command {
				check(fmt.Sprintf("command[%d]", i), s)
			}
			for i, s := range c.Args {
				check(fmt.Sprintf("args[%d]", i), s)
			}
			for _, e := range c.Env {
				check("env "+e.Name, e.Value)
			}
		}
	}
}

// TestSecurityContexts checks every pod and container: not root, no
// privilege escalation, a read-only root file system, no capabilities,
// the runtime's seccomp profile, no host namespaces.
func TestSecurityContexts(t *testing.T) {
	m := load(t)
	isTrue := func(b *bool) bool { return b != nil && *b }
	isFalse := func(b *bool) bool { return b != nil && !*b }
	for _, w := range m.workloads() {
		pod := &w.workload.Template.Spec
		if pod.HostNetwork || pod.HostPID || pod.HostIPC {
			t.Errorf("%s: uses the host's network, PID or IPC namespace", w)
		}
		for _, c := range allContainers(pod) {
			sc, psc := c.SecurityContext, pod.SecurityContext
			if !isTrue(sc.RunAsNonRoot) && !isTrue(psc.RunAsNonRoot) {
				t.Errorf("%s: %s: runAsNonRoot is not set", w, c)
			}
			if (sc.RunAsUser != nil && *sc.RunAsUser == 0) || (sc.RunAsUser == nil && psc.RunAsUser != nil && *psc.RunAsUser == 0) {
				t.Errorf("%s: %s: runs as uid 0", w, c)
			}
			if !isFalse(sc.AllowPrivilegeEscalation) {
				t.Errorf("%s: %s: allowPrivilegeEscalation must be false", w, c)
			}
			if !isTrue(sc.ReadOnlyRootFilesystem) {
				t.Errorf("%s: %s: readOnlyRootFilesystem must be true (give what it writes a volume)", w, c)
			}
			if isTrue(sc.Privileged) || len(sc.Capabilities.Add) > 0 || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: %s: must drop ALL capabilities and add none, unprivileged", w, c)
			}
			if sc.SeccompProfile.Type != "RuntimeDefault" && psc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("%s: %s: seccompProfile must be RuntimeDefault", w, c)
			}
		}
	}
}
