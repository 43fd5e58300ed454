// Package unixrpc carries the unary calls and server streams of the plugin
// services (Phase, Policy) over a private unix socket between the supervisor and one plugin
// process, as a faster path beside go-plugin's gRPC connection: the same
// protobuf messages, the same methods and status codes, without HTTP/2, TLS
// or gRPC's per-call goroutines. A call costs about a sixth of a gRPC call's
// CPU on one host (docs/benchmarks.md, issue 14, ninth step).
//
// The supervisor makes a socket pair per plugin process (Pair); the process
// inherits its end as a file descriptor named by Env. A plugin that serves
// the channel (Serve) writes a hello frame on it before it speaks go-plugin's
// handshake; the supervisor looks for that frame once the handshake is done
// (Dial), and routes the plugin's calls over the channel only if it is
// there. A plugin that does not (a Python phase, an older Go plugin) is
// called over gRPC as before. go-plugin's own services stay on gRPC.
//
// The socket pair is made by the supervisor and inherited by this one child
// only: no other process can connect to it, which is what go-plugin's
// AutoMTLS gives the gRPC socket. docs/protocol.md, section 1.7, is the
// wire format.
package unixrpc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
)

// Env names the variable that gives a plugin process the descriptor number
// of its end of the channel.
const Env = "PHASED_CONTROL_FD"

// Hello is the payload of the first frame a plugin writes: the protocol and
// its version.
const Hello = "phased-unixrpc/1"

// hello is the frame a plugin writes first, which Dial looks for.
func hello() *frame { return &frame{kind: kindHello, payload: []byte(Hello)} }

// MaxFrame is the largest frame body either side accepts (gRPC's default
// largest message is the same): a larger length is a protocol error, which
// closes the channel.
const MaxFrame = 4 << 20

// The kinds of frame.
const (
	kindHello  byte = 0 // plugin → supervisor, first: the payload is Hello
	kindCall   byte = 1 // supervisor → plugin: a call
	kindReply  byte = 2 // plugin → supervisor: the end of a call
	kindCancel byte = 3 // supervisor → plugin: the caller gave up on a call
	kindStream byte = 4 // plugin → supervisor: one message of a call's stream
)

// frame is one message on the channel. On the wire: the length of the rest
// (uint32, little-endian), the kind (1 byte), the call id (uint64,
// little-endian), then by kind — call: the method's length (uint16) and
// name ("/phased.v1.Phase/Run"), the time the caller gives the call in
// nanoseconds (int64, 0 for no limit), the request; reply: the status code
// (uint32), the status message's length (uint32) and text, the response
// (empty unless the code is OK); stream: one message of the call's
// stream; hello: the text Hello; cancel: nothing.
type frame struct {
	kind    byte
	id      uint64
	method  string
	timeout time.Duration
	code    codes.Code
	msg     string
	payload []byte
}

// headerLen is the length word, the kind and the id.
const headerLen = 4 + 1 + 8

// marshal returns the frame as it goes on the wire.
func (f *frame) marshal() []byte {
	n := headerLen + len(f.payload)
	switch f.kind {
	case kindCall:
		n += 2 + len(f.method) + 8
	case kindReply:
		n += 4 + 4 + len(f.msg)
	}
	b := make([]byte, 0, n)
	b = binary.LittleEndian.AppendUint32(b, uint32(n-4))
	b = append(b, f.kind)
	b = binary.LittleEndian.AppendUint64(b, f.id)
	switch f.kind {
	case kindCall:
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f.method)))
		b = append(b, f.method...)
		b = binary.LittleEndian.AppendUint64(b, uint64(f.timeout))
	case kindReply:
		b = binary.LittleEndian.AppendUint32(b, uint32(f.code))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f.msg)))
		b = append(b, f.msg...)
	}
	return append(b, f.payload...)
}

// errFrame is wrapped by every error about a malformed frame.
var errFrame = errors.New("malformed frame")

// readFrame reads one frame. io.EOF means the peer closed the channel
// between frames.
func readFrame(r *bufio.Reader) (frame, error) {
	var lenb [4]byte
	if _, err := io.ReadFull(r, lenb[:]); err != nil {
		return frame{}, err
	}
	n := binary.LittleEndian.Uint32(lenb[:])
	if n < headerLen-4 || n > MaxFrame {
		return frame{}, fmt.Errorf("%w: a frame of %d bytes (between %d and %d)", errFrame, n, headerLen-4, MaxFrame)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return frame{}, fmt.Errorf("%w: cut short: %w", errFrame, noEOF(err))
	}
	return parseFrame(body)
}

// noEOF turns io.EOF inside a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// parseFrame decodes a frame's body (the bytes after its length word).
func parseFrame(b []byte) (frame, error) {
	if len(b) < headerLen-4 {
		return frame{}, fmt.Errorf("%w: %d bytes, shorter than a header", errFrame, len(b))
	}
	f := frame{kind: b[0], id: binary.LittleEndian.Uint64(b[1:9])}
	rest := b[9:]
	short := func(what string) error {
		return fmt.Errorf("%w: kind %d, call %d: no room for its %s", errFrame, f.kind, f.id, what)
	}
	switch f.kind {
	case kindHello, kindCancel, kindStream:
	case kindCall:
		if len(rest) < 2 {
			return frame{}, short("method's length")
		}
		m := int(binary.LittleEndian.Uint16(rest))
		rest = rest[2:]
		if len(rest) < m+8 {
			return frame{}, short("method and time limit")
		}
		f.method, f.timeout = string(rest[:m]), time.Duration(binary.LittleEndian.Uint64(rest[m:]))
		if f.timeout < 0 {
			return frame{}, fmt.Errorf("%w: call %d: a negative time limit %d", errFrame, f.id, f.timeout)
		}
		rest = rest[m+8:]
	case kindReply:
		if len(rest) < 8 {
			return frame{}, short("status")
		}
		f.code = codes.Code(binary.LittleEndian.Uint32(rest))
		m := binary.LittleEndian.Uint32(rest[4:])
		rest = rest[8:]
		if uint64(len(rest)) < uint64(m) {
			return frame{}, short("status message")
		}
		f.msg, rest = string(rest[:m]), rest[m:]
	default:
		return frame{}, fmt.Errorf("%w: unknown kind %d", errFrame, f.kind)
	}
	if len(rest) > 0 {
		f.payload = rest
	}
	return f, nil
}
