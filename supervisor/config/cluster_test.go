package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestClusterParse: a cluster block is read into Config.Cluster, with its
// defaults, and lets a phase run all its instances on agents.
func TestClusterParse(t *testing.T) {
	tests := []struct {
		name, src string
		want      Cluster
		// instances, min and max of the phase "t"
		instances, min, max int
	}{
		{
			name: "etcd and agents",
			src: `phase "t" {
  plugin    = "t"
  instances = 0
}
cluster {
  host      = "hosta"
  address   = "10.0.0.1"
  tls_dir   = "/etc/phased/tls"
  etcd      = ["http://10.0.0.9:2379", "https://etcd.lan:2379"]
  prefix    = "/prod/phased"
  lease_ttl = "5s"
  agent "hostb" { address = "10.0.0.2:7443" }
  agent "hostc" { address = "hostc.lan:7443" }
}
`,
			want: Cluster{
				Host: "hosta", Address: "10.0.0.1", TLSDir: "/etc/phased/tls",
				Etcd:   []string{"http://10.0.0.9:2379", "https://etcd.lan:2379"},
				Prefix: "/prod/phased", LeaseTTL: 5 * time.Second,
				Agents: []Agent{{Host: "hostb", Address: "10.0.0.2:7443"}, {Host: "hostc", Address: "hostc.lan:7443"}},
				At:     Pos{Filename: "c.hcl", Line: 5, Column: 1},
			},
			instances: 0, min: 0, max: 0,
		},
		{
			name: "defaults, etcd only",
			src: `phase "t" {
  plugin    = "t"
  instances = 0
}
cluster {
  tls_dir = "tls"
  etcd    = ["127.0.0.1:2379"]
}
`,
			want: Cluster{TLSDir: "tls", Etcd: []string{"127.0.0.1:2379"}, Prefix: DefaultEtcdPrefix, LeaseTTL: DefaultLeaseTTL,
				At: Pos{Filename: "c.hcl", Line: 5, Column: 1}},
			instances: 0, min: 0, max: 0,
		},
		{
			name: "agents only, IPv6, scale up from none",
			src: `phase "t" {
  plugin    = "t"
  instances = 0
  max       = 4
}
cluster {
  address   = "[fd00::1]"
  tls_dir   = "tls"
  lease_ttl = "1h"
  agent "gpu-1.rack_2" { address = "[fd00::2]:7443" }
}
`,
			want: Cluster{Address: "[fd00::1]", TLSDir: "tls", Prefix: DefaultEtcdPrefix, LeaseTTL: time.Hour,
				Agents: []Agent{{Host: "gpu-1.rack_2", Address: "[fd00::2]:7443"}},
				At:     Pos{Filename: "c.hcl", Line: 6, Column: 1}},
			instances: 0, min: 0, max: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.src), "c.hcl")
			if err != nil {
				t.Fatal(err)
			}
			if c.Cluster == nil {
				t.Fatal("no Cluster")
			}
			if !reflect.DeepEqual(*c.Cluster, tt.want) {
				t.Errorf("cluster\n %+v\nwant\n %+v", *c.Cluster, tt.want)
			}
			ph := c.Phases[0]
			if ph.Instances != tt.instances || ph.Min != tt.min || ph.Max != tt.max {
				t.Errorf("phase t: instances %d, min %d, max %d; want %d, %d, %d", ph.Instances, ph.Min, ph.Max, tt.instances, tt.min, tt.max)
			}
		})
	}
	// No cluster block: no Cluster.
	c, err := Parse([]byte(`phase "t" { plugin = "t" }`), "c.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != nil {
		t.Errorf("no cluster block: Cluster %+v, want nil", *c.Cluster)
	}
}

