package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// phaseClient is the supervisor side of the Phase service.
type phaseClient struct {
	caller
	c phasedv1.PhaseClient
}

func (p *phaseClient) Info(ctx context.Context) (Info, error) {
	resp, err := p.c.Info(ctx, &phasedv1.InfoRequest{})
	if err != nil {
		return Info{}, p.rpcError(ctx, err)
	}
	return infoFromProto(resp), nil
}

func (p *phaseClient) Configure(ctx context.Context, cfg InstanceConfig) error {
	_, err := p.c.Configure(ctx, &phasedv1.ConfigureRequest{
		Instance:      cfg.Instance,
		RunDir:        cfg.RunDir,
		Params:        cfg.Params,
		ZmqHost:       cfg.ZMQHost,
		PeerTimeoutMs: cfg.PeerTimeout.Milliseconds(),
		Device:        cfg.Device,
		MaxRooms:      int32(cfg.MaxRooms),
		MaxInputBytes: cfg.MaxInputBytes,
		BatchMaxSize:  int32(cfg.Batch.MaxSize),
		// Rounded up: a wait under a millisecond is not none.
		BatchMaxWaitMs: (cfg.Batch.MaxWait + time.Millisecond - 1).Milliseconds(),
	})
	return p.rpcError(ctx, err)
}

// Ready treats a plugin that does not know the Ready RPC (built with an
// older SDK, gRPC Unimplemented) as ready: it had nothing to load.
func (p *phaseClient) Ready(ctx context.Context) error {
	_, err := p.c.Ready(ctx, &phasedv1.ReadyRequest{})
	if status.Code(err) == codes.Unimplemented {
		return nil
	}
	return p.rpcError(ctx, err)
}

func (p *phaseClient) OpenRoom(ctx context.Context, spec RoomSpec) (string, error) {
	resp, err := p.c.OpenRoom(ctx, &phasedv1.OpenRoomRequest{
		Room:         spec.Room,
		Role:         roleToProto(spec.Role),
		Request:      requestToProto(spec.Request),
		PeerEndpoint: spec.PeerEndpoint,
		Backend:      string(spec.Backend),
		Standby:      spec.Standby,
	})
	if err != nil {
		return "", p.rpcError(ctx, err)
	}
	return resp.GetEndpoint(), nil
}

func (p *phaseClient) Run(ctx context.Context, spec RunSpec) (RunResult, error) {
	req := &phasedv1.RunRequest{Request: requestToProto(spec.Request)}
	if spec.InRoom != 0 {
		req.InRoom = &spec.InRoom
	}
	if spec.OutRoom != 0 {
		req.OutRoom = &spec.OutRoom
	}
	resp, err := p.c.Run(ctx, req)
	if err != nil {
		return RunResult{}, p.rpcError(ctx, err)
	}
	res := RunResult{SentBytes: resp.GetSentBytes(), SendTime: time.Duration(resp.GetSendNanos()), OutDrained: resp.GetOutDrained(), OutRemoved: resp.GetOutRemoved(), InRemoved: resp.GetInRemoved()}
	if a := resp.GetArtifact(); a != nil {
		res.Artifact = &Artifact{Path: a.GetPath(), SHA256: a.GetSha256(), Size: a.GetSize(), MediaType: a.GetMediaType()}
	}
	return res, nil
}

func (p *phaseClient) RemoveRoom(ctx context.Context, room uint64) error {
	_, err := p.c.RemoveRoom(ctx, &phasedv1.RemoveRoomRequest{Room: room})
	return p.rpcError(ctx, err)
}

func (p *phaseClient) Status(ctx context.Context) (InstanceStatus, error) {
	resp, err := p.c.Status(ctx, &phasedv1.StatusRequest{})
	if err != nil {
		return InstanceStatus{}, p.rpcError(ctx, err)
	}
	st := InstanceStatus{DroppedFrames: resp.GetDroppedFrames(), DroppedProgress: resp.GetDroppedProgress()}
	for _, m := range resp.GetMetrics() {
		st.Metrics = append(st.Metrics, Metric{Name: m.GetName(), Help: m.GetHelp(), Counter: m.GetCounter(), Labels: m.GetLabels(), Value: m.GetValue()})
	}
	for _, r := range resp.GetRooms() {
		st.Rooms = append(st.Rooms, RoomInfo{
			Room:   r.GetRoom(),
			Role:   roleFromProto(r.GetRole()),
			Status: RoomStatusFromProto(r.GetStatus()),
			Reason: r.GetReason(),
		})
	}
	return st, nil
}

func (p *phaseClient) Release(ctx context.Context) error {
	_, err := p.c.Release(ctx, &phasedv1.ReleaseRequest{})
	return p.rpcError(ctx, err)
}

func (p *phaseClient) Progress(ctx context.Context, fn func(Progress)) error {
	// Cancelling on return frees the stream on every path.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := p.c.Progress(ctx, &phasedv1.ProgressRequest{})
	for err == nil {
		var ev *phasedv1.ProgressEvent
		if ev, err = stream.Recv(); err == nil {
			fn(progressFromProto(ev))
		}
	}
	switch {
	case errors.Is(err, io.EOF) || ctx.Err() != nil:
		return nil
	case status.Code(err) == codes.Unimplemented:
		return fmt.Errorf("%w: %w", ErrNoProgress, p.rpcError(ctx, err))
	}
	return p.rpcError(ctx, err)
}

