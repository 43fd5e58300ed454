package supervisor

import (
	"errors"
	"strings"
	"testing"
)

// TestRetryBudget: stops from outside are free up to maxLostAttempts;
// crashes, hangs and OOM kills spend retries; crashes of poison distinct
// instances fail the request as poison, a crash of the same instance
// again does not count twice; and each end says why.
func TestRetryBudget(t *testing.T) {
	killed := &InstanceError{Instance: "transformer-0", PID: 1, Status: "signal: killed"}
	for _, tc := range []struct {
		e        InstanceError
		external bool
	}{
		{InstanceError{Status: "signal: killed"}, true},
		{InstanceError{Status: "signal: terminated"}, true},
		{InstanceError{Status: "signal: killed", OOM: true}, false},
		{InstanceError{Status: "signal: killed", Hung: "no progress for 1m0s"}, false},
		{InstanceError{Status: "exit status 2"}, false},
		{InstanceError{Status: "signal: segmentation fault"}, false},
		{InstanceError{Status: "signal: aborted"}, false},
	} {
		if got := tc.e.External(); got != tc.external {
			t.Errorf("%+v: External %v, want %v", tc.e, got, tc.external)
		}
	}

	b := retryBudget{retries: 2, poison: 2}
	n := 0
	spend := func(ie *InstanceError) (string, error) {
		n++
		return b.spend(ie, n)
	}
	for range 3 {
		if note, err := spend(killed); err != nil || note != "not counted against retries: the instance was stopped from outside" {
			t.Fatalf("a kill from outside: %q, %v", note, err)
		}
	}
	retired := &InstanceError{Instance: "transformer-2", PID: 5, Status: "scaled in", Retired: true}
	if note, err := spend(retired); err != nil || note != "not counted against retries: its instance was retired by a scale-in" {
		t.Fatalf("a scale-in: %q, %v", note, err)
	}
	crash0 := &InstanceError{Instance: "transformer-0", PID: 2, Status: "exit status 3"}
	if note, err := spend(crash0); err != nil || note != "retry 1 of 2" {
		t.Fatalf("first crash: %q, %v; want retry 1 of 2", note, err)
	}
	hung0 := &InstanceError{Instance: "transformer-0", PID: 3, Status: "signal: killed", Hung: "no progress for 1m0s"}
	if note, err := spend(hung0); err != nil || note != "retry 2 of 2" {
		t.Fatalf("the same instance hung: %q, %v; want retry 2 of 2 (one distinct instance)", note, err)
	}
	oom1 := &InstanceError{Instance: "transformer-1", PID: 4, Status: "signal: killed", OOM: true}
	_, err := spend(oom1)
	var re *RetryError
	want := "poison: its attempts crashed 2 distinct instances, transformer-0 (exit status 3), transformer-1 (signal: killed, OOM) (poison_crashes = 2); it is not dispatched again"
	if !errors.As(err, &re) || !strings.HasPrefix(err.Error(), want) || re.Last != oom1 {
		t.Fatalf("a second distinct instance crashed: %v\nwant %q…", err, want)
	}
	var ie *InstanceError
	if !errors.As(err, &ie) || ie != oom1 {
		t.Errorf("the RetryError does not unwrap to the last loss: %v", ie)
	}

	b, n = retryBudget{retries: 1, poison: 5}, 0
	spend(crash0)
	_, err = spend(crash0)
	if want := "failed after 2 attempts (retries = 1); the last: instance transformer-0 (pid 2) exited: exit status 3; raise retries"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("retries spent: %v\nwant %q…", err, want)
	}

	b, n = retryBudget{retries: 0, poison: 1}, 0
	for range maxLostAttempts {
		if _, err := spend(killed); err != nil {
			t.Fatalf("kill %d of %d: %v", n, maxLostAttempts, err)
		}
	}
	_, err = spend(killed)
	if want := "failed after 101 attempts: 101 were lost to instances stopped from outside, the most that are retried"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("past maxLostAttempts: %v\nwant %q…", err, want)
	}
	if hostOOMKills() < 0 {
		t.Error("/proc/vmstat has no oom_kill count on this host")
	}
}
