package weighted

import (
	"context"
	"strings"
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return New() })
}

func cand(id string, index int, weight string) sdk.Candidate {
	c := sdk.Candidate{ID: id, Index: index, Ready: true}
	if weight != "" {
		c.Labels = map[string]string{WeightLabel: weight}
	}
	return c
}

func picks(t *testing.T, p *Policy, cands []sdk.Candidate, n int) string {
	t.Helper()
	var seq strings.Builder
	for range n {
		d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: cands}}})
		if err != nil {
			t.Fatal(err)
		}
		seq.WriteString(d.Choices["t"])
	}
	return seq.String()
}

// Weights 5, 1, 1 give nginx's smooth sequence, a a b a c a a, repeated.
func TestSmoothSequence(t *testing.T) {
	p := New()
	cands := []sdk.Candidate{cand("a", 0, "5"), cand("b", 1, "1"), cand("c", 2, "")}
	if got, want := picks(t, p, cands, 14), "aabacaaaabacaa"; got != want {
		t.Fatalf("sequence %s, want %s", got, want)
	}
}

// An instance that stops being ready gets nothing and no credit; back, it
// takes its share again.
func TestMembershipChanges(t *testing.T) {
	p := New()
	cands := []sdk.Candidate{cand("a", 0, "2"), cand("b", 1, "1")}
	if got := picks(t, p, cands, 6); got != "abaaba" {
		t.Fatalf("a:2 b:1 gave %s", got)
	}
	cands[0].Ready = false
	if got := picks(t, p, cands, 3); got != "bbb" {
		t.Fatalf("a not ready: %s", got)
	}
	cands[0].Ready = true
	if got := picks(t, p, cands, 6); strings.Count(got, "a") != 4 || strings.Count(got, "b") != 2 {
		t.Fatalf("a back: %s, want four a and two b", got)
	}
}

func TestBadWeight(t *testing.T) {
	p := New()
	for _, w := range []string{"0", "-1", "x", "1001"} {
		_, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{{Phase: "t", Candidates: []sdk.Candidate{cand("a", 0, w)}}}})
		if err == nil || !strings.Contains(err.Error(), `instance a: label weight="`+w+`" is not a weight from 1 to 1000`) {
			t.Errorf("weight %q: %v", w, err)
		}
	}
}