func (p *phaseClient) ValidateParams(ctx context.Context, params map[string]string) ([]ParamProblem, error) {
	resp, err := p.c.ValidateParams(ctx, &phasedv1.ValidateParamsRequest{Params: params})
	if status.Code(err) == codes.Unimplemented {
		return nil, fmt.Errorf("%w: %w", ErrNoValidation, p.rpcError(ctx, err))
	}
	if err != nil {
		return nil, p.rpcError(ctx, err)
	}
	var problems []ParamProblem
	for _, pp := range resp.GetProblems() {
		problems = append(problems, ParamProblem{Param: pp.GetParam(), Message: pp.GetMessage()})
	}
	return problems, nil
}

// phaseServer is the plugin side of the Phase service.
type phaseServer struct {
	phasedv1.UnimplementedPhaseServer
	impl PhaseControl
}

func (s *phaseServer) Info(ctx context.Context, _ *phasedv1.InfoRequest) (*phasedv1.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, statusError(err)
	}
	return infoToProto(info), nil
}

func (s *phaseServer) Configure(ctx context.Context, req *phasedv1.ConfigureRequest) (*phasedv1.ConfigureResponse, error) {
	err := s.impl.Configure(ctx, InstanceConfig{
		Instance:      req.GetInstance(),
		RunDir:        req.GetRunDir(),
		Params:        req.GetParams(),
		ZMQHost:       req.GetZmqHost(),
		PeerTimeout:   time.Duration(req.GetPeerTimeoutMs()) * time.Millisecond,
		Device:        req.GetDevice(),
		MaxRooms:      int(req.GetMaxRooms()),
		MaxInputBytes: req.GetMaxInputBytes(),
		Batch:         BatchLimits{MaxSize: int(req.GetBatchMaxSize()), MaxWait: time.Duration(req.GetBatchMaxWaitMs()) * time.Millisecond},
	})
	if err != nil {
		return nil, statusError(err)
	}
	return &phasedv1.ConfigureResponse{}, nil
}

func (s *phaseServer) Ready(ctx context.Context, _ *phasedv1.ReadyRequest) (*phasedv1.ReadyResponse, error) {
	if err := s.impl.Ready(ctx); err != nil {
		return nil, statusError(err)
	}
	return &phasedv1.ReadyResponse{}, nil
}

func (s *phaseServer) OpenRoom(ctx context.Context, req *phasedv1.OpenRoomRequest) (*phasedv1.OpenRoomResponse, error) {
	ep, err := s.impl.OpenRoom(ctx, RoomSpec{
		Room:         req.GetRoom(),
		Role:         roleFromProto(req.GetRole()),
		Request:      requestFromProto(req.GetRequest()),
		PeerEndpoint: req.GetPeerEndpoint(),
		Backend:      Backend(req.GetBackend()),
		Standby:      req.GetStandby(),
	})
	if err != nil {
		return nil, statusError(err)
	}
	return &phasedv1.OpenRoomResponse{Endpoint: ep}, nil
}

func (s *phaseServer) Run(ctx context.Context, req *phasedv1.RunRequest) (*phasedv1.RunResponse, error) {
	res, err := s.impl.Run(ctx, RunSpec{
		Request: requestFromProto(req.GetRequest()),
		InRoom:  req.GetInRoom(),
		OutRoom: req.GetOutRoom(),
	})
	if err != nil {
		return nil, statusError(err)
	}
	resp := &phasedv1.RunResponse{SentBytes: res.SentBytes, SendNanos: int64(res.SendTime), OutDrained: res.OutDrained, OutRemoved: res.OutRemoved, InRemoved: res.InRemoved}
	if a := res.Artifact; a != nil {
		resp.Artifact = &phasedv1.Artifact{Path: a.Path, Sha256: a.SHA256, Size: a.Size, MediaType: a.MediaType}
	}
	return resp, nil
}

func (s *phaseServer) RemoveRoom(ctx context.Context, req *phasedv1.RemoveRoomRequest) (*phasedv1.RemoveRoomResponse, error) {
	if err := s.impl.RemoveRoom(ctx, req.GetRoom()); err != nil {
		return nil, statusError(err)
	}
	return &phasedv1.RemoveRoomResponse{}, nil
}

func (s *phaseServer) Status(ctx context.Context, _ *phasedv1.StatusRequest) (*phasedv1.StatusResponse, error) {
	st, err := s.impl.Status(ctx)
	if err != nil {
		return nil, statusError(err)
	}
	resp := &phasedv1.StatusResponse{DroppedFrames: st.DroppedFrames, DroppedProgress: st.DroppedProgress}
	for _, m := range st.Metrics {
		resp.Metrics = append(resp.Metrics, &phasedv1.Metric{Name: m.Name, Help: m.Help, Counter: m.Counter, Labels: m.Labels, Value: m.Value})
	}
	for _, r := range st.Rooms {
		resp.Rooms = append(resp.Rooms, &phasedv1.RoomState{
			Room:   r.Room,
			Role:   roleToProto(r.Role),
			Status: r.Status.Proto(),
			Reason: r.Reason,
		})
	}
	return resp, nil
}

