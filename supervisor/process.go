package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/supervisor/config"
)

// process is one plugin child process started through go-plugin.
type process struct {
	name   string // instance or policy id, for logs and errors
	path   string
	client *plugin.Client
	stderr *pluginLog // its stderr: logged, and the last lines kept
	pid    int
	raw    any // what the plugin map dispensed: sdk.PhaseControl or sdk.Policy
	info   sdk.Info
	cmd    *exec.Cmd
	// channel is the plugin's control channel, over which its calls
	// go; nil when it serves none (they go over gRPC).
	channel io.Closer
	// done is go-plugin's exit notification: closed once the process has
	// exited and been reaped (cmd.ProcessState is then set).
	done <-chan struct{}
	// remote is set for a process an agent runs on another host
	// (remote.go); client, cmd and channel are nil then.
	remote *remoteProc
}

// processConfig says how to start one plugin process.
type processConfig struct {
	Name         string // instance or policy id
	Path         string // plugin binary
	Kind         sdk.Kind
	APIVersion   int
	Logger       hclog.Logger
	SocketDir    string // where go-plugin puts its unix sockets
	StartTimeout time.Duration
	LogLevel     string
	// Pin, if set, is the SHA-256 (hex) the binary must have; PinnedAt
	// says where it was pinned, for the error.
	Pin, PinnedAt string
	// CPUs, if set, is how many CPUs the process runs on (cpuEnv).
	CPUs int
	// Env is more of the process's environment (NAME=VALUE), set last.
	Env []string
}

// FileSHA256 returns the SHA-256 of a file, in hex.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ErrPinMismatch is wrapped when a plugin binary's hash is not its pin.
var ErrPinMismatch = errors.New("plugin binary does not match its pin")

// checkPin compares a binary with its pin and returns the go-plugin check
// that repeats the comparison when the binary is started.
func checkPin(pc processConfig) (*plugin.SecureConfig, error) {
	if pc.Pin == "" {
		return nil, nil
	}
	got, err := FileSHA256(pc.Path)
	if err != nil {
		return nil, fmt.Errorf("%s plugin %s: hash %s: %w", pc.Kind, pc.Name, pc.Path, err)
	}
	if got != pc.Pin {
		return nil, fmt.Errorf("%w: %s plugin %s: %s has SHA-256 %s, but %s pins %s; install the pinned build, or run `supervisor plugins lock` to pin this one",
			ErrPinMismatch, pc.Kind, pc.Name, pc.Path, got, pc.PinnedAt, pc.Pin)
	}
	sum, _ := hex.DecodeString(pc.Pin)
	return &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}, nil
}

// pinOf returns the pin of the plugin binary at path in cfg, and where
// it is given; "" when the binary has none.
func pinOf(cfg *config.Config, path string) (pin, at string) {
	binary := filepath.Base(path)
	return cfg.Pins[binary], cfg.PinnedAt(binary)
}

// checkPinned checks the plugin binary at path against its pin in cfg,
// if it has one, by the rule startProcess applies (checkPin): for the
// checks made before anything starts.
func checkPinned(cfg *config.Config, kind sdk.Kind, name, path string) error {
	pc := processConfig{Kind: kind, Name: name, Path: path}
	pc.Pin, pc.PinnedAt = pinOf(cfg, path)
	_, err := checkPin(pc)
	return err
}

