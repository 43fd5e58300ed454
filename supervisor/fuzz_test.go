package supervisor

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/phased/phased/supervisor/config"
)

// FuzzControlAPI sends arbitrary bodies to the control API's calls that
// take JSON, on a supervisor that is not started: every answer is a JSON
// error body with a message, 400 (bad input), 413 (too large) or 503 (valid
// input, but no pipeline runs); nothing panics.
func FuzzControlAPI(f *testing.F) {
	for _, seed := range []string{
		`{"prompt":"a cat","seed":7,"steps":3}`,
		`{"prompt":"a cat","key":"lora-a"}`,
		`{"prompt":""}`,
		`{"prompt":"x","steps":-1}`,
		`{"prompt":"x","unknown":1}`,
		`{"policy":"leastloaded"}`,
		`{"policy":"../x"}`,
		`[]`, `null`, `{`, `"\ud800"`, ``,
	} {
		f.Add("POST /v1/requests", []byte(seed))
		f.Add("PUT /v1/phases/transformer/policy", []byte(seed))
	}
	api := NewAPI(New(config.Default(), Options{}), nil, "", nil)
	f.Fuzz(func(t *testing.T, call string, body []byte) {
		method, path, ok := strings.Cut(call, " ")
		if !ok || (method != "POST" && method != "PUT") || !strings.HasPrefix(path, "/v1/") || strings.ContainsAny(path, " \x00") {
			return
		}
		req, err := http.NewRequest(method, "http://phased"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		rec := httptest.NewRecorder()
		api.srv.Handler.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable,
			http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusMovedPermanently, http.StatusTemporaryRedirect:
		default:
			t.Fatalf("%s %s with %q: status %d", method, path, body, rec.Code)
		}
		if rec.Code == http.StatusNotFound || rec.Code == http.StatusMethodNotAllowed || rec.Code/100 == 3 {
			return // no such call, or an unclean path: the mux's own answer
		}
		var e ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
			t.Fatalf("%s %s with %q: body %q is not an error body (%v)", method, path, body, rec.Body.String(), err)
		}
	})
}

// FuzzConfig parses arbitrary configs: no panic; an accepted config has at
// least one phase, valid names, instances in range, and its pins are
// well-formed; a refused one says why.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(config.DefaultHCL()), "a.hcl")
	for _, seed := range []string{
		"phase \"e\" { plugin = \"encoder\" }\n",
		"phase \"t\" {\n  plugin = \"transformer\"\n  instances = 2\n  weights = [3, 1]\n  labels = { zone = \"a\" }\n}\n",
		"policy_timeout = \"1s\"\npeer_timeout = \"x\"\nphase \"e\" { plugin = \"e\" }\n",
		"pin \"phased-phase-encoder\" { sha256 = \"00\" }\nphase \"e\" { plugin = \"encoder\" }\n",
		`{"phase": {"e": {"plugin": "encoder"}}}`,
		"phase \"e\" { plugin = \"encoder\"\n",
	} {
		f.Add([]byte(seed), "a.hcl")
	}
	f.Add([]byte(`{"phase": {"e": {"plugin": "encoder", "instances": 70}}}`), "a.json")
	f.Fuzz(func(t *testing.T, src []byte, name string) {
		if name != "a.hcl" && name != "a.json" {
			name = "a.hcl"
		}
		c, err := config.Parse(src, name)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if len(c.Phases) == 0 {
			t.Fatalf("accepted a config without phases: %q", src)
		}
		for _, ph := range c.Phases {
			if !config.ValidName(ph.Name) || !config.ValidName(ph.Plugin) || !config.ValidName(ph.Policy) || ph.Instances < 1 || ph.Instances > 64 {
				t.Fatalf("accepted phase %+v from %q", ph, src)
			}
			if len(ph.Weights) != 0 && len(ph.Weights) != ph.Instances {
				t.Fatalf("accepted weights %v for %d instances", ph.Weights, ph.Instances)
			}
		}
		for bin, sum := range c.Pins {
			if len(sum) != 64 || !strings.HasPrefix(bin, "phased-") {
				t.Fatalf("accepted pin %q = %q", bin, sum)
			}
		}
		if c.MaxInflight < 1 || c.PolicyTimeout <= 0 {
			t.Fatalf("accepted max_inflight %d, policy_timeout %v", c.MaxInflight, c.PolicyTimeout)
		}
	})
}
