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

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor"
	"github.com/phased/phased/supervisor/config"
)

// common flags of start and run.
type startFlags struct {
	config    string
	pluginDir string
	logLevel  string
	lock      string
	stateDir  string
}

func (s *startFlags) register(f *flags, logLevel string) {
	f.StringVar(&s.config, "config", "", "config `FILE` (HCL, or JSON if it ends in .json); default: the embedded default")
	f.StringVar(&s.pluginDir, "plugin-dir", "", "plugin `DIR` (overrides the config's plugin_dir; default: plugins/ beside this binary)")
	f.StringVar(&s.logLevel, "log-level", logLevel, "log `LEVEL`: trace, debug, info, warn, error")
	f.StringVar(&s.lock, "lock", "", "plugin pins `FILE` (default: "+config.LockFile+" beside the config, or here for the default config; read if it exists)")
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

func newLogger(level string, w io.Writer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "supervisor", Level: hclog.LevelFromString(level), Output: w})
}

func start(ctx context.Context, args []string, _, stderr io.Writer) error {
	f := newFlags("start", stderr)
	var sf startFlags
	sf.register(f, "info")
	f.StringVar(&sf.stateDir, "state-dir", supervisor.DefaultStateDir(), "state `DIR`: the request journal, which a supervisor started after a crash finishes (env PHASED_STATE_DIR)")
	var cf controlFlags
	cf.register(f)
	f.Usage = func() {
		fmt.Fprint(f.Output(), startHelp)
		f.PrintDefaults()
	}
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := noArgs(pos); err != nil {
		return err
	}
	cfg, err := sf.load()
	if err != nil {
		return err
	}
	cf.apply(cfg)
	logger := newLogger(sf.logLevel, stderr)
	sigs, stop := notifySignals()
	defer stop()
	r, err := launch(ctx, cfg, f.socket, logger, &sf)
	if err != nil {
		return err
	}
	return r.serve(sigs)
}
