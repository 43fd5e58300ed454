package colocate

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
)

// TestOverGRPC drives the policy through the real gRPC layer in memory:
// the host labels cross it, and so does the error's text.
func TestOverGRPC(t *testing.T) {
	p := plugintest.Policy(t, New())
	ctx := context.Background()
	info, err := p.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != Name || info.Kind != sdk.KindPolicy || !info.Speaks(sdk.PolicyAPIVersion) {
		t.Fatalf("info %+v", info)
	}
	on := func(host string) map[string]string { return map[string]string{HostLabel: host, "gpu": "0"} }
	req := sdk.ScheduleRequest{RequestID: "r1", Phases: []sdk.PhaseCandidates{
		{Phase: "encoder", Candidates: []sdk.Candidate{{ID: "encoder-0", Ready: true, Labels: on("b")}}},
		{Phase: "transformer", Candidates: []sdk.Candidate{
			{ID: "transformer-0", Ready: true, Labels: on("c")},
			{ID: "transformer-1", Index: 1, Ready: false, Labels: on("b")},
			{ID: "transformer-2", Index: 2, Ready: true, OpenRooms: 1, Labels: on("b")},
		}},
		{Phase: "decoder", Candidates: []sdk.Candidate{{ID: "decoder-0", Ready: true, Labels: on("b")}}},
	}}
	d, err := p.Schedule(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"encoder": "encoder-0", "transformer": "transformer-2", "decoder": "decoder-0"}; !reflect.DeepEqual(d.Choices, want) {
		t.Fatalf("choices %v, want %v (all on host b)", d.Choices, want)
	}
	_, err = p.Schedule(ctx, sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "decoder"}}})
	if err == nil || err.Error() != `colocate: phase "decoder": no ready instance among 0 candidates` {
		t.Fatalf("error %v crossing gRPC, want the policy's text", err)
	}
	var remote *sdk.RemoteError
	if !errors.As(err, &remote) {
		t.Fatalf("error %T crossing gRPC, want *sdk.RemoteError", err)
	}
}
