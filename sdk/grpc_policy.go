package sdk

import (
	"context"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// policyClient is the supervisor side of the Policy service.
type policyClient struct {
	caller
	c phasedv1.PolicyClient
}

func (p *policyClient) Info(ctx context.Context) (Info, error) {
	resp, err := p.c.Info(ctx, &phasedv1.InfoRequest{})
	if err != nil {
		return Info{}, p.rpcError(ctx, err)
	}
	return infoFromProto(resp), nil
}

func (p *policyClient) Schedule(ctx context.Context, req ScheduleRequest) (Decision, error) {
	preq := &phasedv1.ScheduleRequest{RequestId: req.RequestID, Key: req.Key}
	for _, ph := range req.Phases {
		pc := &phasedv1.PhaseCandidates{Phase: ph.Phase}
		for _, c := range ph.Candidates {
			pc.Candidates = append(pc.Candidates, &phasedv1.Candidate{
				Id:            c.ID,
				Index:         int32(c.Index),
				Ready:         c.Ready,
				OpenRooms:     int32(c.OpenRooms),
				Inflight:      int32(c.Inflight),
				LatencyEwmaMs: c.LatencyEWMAms,
				Labels:        c.Labels,
			})
		}
		preq.Phases = append(preq.Phases, pc)
	}
	resp, err := p.c.Schedule(ctx, preq)
	if err != nil {
		return Decision{}, p.rpcError(ctx, err)
	}
	return Decision{Choices: resp.GetChoices()}, nil
}

// policyServer is the plugin side of the Policy service.
type policyServer struct {
	phasedv1.UnimplementedPolicyServer
	impl Policy
}

func (s *policyServer) Info(ctx context.Context, _ *phasedv1.InfoRequest) (*phasedv1.InfoResponse, error) {
	info, err := s.impl.Info(ctx)
	if err != nil {
		return nil, statusError(err)
	}
	return infoToProto(info), nil
}

func (s *policyServer) Schedule(ctx context.Context, req *phasedv1.ScheduleRequest) (*phasedv1.ScheduleResponse, error) {
	sreq := ScheduleRequest{RequestID: req.GetRequestId(), Key: req.GetKey()}
	for _, ph := range req.GetPhases() {
		pc := PhaseCandidates{Phase: ph.GetPhase()}
		for _, c := range ph.GetCandidates() {
			pc.Candidates = append(pc.Candidates, Candidate{
				ID:            c.GetId(),
				Index:         int(c.GetIndex()),
				Ready:         c.GetReady(),
				OpenRooms:     int(c.GetOpenRooms()),
				Inflight:      int(c.GetInflight()),
				LatencyEWMAms: c.GetLatencyEwmaMs(),
				Labels:        c.GetLabels(),
			})
		}
		sreq.Phases = append(sreq.Phases, pc)
	}
	d, err := s.impl.Schedule(ctx, sreq)
	if err != nil {
		return nil, statusError(err)
	}
	return &phasedv1.ScheduleResponse{Choices: d.Choices}, nil
}

var (
	_ Policy                = (*policyClient)(nil)
	_ phasedv1.PolicyServer = (*policyServer)(nil)
)
