package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// RemoteError is an error returned by a call to a plugin, carried over
// gRPC. Its message is the plugin's error text without gRPC decoration.
// Branch on it with errors.Is, never on its text or code:
//
//   - ErrPluginGone: the plugin process or the connection to it went away;
//   - ErrTimedOut: the call hit its deadline, here or in the plugin's
//     server (which gives up at the deadline it was sent, a moment before
//     this side does);
//   - ErrInvalid: the plugin refused the call as malformed;
//   - context.Canceled and context.DeadlineExceeded, as the call ended.
type RemoteError struct {
	Code codes.Code // the gRPC status code, for logs
	Msg  string
	// gone: the connection was shut down or unavailable when the call
	// failed; cancelled: the caller cancelled the call's context.
	gone, cancelled bool
}

// Errors a call to a plugin may wrap; see RemoteError.
var (
	ErrPluginGone = errors.New("the plugin process is gone")
	ErrTimedOut   = errors.New("the plugin did not answer in time")
)

func (e *RemoteError) Error() string { return e.Msg }

// Is matches the sentinels of RemoteError's comment.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case ErrPluginGone:
		return e.gone
	case ErrTimedOut:
		return !e.gone && !e.cancelled && (e.Code == codes.DeadlineExceeded || e.Code == codes.Canceled)
	case ErrInvalid:
		return e.Code == codes.InvalidArgument
	case ErrNoCredit:
		return e.Code == codes.ResourceExhausted
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	return false
}

// caller is what the client sides of the services share: the connection,
// which tells a plugin that went away from one that answered.
type caller struct{ conn *grpc.ClientConn }

// rpcError turns the error of a call made with ctx into a RemoteError.
func (c caller) rpcError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &RemoteError{
		Code: st.Code(),
		Msg:  st.Message(),
		// A closed connection fails calls with Canceled ("client
		// connection is closing"); its state says why.
		gone:      st.Code() == codes.Unavailable || c.conn != nil && c.conn.GetState() == connectivity.Shutdown,
		cancelled: errors.Is(ctx.Err(), context.Canceled),
	}
}

// statusError turns a plugin-side error into a gRPC status.
func statusError(err error) error {
	switch {
	case errors.Is(err, ErrPluginGone):
		// Only a server that passes calls on to another process (an
		// agent, for an instance on its host) meets it: that process
		// is gone, which its caller must learn as such.
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrNoProgress):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrNoCredit):
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

// ErrInvalid is wrapped by errors about a malformed call to a plugin.
var ErrInvalid = errors.New("invalid argument")

// ErrNoCredit is wrapped by the error of an OpenRoom as receiver that
// would pass the instance's credits (InstanceConfig.MaxRooms,
// MaxInputBytes): the request is to be placed elsewhere or later, not
// failed (docs/protocol.md 2.4).
var ErrNoCredit = errors.New("no credit")

func infoToProto(i Info) *phasedv1.InfoResponse {
	r := &phasedv1.InfoResponse{Name: i.Name, Kind: string(i.Kind), Version: i.Version, Features: i.Features}
	for _, v := range i.APIVersions {
		r.ApiVersions = append(r.ApiVersions, uint32(v))
	}
	return r
}

func infoFromProto(r *phasedv1.InfoResponse) Info {
	i := Info{Name: r.GetName(), Kind: Kind(r.GetKind()), Version: r.GetVersion(), Features: r.GetFeatures()}
	for _, v := range r.GetApiVersions() {
		i.APIVersions = append(i.APIVersions, int(v))
	}
	return i
}

// Speaks reports whether info lists API version v.
func (i Info) Speaks(v int) bool {
	for _, x := range i.APIVersions {
		if x == v {
			return true
		}
	}
	return false
}
