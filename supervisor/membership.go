package supervisor

// Membership through etcd: agents register under a lease, the
// supervisor watches.
//
// Keys, under the prefix (config: cluster { prefix }, agent --etcd-prefix,
// "/phased" by default), each put under its agent's lease:
//
//	PREFIX/agents/HOST          agentRecord (JSON): address, zmq host, GPUs, offers
//	PREFIX/instances/HOST/ID    instanceRecord (JSON): an instance it runs
//
// An agent that stops revokes its lease, which removes its keys; one that
// dies or is cut off from etcd loses them when its lease expires, after
// its TTL, and the supervisor, watching PREFIX/agents/, takes the host for
// lost. The agent learns of it too (its keep-alive channel closes) and
// stops its instances: supervisors are retrying their requests elsewhere.
// Once etcd answers again, the agent registers under a new lease and the
// supervisor has the host join again.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/phased/phased/supervisor/config"
)

// agentRecord is an agent's registration.
type agentRecord struct {
	Host       string         `json:"host"`
	Address    string         `json:"address"`
	ZMQHost    string         `json:"zmq_host"`
	GPUs       []string       `json:"gpus,omitempty"`
	Offers     map[string]int `json:"offers"`
	Capacity   map[string]int `json:"capacity,omitempty"`
	LeaseTTLms int64          `json:"lease_ttl_ms"`
}

// instanceRecord is an instance an agent runs.
type instanceRecord struct {
	ID      string `json:"id"`
	Phase   string `json:"phase"`
	Host    string `json:"host"`
	PID     int    `json:"pid"`
	Session string `json:"session"`
}

// Key paths under the prefix.
func agentsKey(prefix string) string             { return prefix + "/agents/" }
func agentKey(prefix, host string) string        { return agentsKey(prefix) + host }
func instancesKey(prefix, host string) string    { return prefix + "/instances/" + host + "/" }
func instanceKey(prefix, host, id string) string { return instancesKey(prefix, host) + id }

// maxRecord bounds a registration's size: etcd's values are anyone's
// with write access to it.
const maxRecord = 64 << 10

// parseAgent reads the registration under key; it checks what the
// supervisor will use.
func parseAgent(prefix string, key, value []byte) (agentRecord, error) {
	var rec agentRecord
	name := strings.TrimPrefix(string(key), agentsKey(prefix))
	if len(value) > maxRecord {
		return rec, fmt.Errorf("etcd key %s: %d bytes: a registration holds at most %d", key, len(value), maxRecord)
	}
	if err := json.Unmarshal(value, &rec); err != nil {
		return rec, fmt.Errorf("etcd key %s: %w", key, err)
	}
	switch h, p, err := net.SplitHostPort(rec.Address); {
	case rec.Host != name || !config.HostLabelRE.MatchString(rec.Host):
		return rec, fmt.Errorf("etcd key %s: host %q: expected the key's last part, a host label", key, rec.Host)
	case err != nil || h == "" || !config.DialPort(p):
		return rec, fmt.Errorf("etcd key %s: address %q: expected HOST:PORT", key, rec.Address)
	}
	return rec, nil
}

// etcdClient connects to etcd (lazily: a call fails, or waits, while it
// cannot be reached).
func etcdClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
}

// registry is an agent's registration in etcd.
type registry struct {
	cli    *clientv3.Client
	prefix string
	host   string
	ttl    time.Duration
	logger hclog.Logger
	onLost func()

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	ran       bool             // run was called: done will close
	lease     clientv3.LeaseID // 0 while not registered
	instances map[string]instanceRecord
}

