package sdk

import (
	"context"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// KindScaler is the kind of a scaler plugin (phased-scaler-NAME), which
// sets each phase's instance count from its load.
const KindScaler Kind = "scaler"

// ScalerAPIVersion is the scaler API version this SDK speaks.
const ScalerAPIVersion = 1

// PluginScaler is the name of the Scaler service in the go-plugin plugin
// map.
const PluginScaler = "scaler"

// ScalerInfo returns the Info of a scaler plugin named name at version.
func ScalerInfo(name, version string) Info {
	return Info{Name: name, Kind: KindScaler, Version: version, APIVersions: []int{ScalerAPIVersion}}
}

// Scaler is what a scaler plugin implements. The supervisor calls Scale
// periodically with a snapshot of the load and applies the targets within
// each phase's min and max. The snapshot carries all a scaler needs (the
// time of each phase's last scaling, for a cooldown; the scaler block's
// params), so a scaler keeps no state and may be restarted or swapped at
// any time. Scale may be called concurrently.
type Scaler interface {
	// Info describes the plugin; Kind must be KindScaler.
	Info(ctx context.Context) (Info, error)
	// Scale returns the instance count each phase should have; a phase
	// left out keeps its count.
	Scale(ctx context.Context, req ScaleRequest) (ScaleDecision, error)
}

// ScaleRequest is a snapshot of the load.
type ScaleRequest struct {
	Now         time.Time
	QueueDepth  int           // requests waiting for a dispatch slot
	QueueWait   time.Duration // how long the oldest of them has waited
	MaxInflight int           // dispatch slots
	Phases      []PhaseLoad   // in pipeline order
	// Params are the scaler block's params in the config.
	Params map[string]string
}

// PhaseLoad is one phase's load and bounds.
type PhaseLoad struct {
	Phase     string
	Instances int // now, ready or not
	Ready     int
	Min, Max  int // the config's bounds: targets are clamped to them
	Inflight  int // requests on its instances
	// Utilisation is the fraction of its ready instances with a request
	// in flight, from 0 to 1.
	Utilisation float64
	// Service is the moving average of a Run's time on the phase; 0
	// before the first.
	Service        time.Duration
	StepsPerSecond float64        // its denoising steps per second now
	States         map[string]int // instances by state
	// LastScaled is when its count last changed; zero: not since start.
	LastScaled time.Time
}

// ScaleDecision maps phases to the instance counts wanted.
type ScaleDecision struct {
	Targets map[string]int
}

// ServeScaler serves s as a scaler plugin process: it speaks the
// go-plugin handshake on stdout, logs JSON to stderr, and returns when
// the supervisor stops the process. A scaler plugin's main is one call:
//
//	func main() { sdk.ServeScaler(threshold.New()) }
func ServeScaler(s Scaler) {
	serve(PluginLogger(), map[string]plugin.Plugin{PluginScaler: &ScalerPlugin{Impl: s}})
}

// ScalerPlugin is the go-plugin plugin for the Scaler service. The plugin
// side sets Impl; the supervisor side gets a Scaler from Dispense.
type ScalerPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Scaler
}