// startProcess starts a plugin, dispenses its service and checks its Info.
// On any error the process is killed and the error carries the plugin's last
// stderr lines.
func startProcess(ctx context.Context, pc processConfig) (*process, error) {
	secure, err := checkPin(pc)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(pc.Path)
	// go-plugin passes its socket directory to a plugin only when it
	// runs the plugin through a custom runner: name it here, so that the
	// plugin's gRPC socket is in the run directory, which release removes.
	cmd.Env = append(os.Environ(), sdk.LogLevelEnv+"="+pc.LogLevel, "PLUGIN_UNIX_SOCKET_DIR="+pc.SocketDir)
	cmd.Env = append(cmd.Env, cpuEnv(pc.CPUs)...)
	cmd.Env = append(cmd.Env, pc.Env...)
	// The child dies with the supervisor, even on SIGKILL; it leads a
	// process group of its own, so that kill takes its own children too
	// (and a Ctrl-C at the supervisor's terminal reaches the supervisor
	// only, which releases the pipeline in order).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	// The control channel: the child's end is its descriptor 3.
	host, child, err := sdk.ControlChannelPair()
	if err != nil {
		return nil, fmt.Errorf("%s plugin %s: %w", pc.Kind, pc.Name, err)
	}
	cmd.ExtraFiles = []*os.File{child}
	cmd.Env = append(cmd.Env, sdk.ControlChannelEnv+"=3")
	stderr := newPluginLog(pc.Logger)
	client := plugin.NewClient(clientConfig(pc, cmd, secure, stderr))
	p := &process{name: pc.Name, path: pc.Path, client: client, stderr: stderr, cmd: cmd}
	fail := func(err error) (*process, error) {
		host.Close()
		p.abort()
		msg := fmt.Sprintf("%s plugin %s (%s): %v", pc.Kind, pc.Name, pc.Path, err)
		if lines := stderr.String(); lines != "" {
			msg += "; last stderr lines:\n" + lines
		}
		return nil, errors.New(msg)
	}
	rpc, err := client.Client()
	child.Close() // the child has its copy, or was not started
	if err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	if rc := client.ReattachConfig(); rc != nil {
		p.pid = rc.Pid
	}
	if p.pid > 0 {
		p.watchGroup()
	}
	dispense := string(pc.Kind) // a kind's service has the kind's name
	raw, err := rpc.Dispense(dispense)
	if err != nil {
		return fail(fmt.Errorf("dispense %s: %w", dispense, err))
	}
	p.raw = raw
	// The plugin wrote the channel's hello, if it serves it, before its
	// handshake, which client.Client has read.
	if p.channel, err = sdk.UseControlChannel(raw, host); err != nil {
		return fail(err)
	}
	ex, ok := raw.(sdk.Exiter)
	if !ok {
		return fail(fmt.Errorf("the dispensed %s client has no exit notification", dispense))
	}
	p.done = ex.Exited()
	var info sdk.Info
	ictx, cancel := context.WithTimeout(ctx, pc.StartTimeout)
	defer cancel()
	switch c := raw.(type) {
	case sdk.PhaseControl:
		info, err = c.Info(ictx)
	case sdk.Policy:
		info, err = c.Info(ictx)
	case sdk.Scaler:
		info, err = c.Info(ictx)
	}
	if err != nil {
		return fail(fmt.Errorf("info: %w", err))
	}
	if info.Kind != pc.Kind {
		return fail(fmt.Errorf("it says it is a %s plugin named %q, not a %s plugin", info.Kind, info.Name, pc.Kind))
	}
	if !info.Speaks(pc.APIVersion) {
		return fail(fmt.Errorf("it speaks %s API versions %v; this supervisor speaks version %d", pc.Kind, info.APIVersions, pc.APIVersion))
	}
	if file := filepath.Base(pc.Path); info.Name != strings.TrimPrefix(file, BinaryName(pc.Kind, "")) {
		return fail(fmt.Errorf("it says its name is %q, but its file %s names it %q; a plugin's Info name must be the NAME of its file %s",
			info.Name, file, strings.TrimPrefix(file, BinaryName(pc.Kind, "")), BinaryName(pc.Kind, "NAME")))
	}
	p.info = info
	pc.Logger.Debug("plugin started", "path", pc.Path, "pid", p.pid, "version", info.Version)
	return p, nil
}

// clientConfig is how go-plugin starts and talks to a plugin: gRPC with
// AutoMTLS, sockets in pc.SocketDir, the plugin's stderr read by stderr
// alone (go-plugin's own parser of it is kept out, see quietStderr).
func clientConfig(pc processConfig, cmd *exec.Cmd, secure *plugin.SecureConfig, stderr *pluginLog) *plugin.ClientConfig {
	return &plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginMap(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           quietStderr{pc.Logger},
		Stderr:           stderr,
		StartTimeout:     pc.StartTimeout,
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: pc.SocketDir},
		SecureConfig:     secure,
		// cmd.Env holds the supervisor's environment already, with the
		// values set here last: go-plugin must not append it again,
		// which would let the supervisor's own PHASED_LOG_LEVEL or
		// PLUGIN_UNIX_SOCKET_DIR win.
		SkipHostEnv: true,
	}
}

// abort ends a plugin whose start failed: its whole process group first
// (a child of the plugin holding its output pipes would keep go-plugin's
// Kill waiting, and would outlive it), then go-plugin's state, bounded.
// The group's id cannot be another's while any member lives: the kernel
// keeps the number of a process group in use until its last member is
// gone.
func (p *process) abort() {
	if p.remote != nil {
		p.remote.stop(true)
		return
	}
	if p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	p.clientKill(killWait)
	p.closeChannel()
}

// closeChannel closes the control channel, if the plugin has one: calls
// still waiting on it fail as the plugin's. It closes by itself when the
// process exits.
func (p *process) closeChannel() {
	if p.channel != nil {
		_ = p.channel.Close()
	}
}

