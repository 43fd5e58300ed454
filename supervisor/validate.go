package supervisor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// Severity says whether a Problem keeps a pipeline from starting.
type Severity int

const (
	// SeverityError: start would refuse the config.
	SeverityError Severity = iota
	// SeverityNote: for information; start may still refuse it.
	SeverityNote
)

// Problem is one thing Validate found wrong with a config, where the
// config says it.
type Problem struct {
	// At is where in the config (or the lock file, for a pin) the thing
	// is defined; zero for a config made in code.
	At       config.Pos
	Severity Severity
	Message  string
}

// String is the problem as `supervisor validate` prints it, the way
// compilers do: "FILE:LINE:COL: message", or "FILE:LINE:COL: note:
// message" for a note. The lines of a message after its first (a
// plugin's last stderr lines) are indented by a tab, so that every
// problem starts a line with its position.
func (p Problem) String() string {
	msg := strings.ReplaceAll(strings.TrimRight(p.Message, "\n"), "\n", "\n\t")
	if p.Severity == SeverityNote {
		msg = "note: " + msg
	}
	if at := p.At.String(); at != "" {
		return at + ": " + msg
	}
	return msg
}

// HasErrors reports whether any of problems is an error (not a note):
// start would refuse the config.
func HasErrors(problems []Problem) bool {
	return slices.ContainsFunc(problems, func(p Problem) bool { return p.Severity == SeverityError })
}

// ValidateOptions are Validate's settings that do not come from the
// config.
type ValidateOptions struct {
	// Logger gets the logs of the plugins Validate starts; nil: none.
	Logger hclog.Logger
	// LogLevel is passed to the plugins; default "warn".
	LogLevel string
}

// Validate checks cfg as Start does, without starting the pipeline: that
// the binary of every policy and phase plugin is in the plugin directory
// and matches its pin, if it has one; that each plugin starts and is the
// plugin it is named for (its Info: kind, name, API version); and that
// each phase's params are valid, as its plugin says before it loads
// anything (ValidateParams). It starts one process of each plugin the
// config uses, never a phase's model, and stops them all before it
// returns. cfg is a parsed config, with its lock file applied
// (config.Load, Config.ApplyLock): a config that does not parse has its
// errors from there.
//
// It returns every problem found, ordered by file and position, each
// where the config defines what is wrong: a phase's plugin attribute, a
// policy attribute, the pin, a param's key (its phase's own, else the
// top-level one it inherits; a phase's params attribute or block for a
// problem about its params as a whole). None: start would accept the
// config as far as it can be checked without loading. A plugin that
// cannot check params before it loads (UNIMPLEMENTED) is a note, not an
// error. Print them one a line (Problem.String); HasErrors says whether
// any is an error.
//
// What depends on the moment is not checked: the run directory, the
// state directory, memory for models, another supervisor running.
func Validate(ctx context.Context, cfg *config.Config, opts ValidateOptions) []Problem {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "warn"
	}
	v := &validation{cfg: cfg, opts: opts}
	dir := cfg.PluginDir
	if dir == "" {
		dir = DefaultPluginDir()
	}
	v.cat = Catalog{Dir: dir}
	plugins := v.findPlugins()
	if len(plugins) > 0 {
		sockets, err := os.MkdirTemp("", "phased-validate-")
		if err != nil {
			v.add(config.Pos{}, SeverityError, fmt.Sprintf("cannot start the plugins to check them: %v", err))
		} else {
			defer os.RemoveAll(sockets)
			v.checkPlugins(ctx, plugins, sockets)
		}
	}
	v.mergeParamProblems()
	slices.SortStableFunc(v.problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.At.Filename, b.At.Filename), cmp.Compare(a.At.Line, b.At.Line), cmp.Compare(a.At.Column, b.At.Column))
	})
	return v.problems
}

// validation is one Validate call.
type validation struct {
	cfg      *config.Config
	opts     ValidateOptions
	cat      Catalog
	mu       sync.Mutex // guards problems and params, added to from one goroutine per plugin
	problems []Problem
	params   []paramProblem
}

// paramProblem is a plugin's problem with a phase's params, before
// those of several phases that inherit the same top-level param are
// merged.
type paramProblem struct {
	phase   string
	at      config.Pos
	message string
}

func (v *validation) add(at config.Pos, sev Severity, msg string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.problems = append(v.problems, Problem{At: at, Severity: sev, Message: msg})
}

// usedPlugin is one plugin binary the config uses, found and as pinned.
type usedPlugin struct {
	kind   sdk.Kind
	name   string
	path   string
	at     config.Pos     // where the config first names it
	phases []config.Phase // the phases of a phase plugin
}

