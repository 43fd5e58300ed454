package config

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/phased/phased/sdk/transfer"
)

// Cluster is the cluster block: phase instances on other hosts, each run
// by `supervisor agent` there (docs/deploy.md). The agents are found in
// etcd, or listed here.
type Cluster struct {
	// Host is this supervisor's host label ("" is its host name).
	Host string
	// Address is where this host's instances bind their zmq rooms for
	// hops to other hosts: its address on the network between them.
	// A phase's own address wins.
	Address string
	// TLSDir holds this host's bundle (`supervisor tls issue HOST`): the
	// CA, its certificate and key for mutual TLS with the agents, and the
	// cluster's CURVE key for the data between hosts.
	TLSDir string
	// Etcd lists etcd's endpoints (http://HOST:PORT); none: only the
	// agents listed in Agents.
	Etcd []string
	// Prefix is the etcd key prefix the agents register under.
	Prefix string
	// LeaseTTL is how long a listed agent may be unreachable before its
	// instances are taken for lost (the agents' own etcd leases have
	// theirs).
	LeaseTTL time.Duration
	// Agents are the agents listed here.
	Agents []Agent
	At     Pos
}

// Agent is an agent listed in the cluster block.
type Agent struct {
	// Host is its host label, the name its certificate was issued for.
	Host string
	// Address is HOST:PORT it serves on.
	Address string
}

// Defaults of the cluster block.
const (
	DefaultEtcdPrefix = "/phased"
	DefaultLeaseTTL   = 10 * time.Second
)

type clusterBlock struct {
	Host     *string      `hcl:"host,optional"`
	Address  *string      `hcl:"address,optional"`
	TLSDir   string       `hcl:"tls_dir"`
	Etcd     []string     `hcl:"etcd,optional"`
	Prefix   *string      `hcl:"prefix,optional"`
	LeaseTTL *string      `hcl:"lease_ttl,optional"`
	Agents   []agentBlock `hcl:"agent,block"`
	DefRange hcl.Range    `hcl:",def_range"`
}

type agentBlock struct {
	Host     string    `hcl:"host,label"`
	Address  string    `hcl:"address"`
	DefRange hcl.Range `hcl:",def_range"`
}

// HostLabelRE is what a host label looks like (also an agent's --host).
var HostLabelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

var prefixRE = regexp.MustCompile(`^/[A-Za-z0-9_./-]{0,127}$`)

// build sets c.Cluster from the block, and checks the phases that have
// no instance on this host.
func (cb *clusterBlock) build(c *Config, filename string) []error {
	var errs []error
	if cb == nil {
		for _, ph := range c.Phases {
			if ph.Instances == 0 {
				errs = append(errs, fmt.Errorf("%s: phase %q: instances = 0 runs every instance on agents, which needs a cluster block", ph.At.Block, ph.Name))
			}
		}
		return errs
	}
	at := where(cb.DefRange)
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: cluster: %s", at, fmt.Sprintf(format, args...)))
	}
	cl := &Cluster{Host: deref(cb.Host, ""), Address: deref(cb.Address, ""), TLSDir: cb.TLSDir, Etcd: cb.Etcd,
		Prefix: deref(cb.Prefix, DefaultEtcdPrefix), LeaseTTL: DefaultLeaseTTL, At: posOf(cb.DefRange)}
	if cl.Host != "" && !HostLabelRE.MatchString(cl.Host) {
		fail("host %q: expected 1 to 63 letters, digits, '.', '_' or '-'", cl.Host)
	}
	if cl.Address != "" {
		if err := transfer.CheckHost(cl.Address); err != nil {
			fail("address %q: %v", cl.Address, err)
		}
	}
	if cl.TLSDir == "" {
		fail("tls_dir is empty: name the directory `supervisor tls issue HOST` wrote")
	}
	if !prefixRE.MatchString(cl.Prefix) {
		fail("prefix %q: expected a key prefix such as \"/phased\"", cl.Prefix)
	}
	parsed := len(errs)
	errs = setDuration(errs, at, "cluster: lease_ttl", cb.LeaseTTL, &cl.LeaseTTL)
	if len(errs) == parsed && (cl.LeaseTTL < time.Second || cl.LeaseTTL > time.Hour || cl.LeaseTTL%time.Second != 0) {
		fail("lease_ttl %s: expected whole seconds from 1s to 1h", cl.LeaseTTL)
	}
	for _, ep := range cl.Etcd {
		if h, p, err := net.SplitHostPort(trimScheme(ep)); err != nil || h == "" || !DialPort(p) {
			fail("etcd endpoint %q: expected http://HOST:PORT or https://HOST:PORT", ep)
		}
	}
	hosts := map[string]hcl.Range{}
	for _, ab := range cb.Agents {
		aat := where(ab.DefRange)
		if !HostLabelRE.MatchString(ab.Host) {
			errs = append(errs, fmt.Errorf("%s: cluster: agent %q: expected a host label of letters, digits, '.', '_' or '-'", aat, ab.Host))
		}
		if first, dup := hosts[ab.Host]; dup {
			errs = append(errs, fmt.Errorf("%s: cluster: agent %q is listed twice; first at %s", aat, ab.Host, where(first)))
		} else {
			hosts[ab.Host] = ab.DefRange
		}
		if h, p, err := net.SplitHostPort(ab.Address); err != nil || h == "" || !DialPort(p) {
			errs = append(errs, fmt.Errorf("%s: cluster: agent %q: address %q is not HOST:PORT", aat, ab.Host, ab.Address))
		}
		cl.Agents = append(cl.Agents, Agent{Host: ab.Host, Address: ab.Address})
	}
	if cl.Address == "" {
		for _, ph := range c.Phases {
			if ph.Instances > 0 && ph.Address == "" {
				fail("address is empty, but phase %q has instances on this host: name this host's address on the network between the hosts, where they bind the zmq rooms of hops to other hosts", ph.Name)
				break
			}
		}
	}
	if len(cl.Etcd) == 0 && len(cl.Agents) == 0 {
		fail("no agents: give etcd endpoints, agent blocks, or both")
	}
	c.Cluster = cl
	return errs
}

// DialPort reports whether p is a port one can dial: 1 to 65535 (an
// agent's address, an etcd endpoint, a registration in etcd).
func DialPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n <= 65535
}

// trimScheme returns an endpoint without its http:// or https://.
func trimScheme(ep string) string {
	for _, s := range []string{"http://", "https://"} {
		if len(ep) > len(s) && ep[:len(s)] == s {
			return ep[len(s):]
		}
	}
	return ep
}
