package sdk

import (
	"testing"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

func TestStatusTransitions(t *testing.T) {
	all := []RoomStatus{0, StatusFailed, StatusBootstrapping, StatusWaitingForInput, StatusTransferring, StatusSuccess, 6}
	legal := map[RoomStatus][]RoomStatus{
		StatusBootstrapping:   {StatusWaitingForInput, StatusFailed},
		StatusWaitingForInput: {StatusTransferring, StatusFailed},
		StatusTransferring:    {StatusSuccess, StatusFailed},
		// StatusFailed, StatusSuccess: terminal. 0 and 6: not statuses.
	}
	for _, from := range all {
		for _, to := range all {
			want := false
			for _, l := range legal[from] {
				want = want || l == to
			}
			if got := from.CanTransitionTo(to); got != want {
				t.Errorf("%s -> %s: CanTransitionTo = %v, want %v", from, to, got, want)
			}
		}
	}
}

func TestStatusNamesAndWire(t *testing.T) {
	tests := []struct {
		s        RoomStatus
		name     string
		wire     phasedv1.TransferStatus
		terminal bool
	}{
		{StatusFailed, "Failed", phasedv1.TransferStatus_TRANSFER_STATUS_FAILED, true},
		{StatusBootstrapping, "Bootstrapping", phasedv1.TransferStatus_TRANSFER_STATUS_BOOTSTRAPPING, false},
		{StatusWaitingForInput, "WaitingForInput", phasedv1.TransferStatus_TRANSFER_STATUS_WAITING_FOR_INPUT, false},
		{StatusTransferring, "Transferring", phasedv1.TransferStatus_TRANSFER_STATUS_TRANSFERRING, false},
		{StatusSuccess, "Success", phasedv1.TransferStatus_TRANSFER_STATUS_SUCCESS, true},
		{0, "Status(0)", phasedv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED, false},
		{9, "Status(9)", phasedv1.TransferStatus_TRANSFER_STATUS_UNSPECIFIED, false},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.name {
			t.Errorf("String() = %q, want %q", got, tt.name)
		}
		if got := tt.s.Proto(); got != tt.wire {
			t.Errorf("%s.Proto() = %v, want %v", tt.s, got, tt.wire)
		}
		if got := tt.s.Terminal(); got != tt.terminal {
			t.Errorf("%s.Terminal() = %v", tt.s, got)
		}
		if tt.s.Valid() {
			if got := RoomStatusFromProto(tt.wire); got != tt.s {
				t.Errorf("RoomStatusFromProto(%v) = %s, want %s", tt.wire, got, tt.s)
			}
		}
	}
	for _, p := range []phasedv1.TransferStatus{0, 6, -1} {
		if got := RoomStatusFromProto(p); got.Valid() {
			t.Errorf("RoomStatusFromProto(%d) = %s, want an invalid status", p, got)
		}
	}
	for r, want := range map[Role]string{RoleSender: "sender", RoleReceiver: "receiver", 0: "Role(0)"} {
		if got := r.String(); got != want {
			t.Errorf("Role(%d).String() = %q, want %q", int32(r), got, want)
		}
	}
}
