package roundrobin

import (
	"context"
	"reflect"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
)

// TestOverGRPC drives the policy through the real gRPC layer in memory.
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
	req := sdk.ScheduleRequest{RequestID: "r1", Phases: []sdk.PhaseCandidates{
		{Phase: "encoder", Candidates: []sdk.Candidate{{ID: "encoder-0", Ready: true, Labels: map[string]string{"gpu": "0"}}}},
		{Phase: "transformer", Candidates: []sdk.Candidate{{ID: "transformer-0", Ready: false}, {ID: "transformer-1", Index: 1, Ready: true, OpenRooms: 3}}},
	}}
	d, err := p.Schedule(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"encoder": "encoder-0", "transformer": "transformer-1"}; !reflect.DeepEqual(d.Choices, want) {
		t.Fatalf("choices %v, want %v", d.Choices, want)
	}
	_, err = p.Schedule(ctx, sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "decoder"}}})
	if err == nil || err.Error() != `roundrobin: phase "decoder": no ready instance among 0 candidates` {
		t.Fatalf("error %v crossing gRPC, want the policy's text", err)
	}
}