func newRegistry(cfg AgentConfig, logger hclog.Logger, onLost func()) (*registry, error) {
	cli, err := etcdClient(cfg.Etcd)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", cfg.Etcd, err)
	}
	r := &registry{cli: cli, prefix: cfg.Prefix, host: cfg.Host, ttl: cfg.LeaseTTL, logger: logger, onLost: onLost,
		done: make(chan struct{}), instances: map[string]instanceRecord{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// run registers the agent, and again each time its lease is lost, until
// close. It returns a channel for errors that end the agent: none so far
// (an etcd that cannot be reached is waited for).
func (r *registry) run(rec agentRecord) <-chan error {
	r.mu.Lock()
	r.ran = true
	r.mu.Unlock()
	go func() {
		defer close(r.done)
		for r.ctx.Err() == nil {
			registered, err := r.hold(rec)
			if r.ctx.Err() != nil {
				return
			}
			if registered {
				r.logger.Error("the etcd lease was lost: stopping this host's instances, registering again", "host", r.host, "ttl", r.ttl)
				r.onLost()
			} else {
				r.logger.Warn("cannot register in etcd; trying again", "error", err)
			}
			select {
			case <-r.ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return nil
}

// hold grants a lease, puts the agent's keys under it, and keeps it
// alive until it is lost or the registry closes; registered says whether
// the keys were put.
func (r *registry) hold(rec agentRecord) (registered bool, err error) {
	gctx, cancel := context.WithTimeout(r.ctx, r.ttl)
	defer cancel()
	lease, err := r.cli.Grant(gctx, int64(r.ttl/time.Second))
	if err != nil {
		return false, fmt.Errorf("grant a lease: %w", err)
	}
	value, _ := json.Marshal(rec)
	if _, err := r.cli.Put(gctx, agentKey(r.prefix, r.host), string(value), clientv3.WithLease(lease.ID)); err != nil {
		return false, fmt.Errorf("put %s: %w", agentKey(r.prefix, r.host), err)
	}
	r.mu.Lock()
	r.lease = lease.ID
	recs := maps.Clone(r.instances)
	r.mu.Unlock()
	for name, in := range recs {
		r.put(name, in, lease.ID)
	}
	ka, err := r.cli.KeepAlive(r.ctx, lease.ID)
	if err != nil {
		return true, fmt.Errorf("keep the lease alive: %w", err)
	}
	r.logger.Info("registered in etcd", "key", agentKey(r.prefix, r.host), "lease", fmt.Sprintf("%x", int64(lease.ID)), "ttl", r.ttl)
	for range ka {
	}
	if r.ctx.Err() != nil {
		return true, nil // closing: close revokes the lease
	}
	r.mu.Lock()
	r.lease = 0
	r.mu.Unlock()
	return true, errors.New("lease lost")
}

// put puts an instance's key under lease; bounded, and only logged when
// it fails (the next registration puts it again).
func (r *registry) put(name string, in instanceRecord, lease clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(r.ctx, r.ttl)
	defer cancel()
	value, _ := json.Marshal(in)
	if _, err := r.cli.Put(ctx, instanceKey(r.prefix, r.host, name), string(value), clientv3.WithLease(lease)); err != nil && r.ctx.Err() == nil {
		r.logger.Warn("register an instance in etcd", "instance", in.ID, "error", err)
	}
}

// registered reports whether the agent's keys are in etcd now.
func (r *registry) registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease != 0
}

// addInstance registers an instance the agent runs, under name (its
// session and id).
func (r *registry) addInstance(name string, in instanceRecord) {
	r.mu.Lock()
	r.instances[name] = in
	lease := r.lease
	r.mu.Unlock()
	if lease != 0 {
		r.put(name, in, lease)
	}
}

// removeInstance removes an instance's key.
func (r *registry) removeInstance(name string) {
	r.mu.Lock()
	delete(r.instances, name)
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), r.ttl)
	defer cancel()
	if _, err := r.cli.Delete(ctx, instanceKey(r.prefix, r.host, name)); err != nil {
		r.logger.Warn("remove an instance's key from etcd (its lease removes it)", "instance", name, "error", err)
	}
}

// close ends the registration: its lease is revoked, which removes every
// key of the agent.
func (r *registry) close() error {
	r.cancel()
	r.mu.Lock()
	ran := r.ran
	r.mu.Unlock()
	if ran {
		<-r.done
	}
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	var err error
	if lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, rerr := r.cli.Revoke(ctx, lease); rerr != nil {
			err = fmt.Errorf("revoke the etcd lease (its keys go when it expires): %w", rerr)
		}
		cancel()
	}
	return errors.Join(err, r.cli.Close())
}

// watchMembers follows the agents' registrations in etcd until release:
// a host registered joins, a host whose registration goes is lost.
func (s *Supervisor) watchMembers() {
	c := s.cluster
	cli, err := etcdClient(c.cfg.Etcd)
	if err != nil {
		s.logger.Error("etcd: no agents will be found there", "endpoints", c.cfg.Etcd, "error", err)
		return
	}
	defer cli.Close()
	prefix := agentsKey(c.cfg.Prefix)
	failing := false
	for s.bgCtx.Err() == nil {
		gctx, cancel := context.WithTimeout(s.bgCtx, 5*time.Second)
		resp, err := cli.Get(gctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			if !failing && s.bgCtx.Err() == nil {
				s.logger.Warn("etcd: cannot list the agents; trying again", "endpoints", c.cfg.Etcd, "error", err)
			}
			failing = true
			select {
			case <-s.bgCtx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		failing = false
		seen := map[string]bool{}
		for _, kv := range resp.Kvs {
			if name, ok := s.memberPut(kv.Key, kv.Value, kv.Lease); ok {
				seen[name] = true
			}
		}
		c.mu.Lock()
		var gone []*host
		for name, h := range c.hosts {
			if h.lease != 0 && !seen[name] {
				gone = append(gone, h)
			}
		}
		c.mu.Unlock()
		for _, h := range gone {
			s.hostGone(h, "its registration is gone from etcd")
		}
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(s.bgCtx))
		for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				s.logger.Warn("etcd: the watch of the agents ended; listing them again", "error", wr.Err())
				break
			}
			for _, ev := range wr.Events {
				switch ev.Type {
				case mvccpb.PUT:
					s.memberPut(ev.Kv.Key, ev.Kv.Value, ev.Kv.Lease)
				case mvccpb.DELETE:
					name := strings.TrimPrefix(string(ev.Kv.Key), prefix)
					c.mu.Lock()
					h := c.hosts[name]
					c.mu.Unlock()
					if h != nil && h.lease != 0 {
						s.hostGone(h, "its etcd lease expired or was revoked: its agent stopped, died or was cut off")
					}
				}
			}
		}
		wcancel()
	}
}

// memberPut handles an agent's registration; it returns the host's name
// and whether the registration was valid.
func (s *Supervisor) memberPut(key, value []byte, lease int64) (string, bool) {
	rec, err := parseAgent(s.cluster.cfg.Prefix, key, value)
	if err != nil {
		s.logger.Warn("etcd: an agent's registration is not valid; ignored", "error", err)
		return "", false
	}
	if lease == 0 {
		s.logger.Warn("etcd: an agent's registration has no lease; ignored (agents register under one)", "key", string(key))
		return "", false
	}
	if slices.ContainsFunc(s.cluster.cfg.Agents, func(a config.Agent) bool { return a.Host == rec.Host }) {
		s.logger.Warn("etcd: an agent registered under the name of an agent listed in the config; ignored (the listed one is used)", "host", rec.Host, "address", rec.Address)
		return "", false
	}
	s.hostSeen(rec.Host, rec.Address, lease)
	return rec.Host, true
}
