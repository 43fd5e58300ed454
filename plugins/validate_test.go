package plugins_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/phased/phased/plugins/decoder"
	"github.com/phased/phased/plugins/encoder"
	"github.com/phased/phased/plugins/transformer"
	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phasetest"
	"github.com/phased/phased/sdk/plugintest"
)

// TestValidateParamsOverGRPC asks each built-in phase to check params
// through the real gRPC layer, before Configure (as `supervisor
// validate` does), and checks that a bad set is refused by Configure
// with the first problem's text.
func TestValidateParamsOverGRPC(t *testing.T) {
	ctx := context.Background()
	bad := map[string]string{"fraems": "3", "width": "x"}
	want := []sdk.ParamProblem{
		{Param: "fraems", Message: `fraems = "3": unknown param; did you mean "frames"? The known params are channels, context_dim, context_len, delay, frames, height, scale, width`},
		{Param: "width", Message: `width = "x": not an integer`},
	}
	for _, p := range []sdk.Phase{encoder.New(), transformer.New(), decoder.New()} {
		ctl := phasetest.Start(t, p)
		info, err := ctl.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(info.Name, func(t *testing.T) {
			got, err := ctl.ValidateParams(ctx, map[string]string{"frames": "3", "height": "16"})
			if err != nil || len(got) != 0 {
				t.Fatalf("ValidateParams(valid) = %q, %v; want no problem", got, err)
			}
			got, err = ctl.ValidateParams(ctx, bad)
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("ValidateParams(%v) = %q, %v; want %q", bad, got, err, want)
			}
			err = ctl.Configure(ctx, sdk.InstanceConfig{Instance: info.Name + "-0", RunDir: plugintest.RunDir(t), Params: bad})
			if err == nil || errors.Is(err, sdk.ErrNoValidation) {
				t.Fatalf("Configure(%v) = %v; want it refused", bad, err)
			}
			if wantErr := info.Name + ": params: " + want[0].Message; !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("Configure: %v; want it to say %q", err, wantErr)
			}
		})
	}
}
