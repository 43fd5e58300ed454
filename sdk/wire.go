package sdk

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// RemoteError is an error returned by a plugin, carried over gRPC. Its
// message is the plugin's error text without gRPC decoration.
type RemoteError struct {
	Code codes.Code
	Msg  string
}

func (e *RemoteError) Error() string { return e.Msg }

// rpcError turns a gRPC error into a RemoteError, or into the context's
// error when the call was cancelled by the caller.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Canceled:
		return context.Canceled
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
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
