package kubernetes_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The manifests as the test reads them: every document of every YAML
// file in this directory, decoded into the few fields the checks look at
// (kubectl itself checks the rest when it applies them).

// object is one document of a manifest file.
type object struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   objectMeta        `yaml:"metadata"`
	Spec       yaml.Node         `yaml:"spec"`
	Data       map[string]string `yaml:"data"`

	file string // its file's name
	doc  int    // its document's number in the file, from 1

	// The spec decoded, by kind.
	workload *workloadSpec      // Deployment, StatefulSet, DaemonSet
	service  *serviceSpec       // Service
	netpol   *networkPolicySpec // NetworkPolicy
}

// String names the object and where it is: "supervisor.yaml#2 Deployment/phased-supervisor".
func (o *object) String() string {
	return fmt.Sprintf("%s#%d %s/%s", o.file, o.doc, o.Kind, o.Metadata.Name)
}

// ref is how other objects refer to it: "Kind/name".
func (o *object) ref() string { return o.Kind + "/" + o.Metadata.Name }

type objectMeta struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type workloadSpec struct {
	Replicas *int `yaml:"replicas"`
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	ServiceName string `yaml:"serviceName"`
	Template    struct {
		Metadata objectMeta `yaml:"metadata"`
		Spec     podSpec    `yaml:"spec"`
	} `yaml:"template"`
	VolumeClaimTemplates []struct {
		Metadata objectMeta `yaml:"metadata"`
	} `yaml:"volumeClaimTemplates"`
}

type podSpec struct {
	NodeSelector    map[string]string `yaml:"nodeSelector"`
	Affinity        yaml.Node         `yaml:"affinity"`
	HostNetwork     bool              `yaml:"hostNetwork"`
	HostPID         bool              `yaml:"hostPID"`
	HostIPC         bool              `yaml:"hostIPC"`
	SecurityContext securityContext   `yaml:"securityContext"`
	InitContainers  []container       `yaml:"initContainers"`
	Containers      []container       `yaml:"containers"`
	Volumes         []volume          `yaml:"volumes"`
}

// securityContext holds the fields of a pod's and of a container's.
type securityContext struct {
	RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
	RunAsUser                *int  `yaml:"runAsUser"`
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	Privileged               *bool `yaml:"privileged"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
		Add  []string `yaml:"add"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type container struct {
	Name            string          `yaml:"name"`
	Image           string          `yaml:"image"`
	Command         []string        `yaml:"command"`
	Args            []string        `yaml:"args"`
	Env             []envVar        `yaml:"env"`
	EnvFrom         []envFrom       `yaml:"envFrom"`
	Ports           []containerPort `yaml:"ports"`
	VolumeMounts    []volumeMount   `yaml:"volumeMounts"`
	StartupProbe    *probe          `yaml:"startupProbe"`
	LivenessProbe   *probe          `yaml:"livenessProbe"`
	ReadinessProbe  *probe          `yaml:"readinessProbe"`
	SecurityContext securityContext `yaml:"securityContext"`
	Resources       struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`

	init bool // an init container
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
		SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
		FieldRef        *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type keyRef struct {
	Name     string `yaml:"name"`
	Key      string `yaml:"key"`
	Optional bool   `yaml:"optional"`
}

type envFrom struct {
	ConfigMapRef *struct {
		Name string `yaml:"name"`
	} `yaml:"configMapRef"`
	SecretRef *struct {
		Name string `yaml:"name"`
	} `yaml:"secretRef"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name  string     `yaml:"name"`
		Items []keyToKey `yaml:"items"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName string     `yaml:"secretName"`
		Items      []keyToKey `yaml:"items"`
	} `yaml:"secret"`
	PersistentVolumeClaim *struct {
		ClaimName string `yaml:"claimName"`
	} `yaml:"persistentVolumeClaim"`
	EmptyDir *struct {
		Medium string `yaml:"medium"`
	} `yaml:"emptyDir"`
}

type keyToKey struct {
	Key  string `yaml:"key"`
	Path string `yaml:"path"`
}

type probe struct {
	HTTPGet *struct {
		Path string      `yaml:"path"`
		Port intOrString `yaml:"port"`
	} `yaml:"httpGet"`
	TCPSocket *struct {
		Port intOrString `yaml:"port"`
	} `yaml:"tcpSocket"`
	GRPC *struct {
		Port intOrString `yaml:"port"`
	} `yaml:"grpc"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
}

// intOrString is a port: a number or a port's name, as written.
type intOrString string

func (v *intOrString) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a port is a number or a name", n.Line)
	}
	*v = intOrString(n.Value)
	return nil
}

