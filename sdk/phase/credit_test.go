package phase

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
)

// TestCredits: an instance refuses a receiver room past max_rooms or
// max_input_bytes with ErrNoCredit saying which, changing nothing; a
// removed room gives its credit back; a standby side takes none; Status
// advertises what is left.
func TestCredits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range []struct {
		cfg  sdk.InstanceConfig
		want string
	}{
		{sdk.InstanceConfig{Instance: "c-0", MaxRooms: 2}, "no credit: 2 receiver rooms open, max_rooms 2"},
		{sdk.InstanceConfig{Instance: "c-1", MaxInputBytes: 250}, "no credit: inputs of 100 bytes with 200 of 250 in use, max_input_bytes 250"},
	} {
		r, peer := withPeerConfig(t, sink{}, c.cfg)
		open := func(room uint64) error {
			ep, err := peer.OpenSender(room)
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.OpenRoom(ctx, sdk.RoomSpec{Room: room, Role: sdk.RoleReceiver, PeerEndpoint: ep, Request: sdk.Request{ID: "c"}})
			return err
		}
		for room := uint64(1); room <= 2; room++ {
			if err := open(room); err != nil {
				t.Fatal(err)
			}
		}
		err := open(3)
		if !errors.Is(err, sdk.ErrNoCredit) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: the third room: %v, want ErrNoCredit saying %q", c.cfg.Instance, err, c.want)
		}
		if n := len(r.mgr.Rooms()); n != 2 {
			t.Fatalf("%s: the refusal left %d rooms, want the 2 open", c.cfg.Instance, n)
		}
		st, _ := r.Status(ctx)
		rooms, bytes := gauge(st, "credit_rooms"), gauge(st, "credit_bytes")
		if (c.cfg.MaxRooms > 0) != (rooms == 0) || (c.cfg.MaxInputBytes > 0) != (bytes == 50) {
			t.Fatalf("%s: credits advertised: rooms %v, bytes %v", c.cfg.Instance, rooms, bytes)
		}
		// Opening a room held again fails and keeps its credit.
		if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 2, Role: sdk.RoleReceiver, PeerEndpoint: "ipc:///nonexistent", Request: sdk.Request{ID: "c"}}); err == nil {
			t.Fatalf("%s: room 2 opened twice", c.cfg.Instance)
		}
		if st, _ := r.Status(ctx); gauge(st, "credit_rooms") != rooms || gauge(st, "credit_bytes") != bytes {
			t.Fatalf("%s: a second open of room 2 changed the credits", c.cfg.Instance)
		}
		// A standby side has no buffers: it takes no credit.
		ep, _ := peer.OpenSender(9)
		if _, err := r.OpenRoom(ctx, sdk.RoomSpec{Room: 9, Role: sdk.RoleReceiver, PeerEndpoint: ep, Standby: true}); err != nil {
			t.Fatalf("%s: a standby side: %v", c.cfg.Instance, err)
		}
		if err := r.RemoveRoom(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if err := peer.Remove(3); err != nil {
			t.Fatal(err)
		}
		if err := open(4); err != nil {
			t.Fatalf("%s: after a room was removed: %v", c.cfg.Instance, err)
		}
	}
}

// TestCreditNeverFits: inputs over max_input_bytes on their own are an
// invalid request, not a want of credit: waiting would not help.
func TestCreditNeverFits(t *testing.T) {
	r, peer := withPeerConfig(t, sink{}, sdk.InstanceConfig{Instance: "c-2", MaxInputBytes: 50})
	ep, err := peer.OpenSender(1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.OpenRoom(context.Background(), sdk.RoomSpec{Room: 1, Role: sdk.RoleReceiver, PeerEndpoint: ep, Request: sdk.Request{ID: "c"}})
	if !errors.Is(err, sdk.ErrInvalid) || errors.Is(err, sdk.ErrNoCredit) || !strings.Contains(err.Error(), "inputs of 100 bytes are more than max_input_bytes 50 on their own") {
		t.Fatalf("inputs over max_input_bytes: %v", err)
	}
}

// gauge is the value of the metric named name in st, -2 if absent.
func gauge(st sdk.InstanceStatus, name string) float64 {
	for _, m := range st.Metrics {
		if m.Name == name {
			return m.Value
		}
	}
	return -2
}