func (s *phaseServer) ValidateParams(ctx context.Context, req *phasedv1.ValidateParamsRequest) (*phasedv1.ValidateParamsResponse, error) {
	problems, err := s.impl.ValidateParams(ctx, req.GetParams())
	if errors.Is(err, ErrNoValidation) {
		return nil, status.Error(codes.Unimplemented, err.Error())
	}
	if err != nil {
		return nil, statusError(err)
	}
	resp := &phasedv1.ValidateParamsResponse{}
	for _, p := range problems {
		resp.Problems = append(resp.Problems, &phasedv1.ParamProblem{Param: p.Param, Message: p.Message})
	}
	return resp, nil
}

func (s *phaseServer) Release(ctx context.Context, _ *phasedv1.ReleaseRequest) (*phasedv1.ReleaseResponse, error) {
	if err := s.impl.Release(ctx); err != nil {
		return nil, statusError(err)
	}
	return &phasedv1.ReleaseResponse{}, nil
}

// Progress sends the runtime's events until the client ends the call, a
// send fails, or the instance is released, which ends the stream with OK.
func (s *phaseServer) Progress(_ *phasedv1.ProgressRequest, stream phasedv1.Phase_ProgressServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	var sendErr error
	err := s.impl.Progress(ctx, func(p Progress) {
		if sendErr != nil {
			return
		}
		if sendErr = stream.Send(progressToProto(p)); sendErr != nil {
			cancel()
		}
	})
	if err == nil {
		err = sendErr
	}
	if err != nil {
		return statusError(err)
	}
	return nil
}

var stagesToProto = map[string]phasedv1.ProgressStage{
	StageWaiting:   phasedv1.ProgressStage_PROGRESS_STAGE_WAITING,
	StageComputing: phasedv1.ProgressStage_PROGRESS_STAGE_COMPUTING,
	StageSending:   phasedv1.ProgressStage_PROGRESS_STAGE_SENDING,
	StageFinished:  phasedv1.ProgressStage_PROGRESS_STAGE_FINISHED,
}

func progressToProto(p Progress) *phasedv1.ProgressEvent {
	return &phasedv1.ProgressEvent{Request: p.Request, Stage: stagesToProto[p.Stage], Done: int64(p.Done), Total: int64(p.Total), InRoom: p.InRoom, OutRoom: p.OutRoom, Resumed: int64(p.Resumed)}
}

// progressFromProto gives an unknown stage (from a newer plugin) as "".
func progressFromProto(e *phasedv1.ProgressEvent) Progress {
	p := Progress{Request: e.GetRequest(), Done: int(e.GetDone()), Total: int(e.GetTotal()), InRoom: e.GetInRoom(), OutRoom: e.GetOutRoom(), Resumed: int(e.GetResumed())}
	for s, v := range stagesToProto {
		if v == e.GetStage() {
			p.Stage = s
		}
	}
	return p
}

func requestToProto(r Request) *phasedv1.Request {
	pr := &phasedv1.Request{Id: r.ID, Prompt: r.Prompt, Seed: r.Seed, Steps: int32(r.Steps), ArtifactDir: r.ArtifactDir, NoSync: r.NoSync}
	if r.Checkpoint.Path != "" || r.Checkpoint.Every != 0 {
		pr.Checkpoint = &phasedv1.Checkpoint{Path: r.Checkpoint.Path, Every: int32(r.Checkpoint.Every)}
	}
	return pr
}

func requestFromProto(r *phasedv1.Request) Request {
	return Request{ID: r.GetId(), Prompt: r.GetPrompt(), Seed: r.GetSeed(), Steps: int(r.GetSteps()), ArtifactDir: r.GetArtifactDir(), NoSync: r.GetNoSync(),
		Checkpoint: CheckpointSpec{Path: r.GetCheckpoint().GetPath(), Every: int(r.GetCheckpoint().GetEvery())}}
}

func roleToProto(r Role) phasedv1.RoomRole {
	switch r {
	case RoleSender:
		return phasedv1.RoomRole_ROOM_ROLE_SENDER
	case RoleReceiver:
		return phasedv1.RoomRole_ROOM_ROLE_RECEIVER
	}
	return phasedv1.RoomRole_ROOM_ROLE_UNSPECIFIED
}

// roleFromProto returns 0, which is neither role, for an unspecified one.
func roleFromProto(r phasedv1.RoomRole) Role {
	switch r {
	case phasedv1.RoomRole_ROOM_ROLE_SENDER:
		return RoleSender
	case phasedv1.RoomRole_ROOM_ROLE_RECEIVER:
		return RoleReceiver
	}
	return 0
}

var (
	_ PhaseControl         = (*phaseClient)(nil)
	_ phasedv1.PhaseServer = (*phaseServer)(nil)
)