type serviceSpec struct {
	ClusterIP string            `yaml:"clusterIP"`
	Selector  map[string]string `yaml:"selector"`
	Ports     []struct {
		Name       string      `yaml:"name"`
		Port       int         `yaml:"port"`
		TargetPort intOrString `yaml:"targetPort"`
	} `yaml:"ports"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type networkPolicySpec struct {
	PodSelector labelSelector `yaml:"podSelector"`
	Ingress     []struct {
		From []struct {
			PodSelector *labelSelector `yaml:"podSelector"`
		} `yaml:"from"`
		Ports []struct {
			Port intOrString `yaml:"port"`
		} `yaml:"ports"`
	} `yaml:"ingress"`
}

type kustomization struct {
	Namespace string   `yaml:"namespace"`
	Resources []string `yaml:"resources"`
	Images    []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	} `yaml:"images"`
}

const kustomizationFile = "kustomization.yaml"

// manifests are the files of this directory.
type manifests struct {
	files   []string // every YAML file but the kustomization, sorted
	kust    kustomization
	objects []*object
}

// load reads every YAML file here; a file that does not decode fails the
// test, naming the file and document.
func load(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{}
	var names []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		found, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, found...)
	}
	slices.Sort(names)
	if !slices.Contains(names, kustomizationFile) {
		t.Fatalf("no %s in deploy/kubernetes", kustomizationFile)
	}
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if name == kustomizationFile {
			if err := yaml.Unmarshal(data, &m.kust); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			continue
		}
		m.files = append(m.files, name)
		objs, err := decodeFile(name, data)
		if err != nil {
			t.Fatal(err)
		}
		m.objects = append(m.objects, objs...)
	}
	if len(m.objects) == 0 {
		t.Fatal("no objects in deploy/kubernetes")
	}
	return m
}

// decodeFile decodes every document of a file.
func decodeFile(name string, data []byte) ([]*object, error) {
	var out []*object
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for doc := 1; ; doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s#%d: %w", name, doc, err)
		}
		if len(n.Content) == 0 || n.Content[0].Tag == "!!null" {
			continue // an empty document
		}
		o := &object{file: name, doc: doc}
		if err := n.Decode(o); err != nil {
			return nil, fmt.Errorf("%s#%d: %w", name, doc, err)
		}
		var spec any
		switch o.Kind {
		case "Deployment", "StatefulSet", "DaemonSet":
			o.workload = &workloadSpec{}
			spec = o.workload
		case "Service":
			o.service = &serviceSpec{}
			spec = o.service
		case "NetworkPolicy":
			o.netpol = &networkPolicySpec{}
			spec = o.netpol
		}
		if spec != nil && o.Spec.Kind != 0 {
			if err := o.Spec.Decode(spec); err != nil {
				return nil, fmt.Errorf("%s: spec: %w", o, err)
			}
		}
		if o.workload != nil {
			pod := &o.workload.Template.Spec
			for i := range pod.InitContainers {
				pod.InitContainers[i].init = true
			}
		}
		out = append(out, o)
	}
}

// find returns the object of kind and name, or nil.
func (m *manifests) find(kind, name string) *object {
	for _, o := range m.objects {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	return nil
}

// workloads returns the Deployments, StatefulSets and DaemonSets.
func (m *manifests) workloads() []*object {
	var out []*object
	for _, o := range m.objects {
		if o.workload != nil {
			out = append(out, o)
		}
	}
	return out
}

// services returns the Services.
func (m *manifests) services() []*object {
	var out []*object
	for _, o := range m.objects {
		if o.service != nil {
			out = append(out, o)
		}
	}
	return out
}

// selected returns the workloads whose pods sel selects; an empty
// selector selects none.
func (m *manifests) selected(sel map[string]string) []*object {
	var out []*object
	for _, w := range m.workloads() {
		if selects(sel, w.workload.Template.Metadata.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// selects reports whether sel is not empty and labels hold all of it.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// allContainers returns a pod's init containers, then its containers.
func allContainers(p *podSpec) []*container {
	var out []*container
	for i := range p.InitContainers {
		out = append(out, &p.InitContainers[i])
	}
	for i := range p.Containers {
		out = append(out, &p.Containers[i])
	}
	return out
}

// String names a container: "container agent" or "init container ca".
func (c *container) String() string {
	if c.init {
		return "init container " + c.Name
	}
	return "container " + c.Name
}

// env returns the value of the container's variable name, and whether it
// has one given as a value.
func (c *container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom == nil {
			return e.Value, true
		}
	}
	return "", false
}

// hasPort reports whether the container declares port p: its name, or
// its number.
func (c *container) hasPort(p intOrString) bool {
	for _, cp := range c.Ports {
		if string(p) == cp.Name || string(p) == fmt.Sprint(cp.ContainerPort) {
			return true
		}
	}
	return false
}

// mountOf returns the container's mount that holds path (the deepest),
// or nil.
func (c *container) mountOf(path string) *volumeMount {
	var best *volumeMount
	for i, vm := range c.VolumeMounts {
		mp := strings.TrimRight(vm.MountPath, "/")
		if (path == mp || strings.HasPrefix(path, mp+"/")) && (best == nil || len(mp) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	return best
}

// volume returns the pod's volume name, or nil.
func (p *podSpec) volume(name string) *volume {
	for i := range p.Volumes {
		if p.Volumes[i].Name == name {
			return &p.Volumes[i]
		}
	}
	return nil
}

// script is what a container runs, as one string: its command and args.
func (c *container) script() string {
	return strings.Join(append(slices.Clone(c.Command), c.Args...), " ")
}
