package sdk

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/phased/phased/sdk/internal/unixrpc"
	"github.com/phased/phased/sdk/proto/phasedv1"
)

// ProtocolVersion is the go-plugin protocol version of phased plugins. It is
// bumped only for changes that break the wire; the API version of each kind
// (PhaseAPIVersion, PolicyAPIVersion) covers the rest.
//
// History: 1 — first version (gRPC, services phased.v1.Phase and
// phased.v1.Policy).
const ProtocolVersion = 1

// Handshake is the go-plugin handshake shared by the supervisor and every
// plugin. The cookie only guards against a plugin binary being run by hand;
// it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "PHASED_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "f1c7b0d8e2a94b6c8d3e5f70a1b2c3d4e5f6a7b8c9d0e1f2phased",
}

// Names of the plugins in the go-plugin plugin map: a phase plugin process
// serves PluginPhase, a policy plugin process serves PluginPolicy, a
// scaler plugin process PluginScaler (sdk/scaler.go); each is its kind's
// name.
const (
	PluginPhase  = "phase"
	PluginPolicy = "policy"
)

// LogLevelEnv names the environment variable a plugin reads its log level
// from; the supervisor sets it for its children.
const LogLevelEnv = "PHASED_LOG_LEVEL"

// PluginMap returns the go-plugin plugin map the supervisor dispenses from.
func PluginMap() map[string]plugin.Plugin {
	return map[string]plugin.Plugin{
		PluginPhase:  &PhasePlugin{},
		PluginPolicy: &PolicyPlugin{},
		PluginScaler: &ScalerPlugin{},
	}
}

// ServePhaseControl serves ctl as a phase plugin process: it speaks the
// go-plugin handshake on stdout, logs JSON to stderr through logger (from
// PluginLogger), and returns when the supervisor stops the process. Phase
// authors call phase.Serve (package sdk/phase), which serves their Phase
// through the Go phase runtime; this is the layer under it.
func ServePhaseControl(ctl PhaseControl, logger hclog.Logger) {
	serve(logger, map[string]plugin.Plugin{PluginPhase: &PhasePlugin{Impl: ctl}})
}

// ServePolicy serves p as a policy plugin process: it speaks the go-plugin
// handshake on stdout, logs JSON to stderr, and returns when the
// supervisor stops the process. A policy plugin's main is one call:
//
//	func main() { sdk.ServePolicy(roundrobin.New()) }
func ServePolicy(p Policy) {
	serve(PluginLogger(), map[string]plugin.Plugin{PluginPolicy: &PolicyPlugin{Impl: p}})
}

func serve(logger hclog.Logger, plugins map[string]plugin.Plugin) {
	SetGCFloor(logger)
	// The channel's hello is written before go-plugin's handshake, so the
	// supervisor finds it once the handshake is done.
	if ch := serveChannel(logger, plugins); ch != nil {
		defer ch.Close()
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         plugins,
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          logger,
	})
}

// PluginLogger returns the logger of a plugin process: JSON lines on
// stderr, at the level the supervisor asks for (LogLevelEnv, default
// info), which the supervisor parses and logs again under the plugin's
// name (docs/protocol.md, "stderr").
func PluginLogger() hclog.Logger {
	level := hclog.LevelFromString(os.Getenv(LogLevelEnv))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Level:      level,
		Output:     os.Stderr,
		JSONFormat: true,
	})
}

// PhasePlugin is the go-plugin plugin for the Phase service. The plugin side
// sets Impl, what serves the calls (the phase runtime of package
// sdk/phase); the supervisor side leaves it nil and gets a PhaseControl
// from Dispense.
type PhasePlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl PhaseControl
}

