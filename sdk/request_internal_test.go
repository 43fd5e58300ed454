package sdk

import "testing"

// TestRequestWire: every field of a Request crosses the wire, NoSync
// included (false, its zero value, asks for a durable artifact, which is
// what a supervisor that predates it means).
func TestRequestWire(t *testing.T) {
	for _, r := range []Request{
		{ID: "01JDQ8Z4K7X2M9V3T6N5B8C1RW", Prompt: "p", Seed: -3, Steps: 20, ArtifactDir: "/out", NoSync: true},
		{ID: "r", ArtifactDir: "/out"},
	} {
		if got := requestFromProto(requestToProto(r)); got != r {
			t.Errorf("%+v came back as %+v", r, got)
		}
	}
}
