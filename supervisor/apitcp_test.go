package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/phased/phased/supervisor/config"
)

const testToken = "0123456789abcdef-test-token"

// writeToken writes content to a file of mode perm in a temp dir and
// returns its path.
func writeToken(t *testing.T, content string, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil {
		t.Fatal(err)
	}
	return path
}

// tcpAPI is a control API of a supervisor that was never started, served
// on a unix socket and on TCP on loopback.
type tcpAPI struct {
	unix   *Client
	addr   string
	api    *API
	served chan error
}

func newTCPTestAPI(t *testing.T, tweaks ...func(*API)) *tcpAPI {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "papi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "phased.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	tcp, token, err := ListenTCP("127.0.0.1:0", writeToken(t, testToken+"\n", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if token != testToken {
		t.Fatalf("token %q, want %q", token, testToken)
	}
	if !Loopback(tcp.Addr()) {
		t.Fatalf("listening on %v, not loopback", tcp.Addr())
	}
	api := NewAPI(New(config.Default(), Options{}), ln, socket, nil)
	for _, tweak := range tweaks {
		tweak(api)
	}
	if err := api.AddTCP(tcp, token); err != nil {
		t.Fatal(err)
	}
	a := &tcpAPI{unix: NewClient(socket), addr: tcp.Addr().String(), api: api, served: make(chan error, 1)}
	go func() { a.served <- api.Serve() }()
	t.Cleanup(func() { a.shutdown(t) })
	return a
}

// shutdown stops the API once; Serve must return nil.
func (a *tcpAPI) shutdown(t *testing.T) {
	t.Helper()
	if a.served == nil {
		return
	}
	if err := a.api.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
	if err := <-a.served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	a.served = nil
}

// call makes a raw call on the TCP listener with the Authorization header
// auth ("" sends none) and returns the status, headers and body.
func (a *tcpAPI) call(t *testing.T, method, path, auth, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+a.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// unixBody makes a call on the unix socket and returns its status and body.
func (a *tcpAPI) unixBody(t *testing.T, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://phased"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := a.unix.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestTCPAuth(t *testing.T) {
	a := newTCPTestAPI(t)
	const needs = "the control API on TCP needs a bearer token: send Authorization: Bearer TOKEN"
	tests := []struct {
		name         string
		method, path string
		auth         string
		body         string
		code         int
		want         string // in the error body; "" for a success
	}{
		{"no token", "GET", "/v1/status", "", "", 401, needs},
		{"wrong token", "GET", "/v1/status", "Bearer " + testToken + "x", "", 401, "wrong bearer token"},
		{"token prefix", "GET", "/v1/status", "Bearer " + testToken[:16], "", 401, "wrong bearer token"},
		{"empty bearer", "GET", "/v1/status", "Bearer", "", 401, "wrong bearer token"},
		{"basic scheme", "GET", "/v1/status", "Basic " + testToken, "", 401, needs},
		{"no token, unknown path", "GET", "/v1/nothing", "", "", 401, needs},
		{"no token, release", "POST", "/v1/release", "", "", 401, needs},
		{"no token, submit", "POST", "/v1/requests", "", `{"prompt": "x"}`, 401, needs},
		{"right token", "GET", "/v1/status", "Bearer " + testToken, "", 200, ""},
		{"scheme in lower case", "GET", "/v1/policies", "bearer " + testToken, "", 200, ""},
		{"right token, unknown request", "GET", "/v1/requests/r000042", "Bearer " + testToken, "", 404, `no such request: "r000042"`},
		{"right token, too large", "POST", "/v1/requests", "Bearer " + testToken, `{"prompt": "` + strings.Repeat("a", MaxBodyBytes) + `"}`, 413, "request body is larger than 1048576 bytes"},
		{"no token, metrics", "GET", "/metrics", "", "", 401, needs},
		{"no token, health", "GET", "/v1/health", "", "", 401, needs},
		{"no token, ready", "GET", "/v1/ready", "", "", 401, needs},
		{"right token, metrics", "GET", "/metrics", "Bearer " + testToken, "", 200, ""},
		{"right token, health", "GET", "/v1/health", "Bearer " + testToken, "", 200, ""},
		// Never started: alive, not ready.
		{"right token, ready", "GET", "/v1/ready", "Bearer " + testToken, "", 503, ""},
		// The dashboard's files hold no data: no token needed; its data
		// calls need one like any other.
		{"no token, dashboard", "GET", "/ui/", "", "", 200, ""},
		{"no token, dashboard script", "GET", "/ui/app.js", "", "", 200, ""},
		{"no token, dashboard escape", "GET", "/ui/../v1/status", "", "", 401, needs},
		{"no token, dashboard escape encoded", "GET", "/ui/%2e%2e/v1/status", "", "", 401, needs},
		{"no token, post to dashboard", "POST", "/ui/", "", "", 401, needs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := a.call(t, tt.method, tt.path, tt.auth, tt.body)
			if code != tt.code {
				t.Fatalf("HTTP %d %s, want %d", code, body, tt.code)
			}
			if code == 401 && h.Get("WWW-Authenticate") != `Bearer realm="phased"` {
				t.Errorf("WWW-Authenticate %q", h.Get("WWW-Authenticate"))
			}
			if tt.want == "" {
				return
			}
			var eb ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || !strings.Contains(eb.Error, tt.want) {
				t.Fatalf("body %s (%v), want an ErrorBody with %q", body, err, tt.want)
			}
		})
	}
	// The unix socket needs no token and answers the same JSON.
	for _, path := range []string{"/v1/status", "/v1/policies", "/v1/requests/r000042"} {
		ucode, ubody := a.unixBody(t, "GET", path)
		code, _, body := a.call(t, "GET", path, "Bearer "+testToken, "")
		if code != ucode || !bytes.Equal(body, ubody) {
			t.Errorf("GET %s: TCP HTTP %d %s, unix HTTP %d %s", path, code, body, ucode, ubody)
		}
	}
}

func TestTCPClient(t *testing.T) {
	a := newTCPTestAPI(t)
	ctx := context.Background()
	want, err := a.unix.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := NewTCPClient(a.addr, testToken).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wj, _ := json.Marshal(want)
	gj, _ := json.Marshal(got)
	if !bytes.Equal(wj, gj) || got.PID != os.Getpid() {
		t.Fatalf("status over TCP %s, over the socket %s", gj, wj)
	}
	_, err = NewTCPClient(a.addr, "not-the-token-at-all").Status(ctx)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != 401 || ae.Msg != "supervisor at "+a.addr+" refused the call: wrong bearer token" {
		t.Fatalf("wrong token: %v", err)
	}
	_, err = NewTCPClient(a.addr, testToken).Request(ctx, "r000042")
	if !errors.As(err, &ae) || ae.Code != 404 {
		t.Fatalf("unknown request over TCP: %v", err)
	}

	// After Shutdown nothing listens on the address any more.
	a.shutdown(t)
	_, err = NewTCPClient(a.addr, testToken).Status(ctx)
	if !errors.Is(err, ErrNoSupervisor) || !strings.Contains(err.Error(), "no supervisor at "+a.addr+" (start one with `supervisor start --listen "+a.addr) {
		t.Fatalf("after Shutdown: %v", err)
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		perm    os.FileMode
		want    string // the token, or
		wantErr string // in the error
	}{
		{"trimmed", "  " + testToken + "\n\n", 0o600, testToken, ""},
		{"read only", testToken, 0o400, testToken, ""},
		{"exactly 16 bytes", "0123456789abcdef\n", 0o600, "0123456789abcdef", ""},
		{"empty", "", 0o600, "", "is empty; put a random token in it"},
		{"only whitespace", " \n\t\n", 0o600, "", "is empty"},
		{"short", "0123456789abcde\n", 0o600, "", "is 15 bytes; it must be at least 16"},
		{"world readable", testToken, 0o644, "", "permissions 0644 for "},
		{"group readable", testToken, 0o640, "", "permissions 0640 for "},
		{"others may write", testToken, 0o602, "", "permissions 0602 for "},
		{"space inside", "0123456789 abcdef", 0o600, "", "has a space or control character at byte 10"},
		{"two lines", "0123456789abcdef\n0123456789abcdef\n", 0o600, "", "has a space or control character at byte 16"},
		{"too large", strings.Repeat("a", 5000), 0o600, "", "is larger than 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeToken(t, tt.content, tt.perm)
			tok, err := ReadTokenFile(path)
			if tt.wantErr == "" {
				if err != nil || tok != tt.want {
					t.Fatalf("token %q, %v; want %q", tok, err, tt.want)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrTokenFile) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("token %q, error %v; want ErrTokenFile naming %s with %q", tok, err, path, tt.wantErr)
			}
		})
	}
	open := writeToken(t, testToken, 0o644)
	if _, err := ReadTokenFile(open); err == nil || err.Error() != "bad token file: permissions 0644 for "+open+" are too open; it must be readable by its owner only: chmod 600 "+open {
		t.Errorf("0644: %v", err)
	}
	missing := filepath.Join(dir, "nothing")
	if _, err := ReadTokenFile(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := ReadTokenFile(dir); err == nil || !strings.Contains(err.Error(), dir+" is not a regular file") {
		t.Errorf("a directory: %v", err)
	}
}

func TestListenTCP(t *testing.T) {
	good := writeToken(t, testToken, 0o600)
	tests := []struct {
		name, addr, tokenFile string
		want                  string
	}{
		{"no token file", "127.0.0.1:0", "", "control API on 127.0.0.1:0: no token file: give --token-file FILE (or token_file in the config's control block)"},
		{"open token file", "127.0.0.1:0", writeToken(t, testToken, 0o644), "control API on 127.0.0.1:0: bad token file: permissions 0644"},
		{"short token", "127.0.0.1:0", writeToken(t, "short", 0o600), "is 5 bytes; it must be at least 16"},
		{"missing token file", "127.0.0.1:0", "/nonexistent/token", "/nonexistent/token: no such file or directory"},
		{"no port", "127.0.0.1", good, `listen address "127.0.0.1"`},
		{"bad port", "127.0.0.1:99999", good, "invalid port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, _, err := ListenTCP(tt.addr, tt.tokenFile)
			if err == nil {
				ln.Close()
				t.Fatal("ListenTCP succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	if _, _, err := ListenTCP("127.0.0.1:0", ""); !errors.Is(err, ErrNoToken) {
		t.Errorf("no token file: %v is not ErrNoToken", err)
	}

	api := NewAPI(New(config.Default(), Options{}), nil, "", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := api.AddTCP(ln, "short"); err == nil || !strings.Contains(err.Error(), "the token is 5 bytes; it must be at least 16") {
		t.Errorf("AddTCP with a short token: %v", err)
	}
}

func TestLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7070}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 7070}, true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 7070}, false},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 7070}, false},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 7070}, false},
		{&net.UnixAddr{Name: "/tmp/x.sock", Net: "unix"}, false},
	} {
		if got := Loopback(tt.addr); got != tt.want {
			t.Errorf("Loopback(%v) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// TestTCPConnectionLimits: idle TCP connections past the per-client and
// the total limits are closed at once, a closed one gives its place back,
// and the unix socket answers throughout.
func TestTCPConnectionLimits(t *testing.T) {
	a := newTCPTestAPI(t, func(api *API) { api.limits.conns, api.limits.perClient = 4, 2 })
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closed reports whether the server closed c (a read ends at once),
	// or keeps it open (the read times out).
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return !errors.Is(err, os.ErrDeadlineExceeded)
	}
	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	if a3 := dial("127.0.0.1"); !closed(a3) {
		t.Error("a third connection from one client was kept open; the limit is 2")
	}
	b1, b2 := dial("127.0.0.2"), dial("127.0.0.2")
	if c1 := dial("127.0.0.3"); !closed(c1) {
		t.Error("a fifth connection was kept open; the limit is 4")
	}
	for _, c := range []net.Conn{a1, a2, b1, b2} {
		if closed(c) {
			t.Error("a connection within the limits was closed")
		}
	}
	if code, _ := a.unixBody(t, "GET", "/v1/status"); code != 200 {
		t.Errorf("the unix socket answers %d with TCP full", code)
	}
	a1.Close()
	time.Sleep(100 * time.Millisecond) // the server sees the close
	if c := dial("127.0.0.1"); closed(c) {
		t.Error("the place of a closed connection was not given back")
	}
}

// TestSlowBody: a body sent a byte at a time is cut off after the read
// timeout; the connection does not stay held.
func TestSlowBody(t *testing.T) {
	a := newTCPTestAPI(t, func(api *API) {
		api.limits.read = 300 * time.Millisecond
		api.srv.ReadTimeout = api.limits.read
	})
	for name, dial := range map[string]func() (net.Conn, error){
		"tcp":  func() (net.Conn, error) { return net.Dial("tcp", a.addr) },
		"unix": func() (net.Conn, error) { return net.Dial("unix", a.api.path) },
	} {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v1/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{", testToken)
		cut := false
		for range 100 { // 100 bytes at 50 ms: 5 s, against a 300 ms timeout
			time.Sleep(50 * time.Millisecond)
			if _, err := c.Write([]byte(" ")); err != nil {
				cut = true
				break
			}
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 512)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				cut = true
				break
			}
		}
		if !cut {
			t.Errorf("%s: a body sent a byte at a time was read to its end", name)
		}
	}
}

// TestTrailingJSON: a body with a second JSON value after the first is
// refused, not half taken.
func TestTrailingJSON(t *testing.T) {
	a := newTCPTestAPI(t)
	code, _, body := a.call(t, "POST", "/v1/requests", "Bearer "+testToken, `{"prompt":"a"} {"prompt":"b"}`)
	if code != 400 || !strings.Contains(string(body), "holds more than one JSON value") {
		t.Fatalf("two JSON values: %d %s", code, body)
	}
}

// TestRefusedCallsLogOnce: a flood of refused calls writes one log line,
// which counts them, not one line each.
func TestRefusedCallsLogOnce(t *testing.T) {
	var buf bytes.Buffer // requireToken logs in the caller's goroutine
	logger := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Warn})
	h := requireToken(testToken, http.NotFoundHandler(), logger)
	for range 50 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/status", nil))
	}
	if n := strings.Count(buf.String(), "control API calls refused"); n != 1 {
		t.Fatalf("%d log lines for 50 refused calls, want 1:\n%s", n, buf.String())
	}
}

// TestStatusQuery: status takes a page's limit and cursor, and refuses
// others with what it takes.
func TestStatusQuery(t *testing.T) {
	a := newTCPTestAPI(t)
	for query, want := range map[string]string{
		"?limit=0":          `limit \"0\": want a number from 1 to 1000`,
		"?limit=5000":       `limit \"5000\": want a number from 1 to 1000`,
		"?after=everything": `after \"everything\" is not a request id`,
	} {
		if code, body := a.unixBody(t, "GET", "/v1/status"+query); code != 400 || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d %s; want 400 and %q", query, code, body, want)
		}
	}
	if code, body := a.unixBody(t, "GET", "/v1/status?limit=5&after=r000007"); code != 200 || !strings.Contains(string(body), `"total":0`) {
		t.Errorf("a page: %d %s", code, body)
	}
}