// TestClusterParseErrors: each mistake in a cluster block, or a phase
// with no instance here and no cluster, is refused with its position and
// what to do.
func TestClusterParseErrors(t *testing.T) {
	const phase = "phase \"t\" { plugin = \"t\" }\n"
	// cluster is a cluster block at c.hcl:2:1 holding body.
	cluster := func(body string) string { return phase + "cluster {\n" + body + "}\n" }
	tests := []struct {
		name, src string
		want      []string
		notWant   []string
	}{
		{
			name: "instances = 0 without a cluster block",
			src:  "phase \"t\" {\n  plugin = \"t\"\n  instances = 0\n}\n",
			want: []string{`c.hcl:1:1: phase "t": instances = 0 runs every instance on agents, which needs a cluster block`},
		},
		{
			name: "instances = 0 of two phases",
			src:  "phase \"a\" { plugin = \"a\" }\nphase \"b\" {\n  plugin = \"b\"\n  instances = 0\n}\n",
			want: []string{`c.hcl:2:1: phase "b": instances = 0 runs every instance on agents, which needs a cluster block`},
			// a, with an instance here, is not named
			notWant: []string{`phase "a"`},
		},
		{
			name: "negative instances",
			src:  "phase \"t\" {\n  plugin = \"t\"\n  instances = -1\n}\n" + "cluster {\n  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n}\n",
			want: []string{`c.hcl:1:1: phase "t": instances must be between 0 (all on agents) and 64, got -1`},
		},
		{
			name: "bad host label",
			src:  cluster("  host = \"-hosta\"\n  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n"),
			want: []string{`c.hcl:2:1: cluster: host "-hosta": expected 1 to 63 letters, digits, '.', '_' or '-'`},
		},
		{
			name: "host label too long",
			src:  cluster("  host = \"" + strings.Repeat("h", 64) + "\"\n  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n"),
			want: []string{`c.hcl:2:1: cluster: host "` + strings.Repeat("h", 64) + `": expected 1 to 63 letters`},
		},
		{
			name: "bad address",
			src:  cluster("  address = \"tcp://10.0.0.1\"\n  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n"),
			want: []string{`c.hcl:2:1: cluster: address "tcp://10.0.0.1": expected a host name or IP address, e.g. 127.0.0.1, 10.0.0.5 or [::1]`},
		},
		{
			name: "address with a port",
			src:  cluster("  address = \"10.0.0.1:7000\"\n  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n"),
			want: []string{`c.hcl:2:1: cluster: address "10.0.0.1:7000": expected a host name or IP address`},
		},
		{
			name: "empty tls_dir",
			src:  cluster("  tls_dir = \"\"\n  etcd = [\"127.0.0.1:2379\"]\n"),
			want: []string{"c.hcl:2:1: cluster: tls_dir is empty: name the directory `supervisor tls issue HOST` wrote"},
		},
		{
			name: "no tls_dir",
			src:  cluster("  etcd = [\"127.0.0.1:2379\"]\n"),
			want: []string{"c.hcl:2:9:", `The argument "tls_dir" is required`},
		},
		{
			name: "prefix without a slash",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  prefix = \"phased\"\n"),
			want: []string{`c.hcl:2:1: cluster: prefix "phased": expected a key prefix such as "/phased"`},
		},
		{
			name: "prefix with a space",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  prefix = \"/a b\"\n"),
			want: []string{`c.hcl:2:1: cluster: prefix "/a b": expected a key prefix such as "/phased"`},
		},
		{
			name: "lease_ttl not whole seconds",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  lease_ttl = \"1500ms\"\n"),
			want: []string{`c.hcl:2:1: cluster: lease_ttl 1.5s: expected whole seconds from 1s to 1h`},
		},
		{
			name: "lease_ttl under a second",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  lease_ttl = \"500ms\"\n"),
			want: []string{`c.hcl:2:1: cluster: lease_ttl 500ms: expected whole seconds from 1s to 1h`},
		},
		{
			name: "lease_ttl over an hour",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  lease_ttl = \"2h\"\n"),
			want: []string{`c.hcl:2:1: cluster: lease_ttl 2h0m0s: expected whole seconds from 1s to 1h`},
		},
		{
			name: "lease_ttl not a duration",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  lease_ttl = \"soon\"\n"),
			want: []string{`c.hcl:2:1: cluster: lease_ttl: "soon" is not a positive duration; expected e.g. "30s" or "2m"`},
			// the user wrote no 0s
			notWant: []string{"lease_ttl 0s"},
		},
		{
			name: "etcd endpoint without a port",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"http://10.0.0.9\"]\n"),
			want: []string{`c.hcl:2:1: cluster: etcd endpoint "http://10.0.0.9": expected http://HOST:PORT or https://HOST:PORT`},
		},
		{
			name: "etcd endpoint with a path",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"http://10.0.0.9:2379/v3\"]\n"),
			want: []string{`c.hcl:2:1: cluster: etcd endpoint "http://10.0.0.9:2379/v3": expected http://HOST:PORT or https://HOST:PORT`},
		},
		{
			name: "etcd endpoint with a bad port",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"http://10.0.0.9:99999\"]\n"),
			want: []string{`c.hcl:2:1: cluster: etcd endpoint "http://10.0.0.9:99999": expected http://HOST:PORT or https://HOST:PORT`},
		},
		{
			name: "etcd endpoint of another scheme",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"ftp://10.0.0.9:2379\"]\n"),
			want: []string{`c.hcl:2:1: cluster: etcd endpoint "ftp://10.0.0.9:2379": expected http://HOST:PORT or https://HOST:PORT`},
		},
		{
			name: "agent listed twice",
			src:  cluster("  tls_dir = \"tls\"\n  agent \"hostb\" { address = \"10.0.0.2:7443\" }\n  agent \"hostb\" { address = \"10.0.0.3:7443\" }\n"),
			want: []string{`c.hcl:5:3: cluster: agent "hostb" is listed twice; first at c.hcl:4:3`},
		},
		{
			name: "agent address without a port",
			src:  cluster("  tls_dir = \"tls\"\n  agent \"hostb\" { address = \"10.0.0.2\" }\n"),
			want: []string{`c.hcl:4:3: cluster: agent "hostb": address "10.0.0.2" is not HOST:PORT`},
		},
		{
			name: "agent address without a host",
			src:  cluster("  tls_dir = \"tls\"\n  agent \"hostb\" { address = \":7443\" }\n"),
			want: []string{`c.hcl:4:3: cluster: agent "hostb": address ":7443" is not HOST:PORT`},
		},
		{
			name: "agent address with port 0",
			src:  cluster("  tls_dir = \"tls\"\n  agent \"hostb\" { address = \"10.0.0.2:0\" }\n"),
			want: []string{`c.hcl:4:3: cluster: agent "hostb": address "10.0.0.2:0" is not HOST:PORT`},
		},
		{
			name: "bad agent host label",
			src:  cluster("  tls_dir = \"tls\"\n  agent \"host/b\" { address = \"10.0.0.2:7443\" }\n"),
			want: []string{`c.hcl:4:3: cluster: agent "host/b": expected a host label of letters, digits, '.', '_' or '-'`},
		},
		{
			name: "agent without an address",
			src:  cluster("  tls_dir = \"tls\"\n  agent \"hostb\" {}\n"),
			want: []string{"c.hcl:4:", `The argument "address" is required`},
		},
		{
			name: "neither etcd nor agents",
			src:  cluster("  tls_dir = \"tls\"\n"),
			want: []string{`c.hcl:2:1: cluster: no agents: give etcd endpoints, agent blocks, or both`},
		},
		{
			name: "empty etcd list and no agents",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = []\n"),
			want: []string{`c.hcl:2:1: cluster: no agents: give etcd endpoints, agent blocks, or both`},
		},
		{
			name: "unknown attribute",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n  leas_ttl = \"5s\"\n"),
			want: []string{"c.hcl:5:3", `An argument named "leas_ttl" is not expected here`},
		},
		{
			name: "two cluster blocks",
			src:  cluster("  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n") + "cluster {\n  tls_dir = \"tls\"\n  etcd = [\"127.0.0.1:2379\"]\n}\n",
			want: []string{"c.hcl:6:1", `Duplicate cluster block`},
		},
		{
			name: "every mistake at once",
			src: "phase \"t\" {\n  plugin = \"t\"\n  instances = 0\n}\ncluster {\n  host = \"a b\"\n  tls_dir = \"\"\n  prefix = \"x\"\n  lease_ttl = \"0.5s\"\n" +
				"  etcd = [\"etcd\"]\n  agent \"b\" { address = \"b\" }\n}\n",
			want: []string{
				`c.hcl:5:1: cluster: host "a b"`,
				`c.hcl:5:1: cluster: tls_dir is empty`,
				`c.hcl:5:1: cluster: prefix "x"`,
				`c.hcl:5:1: cluster: lease_ttl 500ms`,
				`c.hcl:5:1: cluster: etcd endpoint "etcd"`,
				`c.hcl:11:3: cluster: agent "b": address "b" is not HOST:PORT`,
			},
			// with a cluster block, instances = 0 is allowed
			notWant: []string{"needs a cluster block", "no agents"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.src), "c.hcl")
			if err == nil {
				t.Fatalf("parsed (cluster %+v); want an error", c.Cluster)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(err.Error(), w) {
					t.Errorf("error %q contains %q", err, w)
				}
			}
		})
	}
}
