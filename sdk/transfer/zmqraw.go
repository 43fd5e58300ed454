package transfer

/*
#cgo !windows pkg-config: libzmq
#include <zmq.h>
#include <stdlib.h>

#include <errno.h>

// Both retry EINTR, as zmq4 does: a signal (SIGPROF, SIGURG for Go's
// preemption) can interrupt libzmq's internal poll.
static int phased_recv_into(void *s, void *buf, size_t len, int flags, int *err) {
	int n;
	do {
		n = zmq_recv(s, buf, len, flags);
	} while (n < 0 && zmq_errno() == EINTR);
	if (n < 0) *err = zmq_errno();
	return n;
}

static int phased_send_from(void *s, const void *buf, size_t len, int flags, int *err) {
	int n;
	do {
		n = zmq_send(s, buf, len, flags);
	} while (n < 0 && zmq_errno() == EINTR);
	if (n < 0) *err = zmq_errno();
	return n;
}

static int phased_socket_type(void *s, int *typ) {
	size_t n = sizeof(int);
	return zmq_getsockopt(s, ZMQ_TYPE, typ, &n);
}
*/
import "C"

import (
	"fmt"
	"syscall"
	"unsafe"

	zmq "github.com/pebbe/zmq4"
)

// pebbe/zmq4 receives every message into a new Go slice. The zmq backend
// receives tensor bytes straight into the registered buffer instead, with
// zmq_recv on the socket's libzmq handle; these helpers are the only place
// that reaches under zmq4.

// protocolErrorMechanismMismatch is the value of a handshake's
// ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL when the two ends of a connection
// use different security mechanisms (CURVE and NULL).
const protocolErrorMechanismMismatch = C.ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH

// rawHandle returns the libzmq socket handle of s: the first field of
// zmq4's Socket (v1.4.0). checkRaw proves it on each socket of a zmq room
// before the room uses it (bind and connect call it).
func rawHandle(s *zmq.Socket) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(s))
}

// checkRaw verifies that rawHandle(s) is the libzmq socket behind s, by
// asking libzmq for its type.
func checkRaw(s *zmq.Socket) error {
	want, err := s.GetType()
	if err != nil {
		return err
	}
	var typ C.int
	if C.phased_socket_type(rawHandle(s), &typ) != 0 || zmq.Type(typ) != want {
		return fmt.Errorf("transfer: the libzmq handle of a %v socket is not where zmq4 v1.4.0 keeps it", want)
	}
	return nil
}

// recvInto receives one message part into buf and returns its size, which
// is larger than len(buf) when the message was truncated.
func recvInto(s *zmq.Socket, buf []byte, flags zmq.Flag) (int, error) {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	var errno C.int
	n := C.phased_recv_into(rawHandle(s), p, C.size_t(len(buf)), C.int(flags), &errno)
	if n < 0 {
		return 0, zmq.Errno(syscall.Errno(errno))
	}
	return int(n), nil
}

// sendFrom sends buf as one message part; libzmq copies it before
// returning.
func sendFrom(s *zmq.Socket, buf []byte, flags zmq.Flag) error {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	var errno C.int
	if C.phased_send_from(rawHandle(s), p, C.size_t(len(buf)), C.int(flags), &errno) < 0 {
		return zmq.Errno(syscall.Errno(errno))
	}
	return nil
}
