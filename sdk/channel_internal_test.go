package sdk

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"

	"github.com/phased/phased/sdk/internal/unixrpc"
	"github.com/phased/phased/sdk/proto/phasedv1"
)

// channelPhase answers OpenRoom with an endpoint made of the room, and
// refuses room 0; nothing else of PhaseControl is called.
type channelPhase struct{ PhaseControl }

func (channelPhase) OpenRoom(_ context.Context, spec RoomSpec) (string, error) {
	if spec.Room == 0 {
		return "", errors.Join(ErrInvalid, errors.New("room 0"))
	}
	return "ipc:///run/" + spec.Role.String() + "-" + spec.Request.Prompt, nil
}

type channelPolicy struct{ Policy }

func (channelPolicy) Schedule(_ context.Context, req ScheduleRequest) (Decision, error) {
	return Decision{Choices: map[string]string{"encoder": req.RequestID}}, nil
}

// serveOn serves register's service on the plugin's end of a new pair
// (nothing, not even the hello, when register is nil) and returns what
// hands the supervisor's end to UseControlChannel.
func serveOn(t *testing.T, register func(*unixrpc.Server)) (use func(raw any) (bool, error)) {
	t.Helper()
	h, p, err := ControlChannelPair()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.FileConn(p)
	p.Close()
	if err != nil {
		t.Fatal(err)
	}
	srv := unixrpc.NewServer(conn, hclog.NewNullLogger())
	if register != nil {
		register(srv)
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if register != nil {
			srv.Close()
		} else {
			conn.Close()
		}
	})
	return func(raw any) (bool, error) {
		ch, err := UseControlChannel(raw, h)
		if ch != nil {
			t.Cleanup(func() { ch.Close() })
		}
		return ch != nil, err
	}
}

// The calls of a client given a channel go over it: these clients
// have no gRPC connection at all.
func TestUseControlChannel(t *testing.T) {
	ctx := context.Background()
	use := serveOn(t, func(s *unixrpc.Server) { phasedv1.RegisterPhaseServer(s, &phaseServer{impl: channelPhase{}}) })
	phase := &phaseConn{phaseClient: &phaseClient{}}
	if ok, err := use(phase); !ok || err != nil {
		t.Fatalf("UseControlChannel: %v, %v", ok, err)
	}
	ep, err := phase.OpenRoom(ctx, RoomSpec{Room: 3, Role: RoleSender, Request: Request{Prompt: "fox"}})
	if err != nil || ep != "ipc:///run/sender-fox" {
		t.Fatalf("OpenRoom: %q, %v", ep, err)
	}
	_, err = phase.OpenRoom(ctx, RoomSpec{Room: 0, Role: RoleSender})
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != codes.InvalidArgument || !strings.Contains(re.Msg, "room 0") {
		t.Fatalf("OpenRoom of room 0: %v", err)
	}

	use = serveOn(t, func(s *unixrpc.Server) { phasedv1.RegisterPolicyServer(s, &policyServer{impl: channelPolicy{}}) })
	policy := &policyConn{policyClient: &policyClient{}}
	if ok, err := use(policy); !ok || err != nil {
		t.Fatalf("UseControlChannel: %v, %v", ok, err)
	}
	d, err := policy.Schedule(ctx, ScheduleRequest{RequestID: "r7"})
	if err != nil || d.Choices["encoder"] != "r7" {
		t.Fatalf("Schedule: %v, %v", d, err)
	}
}

// A plugin that wrote no hello (a Python phase, an older plugin) keeps its
// calls on gRPC; what is not a phased client is an error.
func TestUseControlChannelNone(t *testing.T) {
	use := serveOn(t, nil)
	phase := &phaseConn{phaseClient: &phaseClient{}}
	if ok, err := use(phase); ok || err != nil || phase.c != nil {
		t.Fatalf("UseControlChannel with no hello: %v, %v, client %v", ok, err, phase.c)
	}
	use = serveOn(t, nil)
	if ok, err := use("a string"); ok || err == nil || !strings.Contains(err.Error(), "string is not a phased plugin client") {
		t.Fatalf("UseControlChannel of a string: %v, %v", ok, err)
	}
}
