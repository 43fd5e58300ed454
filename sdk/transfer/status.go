package transfer

import (
	"fmt"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

// Status is the status of one room, the seed's DataPoll. Its numeric values
// equal the wire enum phasedv1.TransferStatus; the zero value is not a
// valid status.
type Status int32

// The statuses of a room, in their forward order (Failed aside).
const (
	// Failed is terminal and always carries a reason.
	Failed Status = iota + 1
	// Bootstrapping: the room's sockets are being set up (sender: bound,
	// no descriptor yet).
	Bootstrapping
	// WaitingForInput: the descriptor was sent (receiver) or received and
	// validated (sender); no byte has moved yet.
	WaitingForInput
	// Transferring: the sender's worker is copying.
	Transferring
	// Success is terminal: sender: every byte was written and the Success
	// frame queued; receiver: every tensor was verified.
	Success
)

var statusNames = [...]string{"", "Failed", "Bootstrapping", "WaitingForInput", "Transferring", "Success"}

// String returns the status's name, e.g. "WaitingForInput".
func (s Status) String() string {
	if s.Valid() {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", int32(s))
}

// Valid reports whether s is one of the five statuses.
func (s Status) Valid() bool { return s >= Failed && s <= Success }

// Terminal reports whether s is Success or Failed: no transition leaves it.
func (s Status) Terminal() bool { return s == Success || s == Failed }

// CanTransitionTo reports whether a room in status s may move to next.
//
// The rules: a terminal status (Success, Failed) never changes; any other
// status may move to Failed; otherwise the only legal move is one step
// forward, Bootstrapping -> WaitingForInput -> Transferring -> Success.
// Skipping a step is refused: frames on one connection arrive in order, so
// a skipped step means a lost or forged frame. Staying in place is refused
// too, which makes a duplicate frame visible.
func (s Status) CanTransitionTo(next Status) bool {
	if !s.Valid() || !next.Valid() || s.Terminal() {
		return false
	}
	return next == Failed || next == s+1
}

// Proto returns the wire value of s (TRANSFER_STATUS_UNSPECIFIED for an
// invalid status).
func (s Status) Proto() phasedv1.TransferStatus {
	if !s.Valid() {
		return phasedv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED
	}
	return phasedv1.TransferStatus(s)
}

// StatusFromProto returns the status of a wire value; an unspecified or
// unknown value gives the invalid zero Status (check Valid).
func StatusFromProto(p phasedv1.TransferStatus) Status {
	s := Status(p)
	if !s.Valid() {
		return 0
	}
	return s
}

// Role is the side of a room a Manager holds.
type Role int32

// The two sides of a room.
const (
	// Sender writes its outputs into the receiver's buffers.
	Sender Role = iota + 1
	// Receiver registers buffers and waits for its inputs.
	Receiver
)

// String returns "sender" or "receiver".
func (r Role) String() string {
	switch r {
	case Sender:
		return "sender"
	case Receiver:
		return "receiver"
	}
	return fmt.Sprintf("Role(%d)", int32(r))
}

// RoomInfo is a snapshot of one open room.
type RoomInfo struct {
	Room   uint64
	Role   Role
	Status Status
	Reason string // set when Status is Failed
}

var _ fmt.Stringer = Status(0)
var _ fmt.Stringer = Role(0)