// findPlugins finds every binary the config uses in the plugin directory
// and checks it against its pin, as Start does first; it returns those
// found and pinned right (or not pinned), to be started.
func (v *validation) findPlugins() []*usedPlugin {
	var out []*usedPlugin
	for _, name := range v.cfg.Policies() {
		at := config.Pos{}
		for _, ph := range v.cfg.Phases {
			if ph.Policy == name {
				at = ph.At.Policy
				break
			}
		}
		path, err := v.cat.Find(sdk.KindPolicy, name)
		if err != nil {
			v.add(at, SeverityError, err.Error())
			continue
		}
		if err := checkPinned(v.cfg, sdk.KindPolicy, name, path); err != nil {
			v.add(v.pinAt(path, at), SeverityError, err.Error())
			continue
		}
		out = append(out, &usedPlugin{kind: sdk.KindPolicy, name: name, path: path, at: at})
	}
	byName := map[string]*usedPlugin{}
	refused := map[string]bool{} // plugins whose pin does not match: said once
	for _, ph := range v.cfg.Phases {
		if p := byName[ph.Plugin]; p != nil {
			p.phases = append(p.phases, ph)
			continue
		}
		path, err := v.cat.Find(sdk.KindPhase, ph.Plugin)
		if err != nil {
			v.add(ph.At.Plugin, SeverityError, fmt.Sprintf("phase %q: %v", ph.Name, err))
			continue
		}
		if refused[ph.Plugin] {
			continue
		}
		if err := checkPinned(v.cfg, sdk.KindPhase, ph.Plugin, path); err != nil {
			refused[ph.Plugin] = true
			v.add(v.pinAt(path, ph.At.Plugin), SeverityError, fmt.Sprintf("phase %q: %v", ph.Name, err))
			continue
		}
		p := &usedPlugin{kind: sdk.KindPhase, name: ph.Plugin, path: path, at: ph.At.Plugin, phases: []config.Phase{ph}}
		byName[ph.Plugin] = p
		out = append(out, p)
	}
	return out
}

// pinAt is where the pin of the binary at path is given, else fallback.
func (v *validation) pinAt(path string, fallback config.Pos) config.Pos {
	if at := v.cfg.PinPos(filepath.Base(path)); at != (config.Pos{}) {
		return at
	}
	return fallback
}

// checkPlugins starts each plugin, all at once, and checks it.
func (v *validation) checkPlugins(ctx context.Context, plugins []*usedPlugin, sockets string) {
	var wg sync.WaitGroup
	for _, p := range plugins {
		wg.Go(func() { v.checkPlugin(ctx, p, sockets) })
	}
	wg.Wait()
}

// checkPlugin starts one plugin as Start would (which checks its Info),
// asks a phase plugin to check the params of each phase that uses it,
// and stops it.
func (v *validation) checkPlugin(ctx context.Context, p *usedPlugin, sockets string) {
	timeout := config.DefaultStartTimeout
	api := sdk.PolicyAPIVersion
	what := fmt.Sprintf("policy %q", p.name)
	if p.kind == sdk.KindPhase {
		timeout, api, what = p.phases[0].StartTimeout, sdk.PhaseAPIVersion, fmt.Sprintf("phase %q", p.phases[0].Name)
	}
	pc := processConfig{
		Name: p.name, Path: p.path, Kind: p.kind, APIVersion: api,
		Logger: v.opts.Logger.Named(string(p.kind) + "." + p.name), SocketDir: sockets,
		StartTimeout: timeout, LogLevel: v.opts.LogLevel,
	}
	pc.Pin, pc.PinnedAt = pinOf(v.cfg, p.path)
	proc, err := startProcess(ctx, pc)
	if err != nil {
		v.add(p.at, SeverityError, fmt.Sprintf("%s: %v", what, err))
		return
	}
	defer proc.kill()
	ctl, ok := proc.raw.(sdk.PhaseControl)
	if p.kind != sdk.KindPhase || !ok {
		return
	}
	noted := false
	for _, ph := range p.phases {
		params := v.cfg.PhaseParams(ph)
		cctx, cancel := context.WithTimeout(ctx, ph.StartTimeout)
		problems, err := ctl.ValidateParams(cctx, params)
		cancel()
		switch {
		case errors.Is(err, sdk.ErrNoValidation):
			if !noted && len(params) > 0 {
				noted = true
				v.add(v.cfg.ParamAt(ph, ""), SeverityNote, fmt.Sprintf("phase %q: phase plugin %q cannot check its params before it loads; they are checked at start", ph.Name, p.name))
			}
		case err != nil:
			v.add(v.cfg.ParamAt(ph, ""), SeverityError, fmt.Sprintf("phase %q: phase plugin %q could not check its params: %v", ph.Name, p.name, err))
		default:
			v.mu.Lock()
			for _, pp := range problems {
				v.params = append(v.params, paramProblem{phase: ph.Name, at: v.cfg.ParamAt(ph, pp.Param), message: pp.Message})
			}
			v.mu.Unlock()
		}
	}
}

// mergeParamProblems adds the params' problems, one per place and
// message: a top-level param that the plugins of several phases refuse
// alike is one problem naming them all.
func (v *validation) mergeParamProblems() {
	type key struct {
		at      config.Pos
		message string
	}
	var order []key
	phases := map[key][]string{}
	for _, pp := range v.params {
		k := key{pp.at, pp.message}
		if _, ok := phases[k]; !ok {
			order = append(order, k)
		}
		phases[k] = append(phases[k], pp.phase)
	}
	for _, k := range order {
		names := phases[k]
		slices.SortStableFunc(names, func(a, b string) int { return cmp.Compare(v.phaseIndex(a), v.phaseIndex(b)) })
		names = slices.Compact(names)
		quoted := make([]string, len(names))
		for i, n := range names {
			quoted[i] = fmt.Sprintf("%q", n)
		}
		label := "phase "
		if len(names) > 1 {
			label = "phases "
		}
		v.problems = append(v.problems, Problem{At: k.at, Severity: SeverityError, Message: label + strings.Join(quoted, ", ") + ": " + k.message})
	}
}

// phaseIndex is the place of a phase in the pipeline.
func (v *validation) phaseIndex(name string) int {
	return slices.IndexFunc(v.cfg.Phases, func(p config.Phase) bool { return p.Name == name })
}