// clientKill runs go-plugin's Kill (graceful, then SIGKILL to the plugin
// alone) and waits for it up to d; it returns the channel closed when Kill
// has returned.
func (p *process) clientKill(d time.Duration) <-chan struct{} {
	killed := make(chan struct{})
	go func() {
		p.client.Kill()
		close(killed)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-killed:
	case <-t.C:
	}
	return killed
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitStatus says how the process ended ("exit status 2", "signal:
// killed"); only once done is closed.
func (p *process) exitStatus() string {
	if p.remote != nil {
		return p.remote.exitStatus()
	}
	if st := p.cmd.ProcessState; st != nil {
		return st.String()
	}
	return "unknown exit status"
}

// killNow kills the process group at once (a hung plugin gets no graceful
// close), then lets go-plugin clean up.
func (p *process) killNow() {
	if p.remote != nil {
		p.remote.stop(true)
		return
	}
	if p.pid > 0 && !p.exited() {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	p.client.Kill()
	p.closeChannel()
}

// kill stops the process: graceful close, bounded wait, then SIGKILL
// (go-plugin's Kill); then SIGKILL to its process group, for the children
// the plugin started itself. go-plugin's Kill waits for the plugin's
// output pipes to close, which a child of the plugin that inherited them
// may keep open: past killWait the group is killed first, which closes
// them. Safe to call twice.
func (p *process) kill() {
	if p.remote != nil {
		p.remote.stop(false)
		return
	}
	// A process that exited had its group killed then (watchGroup); its
	// pid may belong to another process group by now.
	group := p.pid > 0 && !p.exited()
	killed := p.clientKill(killWait)
	if group {
		// ESRCH: the group is gone already.
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	<-killed
	p.closeChannel()
}

// watchGroup kills the process group as soon as its leader, the plugin,
// exits. Children the plugin started may have inherited its stdout and
// stderr, and go-plugin reaps the plugin (and so sends its exit
// notification) only once those pipes close: killing the group closes
// them, so a crash is seen at once even then, and the plugin's children
// die with it. A pidfd becomes readable when the process exits, so the
// goroutine ends with the process.
func (p *process) watchGroup() {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		return // kernels before 5.3: the children die at kill
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				return
			case fds[0].Revents&unix.POLLIN != 0:
				_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			}
			return
		}
	}()
}

// killWait bounds go-plugin's graceful Kill before the process group is
// killed.
const killWait = 5 * time.Second

// timedOut reports whether a call made with ctx (whose parent is not done)
// failed at ctx's deadline: on this side, or in the plugin's gRPC server,
// which gives up on the deadline it was sent a moment before this side
// does (sdk.ErrTimedOut).
func timedOut(ctx context.Context, err error) bool {
	return errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, sdk.ErrTimedOut)
}

// CPUsEnv names the variable that tells a plugin process how many CPUs
// it runs on (config: a phase's cpus, else the host's share), for
// plugins in languages whose runtime does not read GOMAXPROCS.
const CPUsEnv = "PHASED_CPUS"

// cpuEnv is the environment that gives a plugin process n CPUs: CPUsEnv,
// and GOMAXPROCS for a Go plugin, unless the supervisor's own
// environment sets GOMAXPROCS (then that rules every process, as the
// user asked); nothing for n = 0.
func cpuEnv(n int) []string {
	if n <= 0 {
		return nil
	}
	env := []string{CPUsEnv + "=" + strconv.Itoa(n)}
	if !userProcs() {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(n))
	}
	return env
}

// userProcs reports whether GOMAXPROCS is set in the supervisor's
// environment: then it rules every process, as the user asked.
func userProcs() bool {
	_, set := os.LookupEnv("GOMAXPROCS")
	return set
}

// SetProcs runs this process on its share of the host's CPUs as a
// supervisor of cfg (config.CPUShare): its GOMAXPROCS, unless GOMAXPROCS
// is set in the environment. It returns the GOMAXPROCS before. The CLI's
// start and run call it; a program that embeds the supervisor decides
// for itself (the benchmarks call it around the supervisor's part).
func SetProcs(cfg *config.Config, logger hclog.Logger) (previous int) {
	if userProcs() {
		return runtime.GOMAXPROCS(0)
	}
	n := cfg.CPUShare(runtime.NumCPU())
	previous = runtime.GOMAXPROCS(n)
	logger.Debug("running on the host's share of its CPUs", "gomaxprocs", n, "cpus", runtime.NumCPU())
	return previous
}
