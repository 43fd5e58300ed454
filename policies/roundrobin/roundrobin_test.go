package roundrobin

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/phased/phased/sdk"
)

func candidates(phase string, ready ...bool) sdk.PhaseCandidates {
	pc := sdk.PhaseCandidates{Phase: phase}
	for i, r := range ready {
		pc.Candidates = append(pc.Candidates, sdk.Candidate{ID: phase + "-" + string(rune('0'+i)), Index: i, Ready: r})
	}
	return pc
}

func TestScheduleCycles(t *testing.T) {
	tests := []struct {
		name  string
		ready []bool
		want  []string
	}{
		{"one instance", []bool{true}, []string{"t-0", "t-0", "t-0"}},
		{"two instances alternate", []bool{true, true}, []string{"t-0", "t-1", "t-0", "t-1"}},
		{"three instances in order", []bool{true, true, true}, []string{"t-0", "t-1", "t-2", "t-0"}},
		{"skips not ready", []bool{true, false, true}, []string{"t-0", "t-2", "t-0", "t-2"}},
		{"only last ready", []bool{false, false, true}, []string{"t-2", "t-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New()
			var got []string
			for range tt.want {
				d, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{candidates("t", tt.ready...)}})
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, d.Choices["t"])
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("choices %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSchedulePhasesIndependent(t *testing.T) {
	p := New()
	req := sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{candidates("e", true), candidates("t", true, true), candidates("d", true)}}
	want := []map[string]string{
		{"e": "e-0", "t": "t-0", "d": "d-0"},
		{"e": "e-0", "t": "t-1", "d": "d-0"},
		{"e": "e-0", "t": "t-0", "d": "d-0"},
	}
	for i, w := range want {
		d, err := p.Schedule(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(d.Choices, w) {
			t.Fatalf("request %d: choices %v, want %v", i, d.Choices, w)
		}
	}
}

func TestScheduleNoReady(t *testing.T) {
	p := New()
	for _, pc := range []sdk.PhaseCandidates{candidates("t"), candidates("t", false, false)} {
		_, err := p.Schedule(context.Background(), sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{pc}})
		if !errors.Is(err, ErrNoReady) {
			t.Fatalf("error %v, want ErrNoReady", err)
		}
		if want := `roundrobin: phase "t": no ready instance among`; err == nil || len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
			t.Fatalf("error text %q, want prefix %q", err, want)
		}
	}
}

func TestInfo(t *testing.T) {
	info, err := New().Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != Name || info.Kind != sdk.KindPolicy || !reflect.DeepEqual(info.APIVersions, []int{sdk.PolicyAPIVersion}) {
		t.Fatalf("info %+v", info)
	}
}
