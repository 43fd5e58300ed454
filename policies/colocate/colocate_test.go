package colocate

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/phased/phased/sdk"
)

// c is a ready candidate of phase ph at index i on host (no label for
// host "-"), holding rooms open rooms.
func c(ph string, i int, host string, rooms int) sdk.Candidate {
	cand := sdk.Candidate{ID: ph + "-" + string(rune('0'+i)), Index: i, Ready: true, OpenRooms: rooms}
	if host != "-" {
		cand.Labels = map[string]string{HostLabel: host, "gpu": "0"}
	}
	return cand
}

func notReady(cand sdk.Candidate) sdk.Candidate { cand.Ready = false; return cand }

func request(e, t, d []sdk.Candidate) sdk.ScheduleRequest {
	return sdk.ScheduleRequest{RequestID: "r", Phases: []sdk.PhaseCandidates{
		{Phase: "e", Candidates: e}, {Phase: "t", Candidates: t}, {Phase: "d", Candidates: d},
	}}
}

type cands = []sdk.Candidate

func TestSchedule(t *testing.T) {
	tests := []struct {
		name    string
		slack   int
		req     sdk.ScheduleRequest
		want    map[string]string
		wantErr string // the error's text; "" for none
	}{
		{"two full hosts, equal load: all on one host", Slack, request(
			cands{c("e", 0, "A", 0), c("e", 1, "B", 0)},
			cands{c("t", 0, "B", 0), c("t", 1, "A", 0)}, // index order is not host order
			cands{c("d", 0, "A", 0), c("d", 1, "B", 0)},
		), map[string]string{"e": "e-0", "t": "t-1", "d": "d-0"}, ""},

		{"one phase of a host over the slack: the other host", Slack, request(
			cands{c("e", 0, "A", 0), c("e", 1, "B", 0)},
			cands{c("t", 0, "A", 2), c("t", 1, "B", 0)},
			cands{c("d", 0, "A", 0), c("d", 1, "B", 0)},
		), map[string]string{"e": "e-1", "t": "t-1", "d": "d-1"}, ""},

		{"within the slack: one host rather than the least loaded", Slack, request(
			cands{c("e", 0, "A", 0), c("e", 1, "B", 1)},
			cands{c("t", 0, "A", 1), c("t", 1, "B", 0)},
			cands{c("d", 0, "A", 0), c("d", 1, "B", 1)},
		), map[string]string{"e": "e-0", "t": "t-0", "d": "d-0"}, ""},

		{"slack 0: the least loaded, across hosts", 0, request(
			cands{c("e", 0, "A", 0), c("e", 1, "B", 1)},
			cands{c("t", 0, "A", 1), c("t", 1, "B", 0)},
			cands{c("d", 0, "A", 0), c("d", 1, "B", 1)},
		), map[string]string{"e": "e-0", "t": "t-1", "d": "d-0"}, ""},

		{"the only transformer of the full host overloaded: spills and comes back", Slack, request(
			cands{c("e", 0, "A", 0)},
			cands{c("t", 0, "A", 3), c("t", 1, "C", 0), c("t", 2, "C", 0)},
			cands{c("d", 0, "A", 0)},
		), map[string]string{"e": "e-0", "t": "t-1", "d": "d-0"}, ""},

		{"a host without a decoder is never the single host", Slack, request(
			cands{c("e", 0, "A", 1), c("e", 1, "B", 0)},
			cands{c("t", 0, "A", 1), c("t", 1, "B", 0)},
			cands{c("d", 0, "A", 0)},
		), map[string]string{"e": "e-0", "t": "t-0", "d": "d-0"}, ""},

		{"a host without a decoder, the other's encoder over the slack: one hop, to the less loaded transformer", Slack, request(
			cands{c("e", 0, "A", 2), c("e", 1, "B", 0)},
			cands{c("t", 0, "A", 1), c("t", 1, "B", 0)},
			cands{c("d", 0, "A", 0)},
		), map[string]string{"e": "e-1", "t": "t-1", "d": "d-0"}, ""},

		{"one hop rather than two, though the least loaded decoder is back home", Slack, request(
			cands{c("e", 0, "A", 0)},
			cands{c("t", 0, "A", 5), c("t", 1, "C", 0)},
			cands{c("d", 0, "A", 0), c("d", 1, "C", 1)},
		), map[string]string{"e": "e-0", "t": "t-1", "d": "d-1"}, ""},

		{"not ready never chosen, however idle and close", Slack, request(
			cands{c("e", 0, "A", 0), c("e", 1, "B", 1)},
			cands{notReady(c("t", 0, "A", 0)), c("t", 1, "B", 1)},
			cands{c("d", 0, "A", 0), c("d", 1, "B", 1), notReady(c("d", 2, "B", 0))},
		), map[string]string{"e": "e-1", "t": "t-1", "d": "d-1"}, ""},

		{"no host labels: one host, least loaded", Slack, request(
			cands{c("e", 0, "-", 0)},
			cands{c("t", 0, "-", 2), c("t", 1, "-", 0), c("t", 2, "", 1)},
			cands{c("d", 0, "-", 0)},
		), map[string]string{"e": "e-0", "t": "t-1", "d": "d-0"}, ""},

		{"an unlabelled instance is on the supervisor's host, labelled \"\"", Slack, request(
			cands{c("e", 0, "-", 0), c("e", 1, "B", 0)},
			cands{c("t", 0, "B", 1), c("t", 1, "", 1)},
			cands{c("d", 0, "B", 1), c("d", 1, "-", 0)},
		), map[string]string{"e": "e-0", "t": "t-1", "d": "d-1"}, ""},

		{"an empty phase", Slack, request(
			cands{c("e", 0, "A", 0)}, cands{c("t", 0, "A", 0)}, nil,
		), nil, `colocate: phase "d": no ready instance among 0 candidates`},

		{"no ready candidate in a phase", Slack, request(
			cands{c("e", 0, "A", 0)}, cands{notReady(c("t", 0, "A", 0)), notReady(c("t", 1, "B", 0))}, cands{c("d", 0, "A", 0)},
		), nil, `colocate: phase "t": no ready instance among 2 candidates`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewSlack(tt.slack).Schedule(context.Background(), tt.req)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr || !errors.Is(err, ErrNoReady) {
					t.Fatalf("error %v, want %q wrapping ErrNoReady", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.Choices, tt.want) {
				t.Fatalf("choices %v, want %v", d.Choices, tt.want)
			}
		})
	}
}

