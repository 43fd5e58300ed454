package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	oklog "github.com/oklog/run"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// startFlags are the flags start and run share: the config, the plugin
// directory, the pins, the state directory and the logs.
type startFlags struct {
	config    string
	pluginDir string
	lock      string
	stateDir  string
	logLevel  string
	logFormat string
}

// registerConfig adds --config, --plugin-dir and --lock.
func (s *startFlags) registerConfig(fs *pflag.FlagSet) {
	fs.StringVar(&s.config, "config", "", "config `FILE` (HCL, or JSON if it ends in .json; default: the embedded default config)")
	fs.StringVar(&s.pluginDir, "plugin-dir", "", "plugin `DIR` (overrides the config's plugin_dir; default: plugins/ beside this binary)")
	fs.StringVar(&s.lock, "lock", "", "plugin pins `FILE`, read if it exists (default: "+config.LockFile+" beside the config, or in this directory for the default config)")
}

// logLevels are the values of --log-level.
var logLevels = []string{"trace", "debug", "info", "warn", "error"}

// registerLog adds --log-level (default level) and --log-format.
func (s *startFlags) registerLog(fs *pflag.FlagSet, level string) {
	fs.StringVar(&s.logLevel, "log-level", level, "log `LEVEL`: trace, debug, info, warn or error (plugins log at the same level)")
	fs.StringVar(&s.logFormat, "log-format", "text", "log `FORMAT` on stderr: text, or json (one object per line)")
}

func (s *startFlags) completeLog(cmd *cobra.Command) {
	_ = cmd.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions(logLevels, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
}

// checkLog refuses a log level or format hclog would not know (it takes
// an unknown level for "no level" without a word).
func (s *startFlags) checkLog() error {
	if err := wantOneOf("log-level", s.logLevel, logLevels...); err != nil {
		return err
	}
	return wantOneOf("log-format", s.logFormat, "text", "json")
}

func (s *startFlags) logger(w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "supervisor", Level: hclog.LevelFromString(s.logLevel), Output: w, JSONFormat: s.logFormat == "json"})
}

func (s *startFlags) load() (*config.Config, error) {
	var cfg *config.Config
	if s.config == "" {
		cfg = config.Default()
	} else {
		var err error
		if cfg, err = config.Load(s.config); err != nil {
			return nil, err
		}
	}
	if s.pluginDir != "" {
		cfg.PluginDir = s.pluginDir
	}
	if err := cfg.ApplyLock(s.lockPath()); err != nil {
		return nil, err
	}
	return cfg, nil
}

// lockPath is where the pins are read from and written to.
func (s *startFlags) lockPath() string {
	if s.lock != "" {
		return s.lock
	}
	return config.LockPath(s.config)
}

// running is a supervisor started in this process with its control API.
type running struct {
	sup    *supervisor.Supervisor
	api    *supervisor.API
	logger hclog.Logger
	signal os.Signal // the signal that released it, if one did
}

// launch listens on socket, starts the supervisor and returns it with its
// API, which serve then runs.
func launch(ctx context.Context, cfg *config.Config, socket string, logger hclog.Logger, sf *startFlags) (*running, error) {
	// Listen first: a second supervisor on the same socket fails before it
	// starts any plugin.
	ln, err := supervisor.Listen(socket)
	if err != nil {
		return nil, err
	}
	tcp, token, err := listenTCP(cfg.Control, logger)
	if err != nil {
		ln.Close()
		os.Remove(socket)
		return nil, err
	}
	sdk.RaiseFDLimit(logger)
	sdk.SetGCFloor(logger)
	supervisor.SetProcs(cfg, logger)
	sup := supervisor.New(cfg, supervisor.Options{Logger: logger, LogLevel: sf.logLevel, StateDir: sf.stateDir})
	api := supervisor.NewAPI(sup, ln, socket, logger.Named("api"))
	if tcp != nil {
		err = api.AddTCP(tcp, token)
	}
	if err == nil {
		err = sup.Start(ctx)
	}
	if err != nil {
		ln.Close()
		os.Remove(socket)
		if tcp != nil {
			tcp.Close()
		}
		return nil, err
	}
	logger.Info("control socket ready", "socket", socket)
	return &running{sup: sup, api: api, logger: logger}, nil
}

