package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// RemoteError is an error returned by a plugin, carried over gRPC. Its
// message is the plugin's error text without gRPC decoration; a cancelled
// or timed-out call is also context.Canceled or context.DeadlineExceeded
// for errors.Is.
type RemoteError struct {
	Code codes.Code
	Msg  string
}

func (e *RemoteError) Error() string { return e.Msg }

// Is makes a cancelled call match context.Canceled and a timed-out one
// context.DeadlineExceeded, keeping the plugin's message.
func (e *RemoteError) Is(target error) bool {
	return (e.Code == codes.Canceled && target == context.Canceled) ||
		(e.Code == codes.DeadlineExceeded && target == context.DeadlineExceeded)
}

// rpcError turns a gRPC error into a RemoteError.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &RemoteError{Code: st.Code(), Msg: st.Message()}
}

// statusError turns a plugin-side error into a gRPC status.
func statusError(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

// ErrInvalid is wrapped by errors about a malformed call to a plugin.
var ErrInvalid = errors.New("invalid argument")

func infoToProto(i Info) *phasedv1.InfoResponse {
	r := &phasedv1.InfoResponse{Name: i.Name, Kind: string(i.Kind), Version: i.Version}
	for _, v := range i.APIVersions {
		r.ApiVersions = append(r.ApiVersions, uint32(v))
	}
	return r
}

func infoFromProto(r *phasedv1.InfoResponse) Info {
	i := Info{Name: r.GetName(), Kind: Kind(r.GetKind()), Version: r.GetVersion()}
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
