package sdk

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// InstanceMetadata is the gRPC metadata key that names the instance a
// Phase call is for, where one server serves the Phase service of several
// instances: `supervisor agent` on another host, which passes each call
// to the process of the instance it names.
const InstanceMetadata = "phased-instance"

// RemotePhaseControl returns a PhaseControl whose calls go over conn to
// the Phase service of the named instance (InstanceMetadata). It has no
// exit notification: the agent that runs the instance reports its exit.
func RemotePhaseControl(conn *grpc.ClientConn, instance string) PhaseControl {
	return &phaseClient{caller{conn}, phasedv1.NewPhaseClient(instanceConn{conn, instance})}
}

// RegisterPhaseService registers ctl as the Phase service of s. Its calls
// carry the instance they are for, if the caller named one: see
// InstanceOf.
func RegisterPhaseService(s *grpc.Server, ctl PhaseControl) {
	phasedv1.RegisterPhaseServer(s, &phaseServer{impl: ctl})
}

// InstanceOf returns the instance a Phase call served through
// RegisterPhaseService names (InstanceMetadata); "" when it names none or
// several.
func InstanceOf(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(InstanceMetadata); len(v) == 1 {
		return v[0]
	}
	return ""
}

// instanceConn is a connection whose calls name an instance.
type instanceConn struct {
	cc       *grpc.ClientConn
	instance string
}

func (c instanceConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(metadata.AppendToOutgoingContext(ctx, InstanceMetadata, c.instance), method, args, reply, opts...)
}

func (c instanceConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(metadata.AppendToOutgoingContext(ctx, InstanceMetadata, c.instance), desc, method, opts...)
}
