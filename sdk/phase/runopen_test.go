package phase

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/tensor"
)

// reader is a last phase: its artifact's path is its input's first byte.
type reader struct{}

func (reader) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "reader", Kind: sdk.KindPhase, APIVersions: []int{sdk.PhaseAPIVersion}}, nil
}

func (reader) Inputs(context.Context, sdk.Request) ([]tensor.Spec, error) {
	return []tensor.Spec{plainSpec}, nil
}

func (reader) Run(_ context.Context, _ sdk.Request, in []tensor.Tensor) (sdk.Output, error) {
	return sdk.Output{Artifact: &sdk.Artifact{Path: fmt.Sprint(in[0].Data[0])}}, nil
}

// TestRunOpensInRoom: the runtime says it opens a Run's in room
// (FeatureRunOpensInRoom), and a Run given the sender's endpoint opens
// its receiver side, receives and computes, with no OpenRoom before it;
// an endpoint without an in room is refused, and a failed open fails the
// Run with what failed.
func TestRunOpensInRoom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, peer := withPeer(t, reader{}, "o-0")
	info, err := r.Info(ctx)
	if err != nil || !slices.Contains(info.Features, sdk.FeatureRunOpensInRoom) {
		t.Fatalf("Info %+v, %v: want the feature %q", info, err, sdk.FeatureRunOpensInRoom)
	}

	ep, err := peer.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	out, err := tensor.New(plainSpec)
	if err != nil {
		t.Fatal(err)
	}
	out.Data[0] = 42
	sent := make(chan error, 1)
	go func() { sent <- peer.Send(ctx, 1, []tensor.Tensor{out}) }()
	res, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "o1"}, InRoom: 1, InPeer: ep, InBackend: sdk.BackendShm})
	if err != nil {
		t.Fatal(err)
	}
	if res.Artifact == nil || res.Artifact.Path != "42" {
		t.Fatalf("artifact %+v, want the input's first byte, 42", res.Artifact)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{peer.Remove(1), r.RemoveRoom(ctx, 1)} {
		if err != nil {
			t.Fatal(err)
		}
	}

	if _, err := r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "o2"}, InPeer: ep}); !errors.Is(err, sdk.ErrInvalid) {
		t.Errorf("a peer endpoint without an in room: %v, want ErrInvalid", err)
	}
	_, err = r.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "o3"}, InRoom: 3, InPeer: "udp://nowhere", InBackend: sdk.BackendShm})
	if err == nil || !strings.HasPrefix(err.Error(), "open room 3 as receiver: ") {
		t.Errorf("a Run whose open fails: %v, want it to say so", err)
	}
}
