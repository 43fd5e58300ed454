package sdk_test

import (
	"context"
	"errors"
	"testing"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/proto/phasedv1"
)

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