// actor is one member of an oklog/run group: execute runs until it is
// done or interrupted; interrupt makes it return, and is safe to call after
// it has.
type actor struct {
	execute   func() error
	interrupt func(error)
}

// serve runs the supervisor, its control API, the signals in sigs and
// work (run's requests, if any) as one oklog/run group, until the first of
// them ends: the supervisor released (`supervisor release`), the API
// failing, a signal, or the work done. Then every member is interrupted,
// in this order: the supervisor is released (requests in flight get the
// grace period, then fail, and the plugins stop in order), the work is
// waited for, the API shuts down (it answers the calls it has, the release
// call included). It returns the errors of the release, of the API and of
// its shutdown.
func (r *running) serve(sigs <-chan os.Signal, work ...actor) error {
	var g oklog.Group
	var releaseErr, apiErr, shutdownErr error
	g.Add(func() error {
		<-r.sup.Done()
		return nil
	}, func(error) {
		if releaseErr = r.sup.Release(context.Background()); releaseErr != nil {
			releaseErr = fmt.Errorf("release: %w", releaseErr)
		}
	})
	for _, w := range work {
		g.Add(w.execute, w.interrupt)
	}
	g.Add(func() error {
		if apiErr = r.api.Serve(); apiErr != nil {
			r.logger.Error("control API failed; releasing", "error", apiErr)
		}
		return apiErr
	}, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownErr = r.api.Shutdown(ctx)
	})
	quit := make(chan struct{})
	g.Add(func() error {
		select {
		case sig := <-sigs:
			r.signal = sig
			r.logger.Info("signal received; releasing", "signal", sig)
		case <-quit:
		}
		return nil
	}, func(error) { close(quit) })
	_ = g.Run() // each member's error is kept above
	return errors.Join(releaseErr, apiErr, shutdownErr)
}

// notifySignals returns the channel of the signals that release a
// supervisor, caught from now on (one that comes while the plugins start
// releases them as soon as they are up), and its stop.
func notifySignals() (<-chan os.Signal, func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	return sigs, func() { signal.Stop(sigs) }
}

func (a *app) startCmd() *cobra.Command {
	var sf startFlags
	var socket string
	var cf controlFlags
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Run a supervisor in the foreground; SIGINT or SIGTERM release it",
		Long: `Runs a supervisor in the foreground: it starts every phase's instances and
the policies of the config, serves the control API, and dispatches the
requests it is sent. SIGINT (Ctrl-C), SIGTERM or ` + "`supervisor release`" + ` release
it in order, and it exits 0. Requests are journaled in the state directory
before they are acknowledged; a supervisor started on the same state
directory after a crash finishes them.

The control API is served on a unix socket (mode 0600, in a directory of
mode 0700): only this user can reach it, and it needs no token. With
--listen it is also served on TCP, off by default; every TCP call must carry
"Authorization: Bearer TOKEN", the token in --token-file (a file only its
owner can read). TCP is plain HTTP: keep it on 127.0.0.1, and reach it from
another host through an SSH tunnel (ssh -L 7070:127.0.0.1:7070 HOST) or a
TLS-terminating proxy. Clients: supervisor status --addr HOST:PORT, with the
token in $PHASED_TOKEN or --token-file.

A config that does not parse exits 2, naming FILE:LINE:COL.`,
		Example: `  supervisor start
  supervisor start --config phased.hcl --log-level debug --log-format json
  supervisor start --listen 127.0.0.1:7070 --token-file ~/.phased-token`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sf.checkLog(); err != nil {
				return err
			}
			cfg, err := sf.load()
			if err != nil {
				return err
			}
			cf.apply(cfg)
			sf.stateDir = stateDir(sf.stateDir)
			logger := sf.logger(a.stderr)
			sigs, stop := notifySignals()
			defer stop()
			r, err := launch(cmd.Context(), cfg, socketPath(socket), logger, &sf)
			if err != nil {
				return err
			}
			return r.serve(sigs)
		},
	}
	fs := cmd.Flags()
	sf.registerConfig(fs)
	fs.StringVar(&sf.stateDir, "state-dir", "", stateDirHelp+"; a supervisor started after a crash finishes its requests")
	sf.registerLog(fs, "info")
	fs.StringVar(&socket, "socket", "", socketHelp)
	cf.register(fs)
	sf.completeLog(cmd)
	return cmd
}
