package cli

import (
	"context"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor"
)

func (a *app) agentCmd() *cobra.Command {
	var (
		sf     startFlags
		cfg    supervisor.AgentConfig
		serves []string
		maxes  []string
		gpus   string
		etcd   string
	)
	cmd := &cobra.Command{
		Use:   "agent --tls-dir DIR --listen HOST:PORT --serve PHASE=N... [--etcd URL,...]",
		Short: "Run this host's phase instances for a supervisor on another host",
		Long: `Run this host's phase instances for a supervisor on another host.

The agent starts the phase plugins of this host as the supervisor starts its
own, and serves them to supervisors over TCP with mutual TLS (the bundle
` + "`supervisor tls issue HOST`" + ` wrote). --serve says how many instances of
which phase this host runs; a supervisor whose pipeline has that phase
launches them when it finds the agent: in etcd (--etcd: the agent
registers under a lease of --lease-ttl), or in its config's cluster block.
The agent stops a supervisor's instances when that supervisor has been gone
for the lease TTL, and all of them when its etcd lease is lost or it stops
(SIGINT, SIGTERM). See docs/deploy.md.`,
		Example: `  supervisor agent --host hostb --tls-dir /etc/phased/tls/hostb \
    --listen 10.0.0.2:7443 --serve encoder=1 --serve decoder=1 \
    --etcd http://10.0.0.1:2379 --lease-ttl 5s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sf.checkLog(); err != nil {
				return err
			}
			var err error
			if cfg.Offers, err = phaseCounts("serve", serves); err != nil {
				return err
			}
			if cfg.Max, err = phaseCounts("max", maxes); err != nil {
				return err
			}
			cfg.GPUs = splitList(gpus)
			cfg.Etcd = splitList(etcd)
			cfg.LogLevel = sf.logLevel
			cfg.Logger = sf.logger(a.stderr).Named("agent")
			if cfg.PluginDir == "" {
				cfg.PluginDir = supervisor.DefaultPluginDir()
			}
			ag, err := supervisor.NewAgent(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return ag.Run(ctx)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&cfg.Host, "host", "", "this host's `LABEL`, the name its certificate was issued for (default: the host name)")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7443", "`HOST:PORT` to serve supervisors on (mutual TLS); name this host's address on the network between hosts")
	fs.StringVar(&cfg.Advertise, "advertise", "", "`HOST:PORT` supervisors dial, as registered in etcd (default: --listen)")
	fs.StringVar(&cfg.ZMQHost, "zmq-host", "", "`ADDRESS` the instances' zmq rooms bind to (default: the host of --advertise)")
	fs.StringVar(&cfg.TLSDir, "tls-dir", "", "this host's bundle `DIR` from `supervisor tls issue HOST` (ca.pem, cert.pem, key.pem, curve.key)")
	fs.StringVar(&cfg.PluginDir, "plugin-dir", "", "plugin `DIR` (default: plugins/ beside this binary)")
	fs.StringArrayVar(&serves, "serve", nil, "`PHASE=N`: run N instances of PHASE for a supervisor (repeat for each phase)")
	fs.StringArrayVar(&maxes, "max", nil, "`PHASE=N`: run at most N instances of PHASE: room beyond --serve for `supervisor scale` and scalers (repeat for each phase)")
	fs.StringVar(&gpus, "gpus", "", "this host's GPU `ORDINALS`, comma-separated, given out to its cuda phases' instances")
	fs.StringVar(&etcd, "etcd", "", "etcd `ENDPOINTS`, comma-separated (http://HOST:PORT); none: supervisors list this agent in their config")
	fs.StringVar(&cfg.Prefix, "etcd-prefix", supervisor.DefaultEtcdPrefix, "etcd key `PREFIX` to register under")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", supervisor.DefaultLeaseTTL, "`TTL` of the etcd lease, and how long a supervisor may be gone before its instances are stopped")
	fs.StringVar(&cfg.Health, "health", "", "`HOST:PORT` to serve /healthz and /readyz on (plain HTTP, for probes); default none")
	sf.registerLog(fs, "info")
	sf.completeLog(cmd)
	return cmd
}

// phaseCounts reads the PHASE=N values of a flag.
func phaseCounts(flag string, values []string) (map[string]int, error) {
	m := map[string]int{}
	for _, s := range values {
		name, n, ok := strings.Cut(s, "=")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || name == "" {
			return nil, usagef("--%s %q: expected PHASE=N, e.g. transformer=2", flag, s)
		}
		m[name] = count
	}
	return m, nil
}

// splitList splits a comma-separated flag value, dropping empty parts.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
