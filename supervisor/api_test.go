package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phased/phased/supervisor/config"
)

// newTestAPI serves the control API of a supervisor that was never started
// (it takes no requests) on a socket in a short temp dir.
func newTestAPI(t *testing.T) (*Client, string) {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "papi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "sub", "phased.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	api := NewAPI(New(config.Default(), Options{}), ln, socket, nil)
	served := make(chan error, 1)
	go func() { served <- api.Serve() }()
	t.Cleanup(func() {
		if err := api.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return NewClient(socket), socket
}

func TestAPIErrors(t *testing.T) {
	c, socket := newTestAPI(t)
	ctx := context.Background()
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %v, want 0600", fi.Mode().Perm())
	}
	if di, err := os.Stat(filepath.Dir(socket)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("control socket dir: %v, %v; want mode 0700", di.Mode().Perm(), err)
	}

	tests := []struct {
		name   string
		method string
		path   string
		body   string
		code   int
		want   string
	}{
		{"empty prompt", "POST", "/v1/requests", `{"prompt": ""}`, 400, "prompt must not be empty"},
		{"zero steps", "POST", "/v1/requests", `{"prompt": "x", "steps": 0}`, 400, "steps must be between 1 and 10000, got 0"},
		{"unknown field", "POST", "/v1/requests", `{"prompt": "x", "stepz": 3}`, 400, `unknown field "stepz"`},
		{"deadline a number", "POST", "/v1/requests", `{"prompt": "x", "deadline": 120}`, 400, `a duration is a string such as "90s" or "2m", not 120`},
		{"deadline too long", "POST", "/v1/requests", `{"prompt": "x", "deadline": "1000h"}`, 400, "deadline must be between 0 (none) and 720h0m0s, got 1000h0m0s"},
		{"priority too high", "POST", "/v1/requests", `{"prompt": "x", "priority": 101}`, 400, "priority must be between 1 and 100 (or 0, for 50), got 101"},
		{"not json", "POST", "/v1/requests", `prompt=x`, 400, "body is not valid JSON for POST /v1/requests"},
		{"too large", "POST", "/v1/requests", `{"prompt": "` + strings.Repeat("a", MaxBodyBytes) + `"}`, 413, "request body is larger than 1048576 bytes"},
		{"not started", "POST", "/v1/requests", `{"prompt": "x"}`, 503, "takes no new requests"},
		{"unknown request", "GET", "/v1/requests/r000042", "", 404, `no such request: "r000042"`},
		{"remove unknown", "DELETE", "/v1/requests/r000042", "", 404, `no such request: "r000042"`},
		{"events of unknown", "GET", "/v1/requests/r000042/events", "", 404, `no such request: "r000042"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, tt.method, "http://phased"+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.code || !strings.Contains(eb.Error, tt.want) {
				t.Fatalf("%s %s: HTTP %d %q, want HTTP %d with %q", tt.method, tt.path, resp.StatusCode, eb.Error, tt.code, tt.want)
			}
			// The client turns the same answer into an APIError.
			if tt.body != "" {
				return
			}
			_, err = c.send(ctx, tt.method, tt.path, nil)
			var ae *APIError
			if !errors.As(err, &ae) || ae.Code != tt.code || !strings.Contains(ae.Msg, tt.want) {
				t.Fatalf("%s %s: %v, want HTTP %d with %q", tt.method, tt.path, err, tt.code, tt.want)
			}
		})
	}
	st, err := c.Status(ctx)
	if err != nil || st.PID != os.Getpid() || len(st.Requests) != 0 {
		t.Fatalf("status %+v, %v", st, err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	_, socket := newTestAPI(t)
	if _, err := Listen(socket); err == nil || err.Error() != "a supervisor is already running at "+socket {
		t.Fatalf("second Listen: %v", err)
	}
	long := "/tmp/" + strings.Repeat("x", 110) + "/s.sock"
	if _, err := Listen(long); err == nil || !strings.Contains(err.Error(), "limited to 107") {
		t.Fatalf("Listen on a long path: %v", err)
	}
}

func TestListenRefusesOpenDir(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "papi-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err = Listen(filepath.Join(dir, "s.sock"))
	if err == nil || !strings.Contains(err.Error(), "is writable by other users (mode -rwxrwxrwx)") {
		t.Fatalf("Listen in a 0777 dir: %v", err)
	}
}

func TestNoSupervisor(t *testing.T) {
	c := NewClient("/tmp/phased-nobody-here.sock")
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrNoSupervisor) || err.Error() != "no supervisor at /tmp/phased-nobody-here.sock (start one with `supervisor start`)" {
		t.Fatalf("error %v", err)
	}
}
