package affinity

import (
	"context"
	"fmt"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return New() })
}

func instances(n int, notReady ...int) []sdk.Candidate {
	cs := make([]sdk.Candidate, n)
	for i := range cs {
		cs[i] = sdk.Candidate{ID: fmt.Sprintf("t-%d", i), Index: i, Ready: true}
	}
	for _, i := range notReady {
		cs[i].Ready = false
	}
	return cs
}

func place(t *testing.T, keys int, cands []sdk.Candidate) map[string]string {
	t.Helper()
	p := New()
	out := map[string]string{}
	for k := range keys {
		key := fmt.Sprintf("lora-%d", k)
		d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{RequestID: "r", Key: key, Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: cands}}})
		if err != nil {
			t.Fatal(err)
		}
		out[key] = d.Choices["t"]
	}
	return out
}

// One key, one instance; keys spread evenly; when an instance goes, only
// its keys move; when it comes back, exactly those keys return.
func TestKeysStayAndMoveLittle(t *testing.T) {
	const keys = 4000
	before := place(t, keys, instances(4))
	if again := place(t, keys, instances(4)); fmt.Sprint(again) != fmt.Sprint(before) {
		t.Fatal("the same key went to another instance")
	}
	per := map[string]int{}
	for _, id := range before {
		per[id]++
	}
	for id, n := range per {
		if n < 800 || n > 1200 { // 1000 expected
			t.Errorf("%s holds %d of %d keys, want about 1000 (%v)", id, n, keys, per)
		}
	}
	during := place(t, keys, instances(4, 2)) // t-2 is not ready
	for k, id := range before {
		switch {
		case id == "t-2" && during[k] == "t-2":
			t.Fatalf("key %s stayed on the instance that is not ready", k)
		case id != "t-2" && during[k] != id:
			t.Fatalf("key %s moved from %s to %s though %s stayed ready", k, id, during[k], id)
		}
	}
	if after := place(t, keys, instances(4)); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatal("keys did not return to where they were once t-2 came back")
	}
}

// Without a key, the request id is hashed: requests spread.
func TestNoKeySpreads(t *testing.T) {
	p := New()
	per := map[string]int{}
	for i := range 3000 {
		d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{RequestID: fmt.Sprintf("r%06d", i), Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: instances(3)}}})
		if err != nil {
			t.Fatal(err)
		}
		per[d.Choices["t"]]++
	}
	for id, n := range per {
		if n < 850 || n > 1150 {
			t.Errorf("%s got %d of 3000 requests without a key (%v)", id, n, per)
		}
	}
}