// GRPCServer registers Impl.
func (p *ScalerPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	phasedv1.RegisterScalerServer(s, &scalerServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Scaler talking to the plugin over conn.
func (p *ScalerPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return &scalerConn{&scalerClient{caller{conn}, phasedv1.NewScalerClient(conn)}, exitNotice{ctx.Done()}}, nil
}

// scalerConn is the supervisor side of a scaler plugin.
type scalerConn struct {
	*scalerClient
	exitNotice
}

// scalerClient is the supervisor side of the Scaler service.
type scalerClient struct {
	caller
	c phasedv1.ScalerClient
}

func (s *scalerClient) Info(ctx context.Context) (Info, error) {
	resp, err := s.c.Info(ctx, &phasedv1.InfoRequest{})
	if err != nil {
		return Info{}, s.rpcError(ctx, err)
	}
	return infoFromProto(resp), nil
}

func (s *scalerClient) Scale(ctx context.Context, req ScaleRequest) (ScaleDecision, error) {
	resp, err := s.c.Scale(ctx, scaleRequestToProto(req))
	if err != nil {
		return ScaleDecision{}, s.rpcError(ctx, err)
	}
	d := ScaleDecision{Targets: make(map[string]int, len(resp.GetTargets()))}
	for ph, n := range resp.GetTargets() {
		d.Targets[ph] = int(n)
	}
	return d, nil
}

// scalerServer is the plugin side of the Scaler service.
type scalerServer struct {
	phasedv1.UnimplementedScalerServer
	impl Scaler
}

func (s *scalerServer) Info(ctx context.Context, _ *phasedv1.InfoRequest) (*phasedv1.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, statusError(err)
	}
	return infoToProto(info), nil
}

func (s *scalerServer) Scale(ctx context.Context, req *phasedv1.ScaleRequest) (*phasedv1.ScaleResponse, error) {
	d, err := s.impl.Scale(ctx, scaleRequestFromProto(req))
	if err != nil {
		return nil, statusError(err)
	}
	resp := &phasedv1.ScaleResponse{Targets: make(map[string]int32, len(d.Targets))}
	for ph, n := range d.Targets {
		resp.Targets[ph] = int32(min(max(n, 0), 1<<20))
	}
	return resp, nil
}

func unixMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromUnixMs(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func scaleRequestToProto(req ScaleRequest) *phasedv1.ScaleRequest {
	p := &phasedv1.ScaleRequest{
		NowUnixMs: unixMs(req.Now), QueueDepth: int32(req.QueueDepth), QueueWaitSeconds: req.QueueWait.Seconds(),
		MaxInflight: int32(req.MaxInflight), Params: req.Params,
	}
	for _, ph := range req.Phases {
		states := make(map[string]int32, len(ph.States))
		for st, n := range ph.States {
			states[st] = int32(n)
		}
		p.Phases = append(p.Phases, &phasedv1.PhaseLoad{
			Phase: ph.Phase, Instances: int32(ph.Instances), Ready: int32(ph.Ready), Min: int32(ph.Min), Max: int32(ph.Max),
			Inflight: int32(ph.Inflight), Utilisation: ph.Utilisation, ServiceSeconds: ph.Service.Seconds(),
			StepsPerSecond: ph.StepsPerSecond, States: states, LastScaledUnixMs: unixMs(ph.LastScaled),
		})
	}
	return p
}

func scaleRequestFromProto(p *phasedv1.ScaleRequest) ScaleRequest {
	req := ScaleRequest{
		Now: fromUnixMs(p.GetNowUnixMs()), QueueDepth: int(p.GetQueueDepth()), QueueWait: seconds(p.GetQueueWaitSeconds()),
		MaxInflight: int(p.GetMaxInflight()), Params: p.GetParams(),
	}
	for _, ph := range p.GetPhases() {
		states := make(map[string]int, len(ph.GetStates()))
		for st, n := range ph.GetStates() {
			states[st] = int(n)
		}
		req.Phases = append(req.Phases, PhaseLoad{
			Phase: ph.GetPhase(), Instances: int(ph.GetInstances()), Ready: int(ph.GetReady()), Min: int(ph.GetMin()), Max: int(ph.GetMax()),
			Inflight: int(ph.GetInflight()), Utilisation: ph.GetUtilisation(), Service: seconds(ph.GetServiceSeconds()),
			StepsPerSecond: ph.GetStepsPerSecond(), States: states, LastScaled: fromUnixMs(ph.GetLastScaledUnixMs()),
		})
	}
	return req
}

// seconds converts a count of seconds from the wire, bounded to what a
// Duration holds (a hostile or broken peer may send anything).
func seconds(s float64) time.Duration {
	const limit = float64(1<<63-1) / float64(time.Second)
	switch {
	case !(s > 0): // and NaN
		return 0
	case s >= limit:
		return 1<<63 - 1
	}
	return time.Duration(s * float64(time.Second))
}

var (
	_ plugin.GRPCPlugin     = (*ScalerPlugin)(nil)
	_ Scaler                = (*scalerConn)(nil)
	_ Exiter                = (*scalerConn)(nil)
	_ phasedv1.ScalerServer = (*scalerServer)(nil)
)
