package sdk

import (
	"fmt"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// RoomStatus is the status of one side of a room, the seed's DataPoll. Its
// numeric values equal the wire enum phasedv1.TransferStatus; the zero
// value is not a valid status.
type RoomStatus int32

// The statuses of a room, in their forward order (StatusFailed aside).
const (
	// StatusFailed is terminal and always carries a reason.
	StatusFailed RoomStatus = iota + 1
	// StatusBootstrapping: the room's sockets are being set up (sender:
	// bound, no descriptor yet).
	StatusBootstrapping
	// StatusWaitingForInput: the descriptor was sent (receiver) or
	// received and validated (sender); no byte has moved yet.
	StatusWaitingForInput
	// StatusTransferring: the sender's worker is copying.
	StatusTransferring
	// StatusSuccess is terminal: sender: every byte was written and the
	// Success frame queued; receiver: every tensor was verified.
	StatusSuccess
)

var statusNames = [...]string{"", "Failed", "Bootstrapping", "WaitingForInput", "Transferring", "Success"}

// String returns the status's name, e.g. "WaitingForInput".
func (s RoomStatus) String() string {
	if s.Valid() {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", int32(s))
}

// Valid reports whether s is one of the five statuses.
func (s RoomStatus) Valid() bool { return s >= StatusFailed && s <= StatusSuccess }

// Terminal reports whether s is StatusSuccess or StatusFailed: no
// transition leaves it.
func (s RoomStatus) Terminal() bool { return s == StatusSuccess || s == StatusFailed }

// CanTransitionTo reports whether a room in status s may move to next.
//
// The rules: a terminal status (Success, Failed) never changes; any other
// status may move to Failed; otherwise the only legal move is one step
// forward, Bootstrapping -> WaitingForInput -> Transferring -> Success.
// Skipping a step is refused: frames on one connection arrive in order, so
// a skipped step means a lost or forged frame. Staying in place is refused
// too, which makes a duplicate frame visible.
func (s RoomStatus) CanTransitionTo(next RoomStatus) bool {
	if !s.Valid() || !next.Valid() || s.Terminal() {
		return false
	}
	return next == StatusFailed || next == s+1
}

// Proto returns the wire value of s (TRANSFER_STATUS_UNSPECIFIED for an
// invalid status).
func (s RoomStatus) Proto() phasedv1.TransferStatus {
	if !s.Valid() {
		return phasedv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED
	}
	return phasedv1.TransferStatus(s)
}

// RoomStatusFromProto returns the status of a wire value; an unspecified
// or unknown value gives the invalid zero RoomStatus (check Valid).
func RoomStatusFromProto(p phasedv1.TransferStatus) RoomStatus {
	s := RoomStatus(p)
	if !s.Valid() {
		return 0
	}
	return s
}

// Role is the side of a room an instance holds.
type Role int32

// The two sides of a room.
const (
	// RoleSender writes its outputs into the receiver's buffers.
	RoleSender Role = iota + 1
	// RoleReceiver registers buffers and waits for its inputs.
	RoleReceiver
)

// String returns "sender" or "receiver".
func (r Role) String() string {
	switch r {
	case RoleSender:
		return "sender"
	case RoleReceiver:
		return "receiver"
	}
	return fmt.Sprintf("Role(%d)", int32(r))
}

// RoomInfo is a snapshot of one open room side.
type RoomInfo struct {
	Room   uint64
	Role   Role
	Status RoomStatus
	Reason string // set when Status is StatusFailed
}

// Backend is how a room's bytes travel from sender to receiver. The names
// are the config's (backend = "shm") and the wire's (OpenRoomRequest and
// Descriptor backend fields).
type Backend string

// The backends a room may use.
const (
	// BackendShm: the receiver's buffers are in a shared-memory segment
	// that the sender maps and copies into (one host).
	BackendShm Backend = "shm"
	// BackendZMQ: the sender streams the bytes over the room's sockets
	// (tcp), and the receiver's socket owner receives them straight into
	// its buffer (across hosts).
	BackendZMQ Backend = "zmq"
	// BackendCUDA: the receiver's buffers are device memory that the
	// sender opens through a CUDA IPC handle and copies into on a stream,
	// from host or device tensors (one host; a build with -tags cuda).
	// Specs and lengths are checked, the bytes are not checksummed (that
	// would take them back to the host).
	BackendCUDA Backend = "cuda"
)

// Backends lists every backend, the default first.
var Backends = []Backend{BackendShm, BackendZMQ, BackendCUDA}

// ParseBackend returns the backend named s; "" is BackendShm.
func ParseBackend(s string) (Backend, error) {
	if s == "" {
		return BackendShm, nil
	}
	for _, b := range Backends {
		if string(b) == s {
			return b, nil
		}
	}
	return "", fmt.Errorf("unknown transfer backend %q (known: shm, zmq, cuda)", s)
}

var (
	_ fmt.Stringer = RoomStatus(0)
	_ fmt.Stringer = Role(0)
)
