// Package netns makes test hosts: Linux network namespaces joined by a
// bridge, on one machine, so that tests can run what crosses a network
// (agents, etcd, zmq hops between hosts) and cut a host's link. Making
// them needs root and iproute2's ip; tests skip without (Available).
//
// The namespaces are the test's own: the bridge lives in a namespace of
// its own too, so nothing is added to the machine's own network. Each
// host gets the address 10.77.0.N/24 (N from 1, in the order given) on
// its end of a veth pair whose other end is on the bridge.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
)

// Available says why test hosts cannot be made here, or nil. Being root
// is not always enough (a container without CAP_SYS_ADMIN): it makes and
// removes a namespace once to know.
func Available() error {
	probe.Do(func() {
		if os.Geteuid() != 0 {
			probe.err = errors.New("network namespaces need root: run as root (CI does)")
			return
		}
		if _, err := exec.LookPath("ip"); err != nil {
			probe.err = errors.New("iproute2's ip is not installed (apt-get install iproute2)")
			return
		}
		name := fmt.Sprintf("phprobe%d", os.Getpid())
		if err := ip("netns", "add", name); err != nil {
			probe.err = fmt.Errorf("this machine does not let root make network namespaces: %w", err)
			return
		}
		probe.err = ip("netns", "del", name)
	})
	return probe.err
}

var probe struct {
	sync.Once
	err error
}

// Net is a set of test hosts on one bridge.
type Net struct {
	prefix string
	bridge string // the bridge's namespace
	Hosts  []*Host
}

// Host is one test host.
type Host struct {
	Name string // as given to New
	NS   string // its network namespace
	Addr string // its address, without the prefix length
	net  *Net
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// New makes a host per name (each 1 to 8 lower-case letters or digits),
// all on one bridge, their namespaces named after prefix and the
// process id (so that concurrent runs do not meet). Close removes them.
func New(prefix string, names ...string) (n *Net, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if !nameRE.MatchString(prefix) {
		return nil, fmt.Errorf("netns: prefix %q: expected 1 to 8 lower-case letters or digits", prefix)
	}
	if len(names) == 0 || len(names) > 200 {
		return nil, fmt.Errorf("netns: %d hosts: want 1 to 200", len(names))
	}
	base := fmt.Sprintf("%s%d", prefix, os.Getpid())
	n = &Net{prefix: base, bridge: base + "-br"}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Close())
			n = nil
		}
	}()
	if err := ip("netns", "add", n.bridge); err != nil {
		return n, err
	}
	if err := ip("-n", n.bridge, "link", "add", "br0", "type", "bridge"); err != nil {
		return n, err
	}
	if err := ip("-n", n.bridge, "link", "set", "br0", "up"); err != nil {
		return n, err
	}
	for i, name := range names {
		if !nameRE.MatchString(name) {
			return n, fmt.Errorf("netns: host %q: expected 1 to 8 lower-case letters or digits", name)
		}
		h := &Host{Name: name, NS: base + "-" + name, Addr: fmt.Sprintf("10.77.0.%d", i+1), net: n}
		n.Hosts = append(n.Hosts, h)
		if err := ip("netns", "add", h.NS); err != nil {
			return n, err
		}
		steps := [][]string{
			{"-n", h.NS, "link", "set", "lo", "up"},
			{"-n", h.NS, "link", "add", "eth0", "type", "veth", "peer", "name", h.port(), "netns", n.bridge},
			{"-n", h.NS, "addr", "add", h.Addr + "/24", "dev", "eth0"},
			{"-n", h.NS, "link", "set", "eth0", "up"},
			{"-n", n.bridge, "link", "set", h.port(), "master", "br0"},
			{"-n", n.bridge, "link", "set", h.port(), "up"},
		}
		for _, s := range steps {
			if err := ip(s...); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// Host returns the host named name, or nil.
func (n *Net) Host(name string) *Host {
	for _, h := range n.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Close removes every namespace of the net (their veths go with them).
// Processes still running in one keep it alive until they exit: stop
// them first.
func (n *Net) Close() error {
	var errs []error
	for _, h := range n.Hosts {
		if err := ip("netns", "del", h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ip("netns", "del", n.bridge); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// port is the host's veth end on the bridge.
func (h *Host) port() string { return "p-" + h.Name }

// Command returns a command that runs name with args inside the host's
// network namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Cut takes the host's link down, on the bridge's side: nothing reaches
// it or leaves it until Restore.
func (h *Host) Cut() error { return ip("-n", h.net.bridge, "link", "set", h.port(), "down") }

// Restore brings the host's link up again.
func (h *Host) Restore() error { return ip("-n", h.net.bridge, "link", "set", h.port(), "up") }

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netns: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
