// Package plugintest runs phased plugins through the real gRPC layer in
// memory (go-plugin's test connection), so that a plugin author tests a
// Policy exactly as the supervisor will call it, without building a
// binary. Phases go through sdk/phasetest.Start, which adds the phase
// runtime. Neither this package nor sdk imports the transfer manager, so
// a policy's tests build without cgo.
package plugintest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/phased/phased/sdk"
)

// Scaler serves s over gRPC in memory, the way sdk.ServeScaler serves it
// in a plugin process, and returns the supervisor's side of it.
func Scaler(t testing.TB, s sdk.Scaler) sdk.Scaler {
	t.Helper()
	return Dispense[sdk.Scaler](t, sdk.PluginScaler, &sdk.ScalerPlugin{Impl: s})
}

// Policy serves p over gRPC in memory, the way sdk.ServePolicy serves it in
// a plugin process, and returns the supervisor's side of it. The
// connection closes when the test ends.
func Policy(t testing.TB, p sdk.Policy) sdk.Policy {
	t.Helper()
	return Dispense[sdk.Policy](t, sdk.PluginPolicy, &sdk.PolicyPlugin{Impl: p})
}

// Dispense serves the go-plugin plugin p under name over gRPC in memory
// and returns what the supervisor's side dispenses from it, as a T. The
// connection closes when the test ends.
func Dispense[T any](t testing.TB, name string, p plugin.Plugin) T {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{name: p})
	// Closing the client also stops the in-memory server, through
	// go-plugin's controller.
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(name)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := raw.(T)
	if !ok {
		t.Fatalf("plugintest: dispensed %T for %q", raw, name)
	}
	return v
}

// Process is a plugin binary started by Start.
type Process struct {
	Raw       any    // what it dispensed: an sdk.PhaseControl, sdk.Policy or sdk.Scaler
	Pid       int    // its pid, which is also its process group's id
	SocketDir string // where it put its gRPC socket (PLUGIN_UNIX_SOCKET_DIR)
	// Channel says whether the plugin serves the control channel, over
	// which Raw's calls then go (sdk.UseControlChannel).
	Channel bool
	// GRPC is a second client of the same process, whose calls all go
	// over gRPC: to compare the two.
	GRPC any
	// Stop stops it as the supervisor does: go-plugin's graceful
	// shutdown, then a kill; it returns once the process has exited and
	// been reaped. Safe to call twice; it also runs when the test ends.
	Stop func()
	// Killed reports, after Stop, whether the plugin had to be killed:
	// it had not exited 2 s after the controller's Shutdown.
	Killed func() bool
}

// Start starts the plugin binary at path as the supervisor starts it
// (go-plugin, its handshake, AutoMTLS, a unix socket in a directory of its
// own, its own process group) and dispenses the service of kind. The
// plugin's stderr is kept and shown if the test fails (never parsed: a
// plugin's output cannot break the test).
func Start(t testing.TB, path string, kind sdk.Kind) *Process {
	t.Helper()
	sockets := RunDir(t)
	stderr, warnings := &lockedBuffer{}, &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("%s stderr:\n%s", filepath.Base(path), stderr.String())
		}
	})
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), "PLUGIN_UNIX_SOCKET_DIR="+sockets, sdk.ControlChannelEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	host, child, err := sdk.ControlChannelPair()
	if err != nil {
		t.Fatalf("plugintest: %v", err)
	}
	cmd.ExtraFiles = []*os.File{child}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		Plugins:          sdk.PluginMap(),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		// Only go-plugin's own warnings, among them the one that says it
		// killed a plugin that did not exit after Shutdown; the plugin's
		// stderr, logged at levels it chooses, goes to stderr above.
		Logger:           hclog.New(&hclog.LoggerOptions{Name: "plugintest", Level: hclog.Warn, Output: warnings}),
		Stderr:           stderr,
		StartTimeout:     30 * time.Second,
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: sockets},
		SkipHostEnv:      true, // cmd.Env holds it, ours last
	})
	t.Cleanup(client.Kill)
	rpc, err := client.Client()
	child.Close()
	if err != nil {
		host.Close()
		t.Fatalf("plugintest: start %s: %v", path, err)
	}
	name := string(kind) // a kind's service has the kind's name
	raw, err := rpc.Dispense(name)
	if err != nil {
		host.Close()
		t.Fatalf("plugintest: %s: dispense the %s service: %v", path, kind, err)
	}
	grpcOnly, err := rpc.Dispense(name)
	if err != nil {
		host.Close()
		t.Fatalf("plugintest: %s: dispense the %s service: %v", path, kind, err)
	}
	channel, err := sdk.UseControlChannel(raw, host)
	if err != nil {
		t.Fatalf("plugintest: %s: %v", path, err)
	}
	stop := client.Kill
	if channel != nil {
		stop = func() {
			client.Kill()
			channel.Close()
		}
		t.Cleanup(func() { channel.Close() })
	}
	p := &Process{Raw: raw, GRPC: grpcOnly, SocketDir: sockets, Channel: channel != nil, Stop: stop, Killed: func() bool {
		return strings.Contains(warnings.String(), killedWarning)
	}}
	if rc := client.ReattachConfig(); rc != nil {
		p.Pid = rc.Pid
	}
	return p
}

// killedWarning is what go-plugin logs when a plugin has not exited 2 s
// after the controller's Shutdown, before it kills the plugin.
const killedWarning = "plugin failed to exit gracefully"

// NameOf returns NAME of a plugin binary's file name phased-KIND-NAME,
// what its Info must answer; "" when the file is not so named.
func NameOf(path string, kind sdk.Kind) string {
	name, ok := strings.CutPrefix(filepath.Base(path), "phased-"+string(kind)+"-")
	if !ok {
		return ""
	}
	return name
}

// CheckInfo checks what a plugin's Info answered, as the supervisor does:
// its kind, its API version of that kind, and, when name is set (the
// plugin is a binary), that it answers the NAME of its file.
func CheckInfo(t testing.TB, info sdk.Info, kind sdk.Kind, name string) {
	t.Helper()
	api := sdk.APIVersion(kind)
	if info.Kind != kind {
		t.Errorf("Info: kind %q, want %q", info.Kind, kind)
	}
	if !info.Speaks(api) {
		t.Errorf("Info: API versions %v do not include %d", info.APIVersions, api)
	}
	switch {
	case info.Name == "":
		t.Error("Info: no name")
	case name != "" && info.Name != name:
		t.Errorf("Info: name %q, but the file names it %q (phased-%s-%s): the supervisor refuses it", info.Name, name, kind, name)
	}
}

// lockedBuffer is a bytes.Buffer for one writer and readers elsewhere.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// RunDir returns a new directory for an instance's sockets (an
// sdk.InstanceConfig's RunDir), under /tmp so that socket paths stay
// within the 107 bytes unix sockets allow; it is removed when the test
// ends.
func RunDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "phased-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
