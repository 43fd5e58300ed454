package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/phased/phased/sdk"
)

// blocking is a policy whose Schedule waits for its context, or fails
// with err at once when err is set.
type blocking struct{ err error }

func (blocking) Info(context.Context) (sdk.Info, error) { return sdk.PolicyInfo("blocking", "1"), nil }

func (b blocking) Schedule(ctx context.Context, _ sdk.ScheduleRequest) (sdk.Decision, error) {
	if b.err != nil {
		return sdk.Decision{}, b.err
	}
	<-ctx.Done()
	return sdk.Decision{}, ctx.Err()
}

// dispense serves p in memory and returns the supervisor's side and the
// go-plugin client that closes the connection.
func dispense(t *testing.T, p sdk.Policy) (sdk.Policy, *plugin.GRPCClient) {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{sdk.PluginPolicy: &sdk.PolicyPlugin{Impl: p}})
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(sdk.PluginPolicy)
	if err != nil {
		t.Fatal(err)
	}
	return raw.(sdk.Policy), client
}

// TestRemoteErrorSentinels: what a call to a plugin fails with is told
// apart by errors.Is on the shims' sentinels, through the real gRPC layer:
// a plugin's own error is none of them, a deadline is ErrTimedOut, a
// cancelled call is context.Canceled but not ErrTimedOut, a refusal as
// malformed is ErrInvalid, and a closed connection is ErrPluginGone.
func TestRemoteErrorSentinels(t *testing.T) {
	req := sdk.ScheduleRequest{RequestID: "r1"}
	type want struct{ gone, timedOut, invalid, canceled bool }
	check := func(name string, err error, w want) {
		t.Helper()
		var re *sdk.RemoteError
		if !errors.As(err, &re) {
			t.Fatalf("%s: %T %v is not a RemoteError", name, err, err)
		}
		got := want{errors.Is(err, sdk.ErrPluginGone), errors.Is(err, sdk.ErrTimedOut), errors.Is(err, sdk.ErrInvalid), errors.Is(err, context.Canceled)}
		if got != w {
			t.Errorf("%s: %v: (gone, timed out, invalid, canceled) = %+v, want %+v", name, err, got, w)
		}
	}

	own, _ := dispense(t, blocking{err: errors.New("no weights at /w")})
	_, err := own.Schedule(context.Background(), req)
	check("the plugin's error", err, want{})
	if err.Error() != "no weights at /w" {
		t.Errorf("the plugin's error reads %q", err)
	}
	bad, _ := dispense(t, blocking{err: fmt.Errorf("%w: phase %q is unknown", sdk.ErrInvalid, "x")})
	_, err = bad.Schedule(context.Background(), req)
	check("a refusal", err, want{invalid: true})

	slow, client := dispense(t, blocking{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err = slow.Schedule(ctx, req)
	cancel()
	check("past the deadline", err, want{timedOut: true, canceled: errors.Is(err, context.Canceled)})
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err = slow.Schedule(ctx, req)
	check("cancelled", err, want{canceled: true})

	client.Close()
	_, err = slow.Schedule(context.Background(), req)
	check("after the connection closed", err, want{gone: true, canceled: errors.Is(err, context.Canceled)})
}

// TestTimedOutCodes: a RemoteError built by hand (as a test double would)
// follows the same rules as one from a call: the plugin's server resets a
// stream at the deadline it was sent as Canceled, which counts as timed out.
func TestTimedOutCodes(t *testing.T) {
	for _, tt := range []struct {
		err  *sdk.RemoteError
		want bool
	}{
		{&sdk.RemoteError{Code: 1 /* Canceled */, Msg: "stream terminated by RST_STREAM with error code: CANCEL"}, true},
		{&sdk.RemoteError{Code: 4 /* DeadlineExceeded */}, true},
		{&sdk.RemoteError{Code: 2 /* Unknown */, Msg: "loading: no weights"}, false},
	} {
		if got := errors.Is(tt.err, sdk.ErrTimedOut); got != tt.want {
			t.Errorf("%v (code %d): timed out = %v, want %v", tt.err, tt.err.Code, got, tt.want)
		}
	}
}
