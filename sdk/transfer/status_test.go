package transfer

import (
	"testing"

	"github.com/phased/phased/sdk/proto/phasedv1"
)

func TestStatusTransitions(t *testing.T) {
	all := []Status{0, Failed, Bootstrapping, WaitingForInput, Transferring, Success, 6}
	legal := map[Status][]Status{
		Bootstrapping:   {WaitingForInput, Failed},
		WaitingForInput: {Transferring, Failed},
		Transferring:    {Success, Failed},
		// Failed, Success: terminal. 0 and 6: not statuses.
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
		s        Status
		name     string
		wire     phasedv1.TransferStatus
		terminal bool
	}{
		{Failed, "Failed", phasedv1.TransferStatus_TRANSFER_STATUS_FAILED, true},
		{Bootstrapping, "Bootstrapping", phasedv1.TransferStatus_TRANSFER_STATUS_BOOTSTRAPPING, false},
		{WaitingForInput, "WaitingForInput", phasedv1.TransferStatus_TRANSFER_STATUS_WAITING_FOR_INPUT, false},
		{Transferring, "Transferring", phasedv1.TransferStatus_TRANSFER_STATUS_TRANSFERRING, false},
		{Success, "Success", phasedv1.TransferStatus_TRANSFER_STATUS_SUCCESS, true},
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
			if got := StatusFromProto(tt.wire); got != tt.s {
				t.Errorf("StatusFromProto(%v) = %s, want %s", tt.wire, got, tt.s)
			}
		}
	}
	for _, p := range []phasedv1.TransferStatus{0, 6, -1} {
		if got := StatusFromProto(p); got.Valid() {
			t.Errorf("StatusFromProto(%d) = %s, want an invalid status", p, got)
		}
	}
	for r, want := range map[Role]string{Sender: "sender", Receiver: "receiver", 0: "Role(0)"} {
		if got := r.String(); got != want {
			t.Errorf("Role(%d).String() = %q, want %q", int32(r), got, want)
		}
	}
}