// Ties take turns: between hosts when the load does not tell them apart,
// and between the instances of the chosen host.
func TestTiesRoundRobin(t *testing.T) {
	tests := []struct {
		name string
		req  sdk.ScheduleRequest
		want []map[string]string
	}{
		{"two equal hosts alternate", request(
			cands{c("e", 0, "A", 0), c("e", 1, "B", 0)},
			cands{c("t", 0, "A", 0), c("t", 1, "B", 0)},
			cands{c("d", 0, "A", 0), c("d", 1, "B", 0)},
		), []map[string]string{
			{"e": "e-0", "t": "t-0", "d": "d-0"},
			{"e": "e-1", "t": "t-1", "d": "d-1"},
			{"e": "e-0", "t": "t-0", "d": "d-0"},
		}},
		{"three hosts in turn, one of them the supervisor's", request(
			cands{c("e", 0, "B", 0), c("e", 1, "-", 0), c("e", 2, "A", 0)},
			cands{c("t", 0, "A", 0), c("t", 1, "B", 0), c("t", 2, "-", 0)},
			cands{c("d", 0, "-", 0), c("d", 1, "A", 0), c("d", 2, "B", 0)},
		), []map[string]string{
			{"e": "e-2", "t": "t-0", "d": "d-1"}, // A
			{"e": "e-0", "t": "t-1", "d": "d-2"}, // B
			{"e": "e-1", "t": "t-2", "d": "d-0"}, // ""
			{"e": "e-2", "t": "t-0", "d": "d-1"}, // A
		}},
		{"instances of one host take turns", request(
			cands{c("e", 0, "A", 0)},
			cands{c("t", 0, "A", 0), c("t", 1, "C", 0), c("t", 2, "A", 0), c("t", 3, "A", 1)},
			cands{c("d", 0, "A", 0)},
		), []map[string]string{
			{"e": "e-0", "t": "t-0", "d": "d-0"},
			{"e": "e-0", "t": "t-2", "d": "d-0"},
			{"e": "e-0", "t": "t-0", "d": "d-0"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New()
			for i, w := range tt.want {
				d, err := p.Schedule(context.Background(), tt.req)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(d.Choices, w) {
					t.Fatalf("request %d: choices %v, want %v", i, d.Choices, w)
				}
			}
		})
	}
}

// The supervisor counts a decision's rooms before the next one: under a
// steady stream, two equal full hosts share the requests evenly and every
// request stays on one host.
func TestStreamStaysHomeAndSpreads(t *testing.T) {
	p := New()
	rooms := map[string]int{}
	hostOf := map[string]string{}
	phase := func(name string, hosts ...string) sdk.PhaseCandidates {
		pc := sdk.PhaseCandidates{Phase: name}
		for i, h := range hosts {
			cand := c(name, i, h, 0)
			hostOf[cand.ID] = h
			cand.OpenRooms = rooms[cand.ID]
			pc.Candidates = append(pc.Candidates, cand)
		}
		return pc
	}
	perHost := map[string]int{}
	for i := range 100 {
		req := sdk.ScheduleRequest{Phases: []sdk.PhaseCandidates{phase("e", "A", "B"), phase("t", "A", "A", "B", "B"), phase("d", "A", "B")}}
		d, err := p.Schedule(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if hostOf[d.Choices["e"]] != hostOf[d.Choices["t"]] || hostOf[d.Choices["t"]] != hostOf[d.Choices["d"]] {
			t.Fatalf("request %d crossed hosts: %v", i, d.Choices)
		}
		perHost[hostOf[d.Choices["e"]]]++
		for _, id := range d.Choices {
			rooms[id]++
		}
	}
	if perHost["A"] != 50 || perHost["B"] != 50 {
		t.Fatalf("requests per host %v, want 50 each", perHost)
	}
	for _, id := range []string{"t-0", "t-1", "t-2", "t-3"} {
		if rooms[id] != 25 {
			t.Fatalf("rooms %v, want 25 on each transformer", rooms)
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