// GRPCServer registers Impl as the Phase service.
func (p *PhasePlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	phasedv1.RegisterPhaseServer(s, &phaseServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a PhaseControl talking to the plugin over conn; it is
// also an Exiter.
func (p *PhasePlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &phaseConn{&phaseClient{caller{conn}, phasedv1.NewPhaseClient(conn)}, exitNotice{ctx.Done()}}, nil
}

// Exiter is implemented by what the supervisor dispenses from a plugin
// client: Exited is closed once the plugin process has exited and been
// reaped. It is go-plugin's own exit notification (the context it hands
// GRPCClient ends when its wait on the process returns), so a host learns
// of a crash at once, without polling.
type Exiter interface {
	Exited() <-chan struct{}
}

type exitNotice struct{ done <-chan struct{} }

func (e exitNotice) Exited() <-chan struct{} { return e.done }

// phaseConn is the supervisor side of a phase plugin: its PhaseControl and
// its exit notification.
type phaseConn struct {
	*phaseClient
	exitNotice
}

// policyConn is the supervisor side of a policy plugin.
type policyConn struct {
	*policyClient
	exitNotice
}

// PolicyPlugin is the go-plugin plugin for the Policy service. The plugin
// side sets Impl; the supervisor side gets a Policy from Dispense.
type PolicyPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Policy
}

// GRPCServer registers Impl.
func (p *PolicyPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	phasedv1.RegisterPolicyServer(s, &policyServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Policy talking to the plugin over conn.
func (p *PolicyPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &policyConn{&policyClient{caller{conn}, phasedv1.NewPolicyClient(conn)}, exitNotice{ctx.Done()}}, nil
}

var (
	_ plugin.GRPCPlugin = (*PhasePlugin)(nil)
	_ plugin.GRPCPlugin = (*PolicyPlugin)(nil)
	_ PhaseControl      = (*phaseConn)(nil)
	_ Exiter            = (*phaseConn)(nil)
	_ Policy            = (*policyConn)(nil)
	_ Exiter            = (*policyConn)(nil)
)

// ControlChannelEnv names the variable that gives a plugin process the
// descriptor of its end of the control channel, a private unix socket over
// which the supervisor makes its calls when the plugin serves it
// (docs/protocol.md, section 1.7). Serve serves it when the variable is set.
const ControlChannelEnv = unixrpc.Env

// ControlChannelPair returns the two ends of a plugin process's control
// channel: host, the supervisor's (closed on exec), and plugin, which the
// process inherits (exec.Cmd.ExtraFiles, ControlChannelEnv naming its
// number there). The supervisor closes its copy of plugin once the process
// has started, and hands host to UseControlChannel.
func ControlChannelPair() (host, plugin *os.File, err error) { return unixrpc.Pair() }

// UseControlChannel routes the calls of raw, what Dispense returned
// for a phase or policy plugin, over the plugin's control channel, once
// go-plugin's handshake is done, if the plugin serves the channel (it wrote
// its hello before the handshake): its unary calls and its server streams
// (Progress); go-plugin's own services stay on gRPC. It returns what
// closes the channel, nil (calls stay on gRPC) when the plugin does not
// serve it. host is the supervisor's end; it is closed either way.
func UseControlChannel(raw any, host *os.File) (io.Closer, error) {
	switch c := raw.(type) {
	case *phaseConn:
		return useChannel(host, c.conn, func(ch grpc.ClientConnInterface) { c.c = phasedv1.NewPhaseClient(ch) })
	case *policyConn:
		return useChannel(host, c.conn, func(ch grpc.ClientConnInterface) { c.c = phasedv1.NewPolicyClient(ch) })
	case *scalerConn:
		return useChannel(host, c.conn, func(ch grpc.ClientConnInterface) { c.c = phasedv1.NewScalerClient(ch) })
	}
	host.Close()
	return nil, fmt.Errorf("control channel: %T is not a phased plugin client", raw)
}

// useChannel dials the channel on host, with conn carrying what it does
// not, and hands it to use if the plugin serves it.
func useChannel(host *os.File, conn *grpc.ClientConn, use func(grpc.ClientConnInterface)) (io.Closer, error) {
	ch, err := unixrpc.Dial(host, conn)
	if err != nil || ch == nil {
		return nil, err
	}
	use(ch)
	return ch, nil
}

// serveChannel serves the unary methods and server streams of plugins over
// the control channel the supervisor passed, if it passed one; nil if not.
// An unusable descriptor is logged, and the calls come over gRPC.
func serveChannel(logger hclog.Logger, plugins map[string]plugin.Plugin) *unixrpc.Server {
	srv, err := unixrpc.FromEnv(logger)
	if err == nil && srv != nil {
		for _, p := range plugins {
			switch p := p.(type) {
			case *PhasePlugin:
				phasedv1.RegisterPhaseServer(srv, &phaseServer{impl: p.Impl})
			case *PolicyPlugin:
				phasedv1.RegisterPolicyServer(srv, &policyServer{impl: p.Impl})
			case *ScalerPlugin:
				phasedv1.RegisterScalerServer(srv, &scalerServer{impl: p.Impl})
			}
		}
		err = srv.Serve()
	}
	if err != nil {
		logger.Warn("control channel not served: the supervisor's calls come over gRPC", "error", err)
		return nil
	}
	return srv
}
