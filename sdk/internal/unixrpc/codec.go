package unixrpc

import (
	"net"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// wire is one end of the channel: each frame is written whole, one at a
// time.
type wire struct {
	conn net.Conn
	wmu  sync.Mutex
}

func (w *wire) write(f *frame) error {
	b := f.marshal()
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_, err := w.conn.Write(b)
	return err
}

// The largest message a frame carries: a call's request beside a method
// name of up to 64 KiB; a reply's response or a stream's message beside
// its status.
const (
	maxRequest = MaxFrame - 0x10100
	maxReply   = MaxFrame - 256
)

// encode marshals m, the what ("request", "response", "message") of
// method, refusing one over limit bytes. Its errors are status errors.
func encode(method, what string, m any, limit int) ([]byte, error) {
	msg, ok := m.(proto.Message)
	if !ok {
		return nil, status.Errorf(codes.Internal, "%s: %T is not a protobuf message", method, m)
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%s: encode the %s: %v", method, what, err)
	}
	if len(b) > limit {
		return nil, status.Errorf(codes.ResourceExhausted, "%s: a %s of %d bytes is over the control channel's limit of %d", method, what, len(b), limit)
	}
	return b, nil
}

// decode unmarshals b, the what of method, into m. Its errors are status
// errors.
func decode(method, what string, b []byte, m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "%s: %T is not a protobuf message", method, m)
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		return status.Errorf(codes.Internal, "%s: decode the %s: %v", method, what, err)
	}
	return nil
}
