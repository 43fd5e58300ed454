package sdk_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/proto/phasedv1"
)

// slowLoad is a scale phase whose Load returns what the test sends.
type slowLoad struct {
	scale
	result chan error
}

func (s slowLoad) Load(ctx context.Context) error {
	select {
	case err := <-s.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestReadyOverGRPC: Configure returns while the phase loads, requests are
// refused until then, and Ready carries the loading's error.
func TestReadyOverGRPC(t *testing.T) {
	ctx := context.Background()
	ph := slowLoad{scale: scale{first: true, n: 2}, result: make(chan error, 1)}
	ctl := plugintest.Phase(t, ph)
	if err := ctl.Ready(ctx); err == nil || err.Error() != "invalid argument: instance is not configured" {
		t.Fatalf("Ready before Configure: %v", err)
	}
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "s-0", RunDir: plugintest.RunDir(t)}); err != nil {
		t.Fatal(err)
	}
	defer ctl.Release(ctx)
	if _, err := ctl.Run(ctx, sdk.RunSpec{Request: sdk.Request{ID: "r"}}); err == nil || err.Error() != "instance s-0 is still loading; call Ready first" {
		t.Fatalf("Run while loading: %v", err)
	}
	ph.result <- errors.New("weights missing at /w")
	for range 2 {
		if err := ctl.Ready(ctx); err == nil || err.Error() != "loading: weights missing at /w" {
			t.Fatalf("Ready after a failed load: %v", err)
		}
	}
}

// oldPhasePlugin serves a Phase service without Ready and Progress, as a
// plugin built with an SDK from before them does; its client side is the
// SDK's.
type oldPhasePlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (oldPhasePlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	phasedv1.RegisterPhaseServer(s, oldPhaseServer{})
	return nil
}

func (oldPhasePlugin) GRPCClient(ctx context.Context, b *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return (&sdk.PhasePlugin{}).GRPCClient(ctx, b, c)
}

type oldPhaseServer struct {
	phasedv1.UnimplementedPhaseServer
}

// TestOldPlugin: a plugin without Ready is ready; one without Progress
// makes Progress fail with ErrNoProgress.
func TestOldPlugin(t *testing.T) {
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginPhase: oldPhasePlugin{}})
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(sdk.PluginPhase)
	if err != nil {
		t.Fatal(err)
	}
	ctl := raw.(sdk.PhaseControl)
	ctx := context.Background()
	if err := ctl.Ready(ctx); err != nil {
		t.Fatalf("Ready of an old plugin: %v", err)
	}
	called := false
	err = ctl.Progress(ctx, func(sdk.Progress) { called = true })
	if !errors.Is(err, sdk.ErrNoProgress) || called {
		t.Fatalf("Progress of an old plugin: %v (fn called: %t)", err, called)
	}
	// Other calls are as they were: the plugin's own answer.
	var re *sdk.RemoteError
	if _, err := ctl.Status(ctx); !errors.As(err, &re) || errors.Is(err, sdk.ErrNoProgress) {
		t.Fatalf("Status of the stub: %v", err)
	}
}

// TestProgressEndsAtRelease: an open Progress call returns nil when the
// instance is released.
func TestProgressEndsAtRelease(t *testing.T) {
	ctx := context.Background()
	ctl := plugintest.Phase(t, scale{first: true, n: 2})
	if err := ctl.Configure(ctx, sdk.InstanceConfig{Instance: "s-0", RunDir: plugintest.RunDir(t)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Progress(ctx, func(sdk.Progress) {}) }()
	if err := ctl.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Release either ended the open stream or came before it: then the
	// stream is refused. Both leave Progress returning.
	if err := <-done; err != nil && err.Error() != "transfer: manager released" {
		t.Fatalf("Progress across Release: %v", err)
	}
}
