package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/oklog/run"

	"github.com/phased/phased/sdk/transfer"
	"github.com/phased/phased/supervisor/config"
)

// MaxBodyBytes bounds a control API request body; larger ones get 413.
const MaxBodyBytes = 1 << 20

// DefaultSteps is the number of steps of a submission that names none.
const DefaultSteps = 20

// API serves the control API, HTTP+JSON, on a unix socket and, when
// AddTCP says so, on a TCP listener that requires a bearer token:
//
//	POST   /v1/requests               submit {prompt, seed, steps, key, priority, deadline} → {id}
//	GET    /v1/requests/{id}          one request
//	GET    /v1/requests/{id}/events   NDJSON snapshots until the request ends
//	DELETE /v1/requests/{id}          ordered remove → the final request
//	GET    /v1/status[?limit=N&after=ID&state=S&order=newest]  phases, instances, a page of requests
//	PUT    /v1/phases/{phase}/scale   {instances} → what changed, once the new instances are ready or the retired released
//	GET    /v1/scaler                 the autoscaler, the phases' counts, the scalers on offer
//	PUT    /v1/scaler                 {scaler, params} → make scaler the autoscaler, live ("" turns it off)
//	POST   /v1/release                ordered release; the server then stops
//	GET    /v1/health                 200 while the supervisor answers (liveness)
//	GET    /v1/ready                  200 when every phase has a ready instance, else 503
//	GET    /metrics                   Prometheus text format (see docs/metrics.md)
//	GET    /ui/                       the live dashboard (static; no token needed for its files)
type API struct {
	sup    *Supervisor
	logger hclog.Logger
	srv    *http.Server
	ln     net.Listener
	path   string
	tcp    *http.Server // nil unless AddTCP
	tcpLn  net.Listener
	limits limits
}

// limits bound what clients may hold of the API, so that no client can
// exhaust the supervisor's file descriptors or memory: a TCP listener
// takes at most conns connections, perClient from one address (the
// others are closed at once; the unix socket, whose callers are this
// user, is not limited); every connection has its timeouts.
type limits struct {
	conns, perClient int
	// readHeader bounds reading a request's header (shorter on TCP, where
	// a connection that never authenticates costs a descriptor); read
	// the whole request, body included (a body sent a byte at a time);
	// write the answer, except for the calls that wait (see waits);
	// idle a connection between requests.
	readHeader, tcpReadHeader, read, write, idle time.Duration
}

var defaultLimits = limits{
	conns: 128, perClient: 16,
	readHeader: 10 * time.Second, tcpReadHeader: 5 * time.Second,
	read: 30 * time.Second, write: 30 * time.Second, idle: 2 * time.Minute,
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// Listen creates the control socket at path, 0600 in a directory created
// 0700 if missing. A live supervisor already on path is an error; a stale
// socket file is replaced.
func Listen(path string) (net.Listener, error) {
	if len(path) > transfer.MaxSocketPath {
		return nil, fmt.Errorf("control socket path %s is %d bytes; unix socket paths are limited to %d", path, len(path), transfer.MaxSocketPath)
	}
	if err := privateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("a supervisor is already running at %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// privateDir creates dir 0700, or checks that an existing one is this
// user's and closed to everyone else, as tmux and ssh-agent check their
// socket directories: whoever may write there can rename the supervisor's
// socket away and put their own in its place, and a sticky bit does not
// stop the directory's owner. A directory of another user, or with any
// group or other permission bit, is refused, sticky or not.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory", dir)
	case !ok || int(st.Uid) != os.Getuid():
		return fmt.Errorf("directory %s belongs to uid %d, not to this user (%d): another user could replace what phased puts there; use a directory of your own", dir, st.Uid, os.Getuid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("directory %s is writable by other users (mode %v): it must be private to you (0700); chmod 700 it, or use another directory", dir, fi.Mode().Perm())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("directory %s is open to other users (mode %v): it must be private to you (0700); chmod 700 it, or use another directory", dir, fi.Mode().Perm())
	}
	return nil
}

// NewAPI returns the control API of sup on ln (from Listen), whose socket
// file is at path.
func NewAPI(sup *Supervisor, ln net.Listener, path string, logger hclog.Logger) *API {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	a := &API{sup: sup, logger: logger, ln: ln, path: path, limits: defaultLimits}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/requests", a.submit)
	mux.HandleFunc("GET /v1/requests/{id}", a.get)
	mux.HandleFunc("GET /v1/requests/{id}/events", a.events)
	mux.HandleFunc("DELETE /v1/requests/{id}", a.remove)
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("POST /v1/release", a.release)
	mux.HandleFunc("GET /v1/policies", a.policies)
	mux.HandleFunc("PUT /v1/phases/{phase}/policy", a.setPolicy)
	mux.HandleFunc("PUT /v1/phases/{phase}/shadow", a.setShadow)
	mux.HandleFunc("PUT /v1/phases/{phase}/scale", a.scale)
	mux.HandleFunc("GET /v1/scaler", a.scalers)
	mux.HandleFunc("PUT /v1/scaler", a.setScaler)
	mux.HandleFunc("GET /v1/health", a.health)
	mux.HandleFunc("GET /v1/ready", a.ready)
	mux.Handle("GET /metrics", sup.MetricsHandler())
	mux.Handle("GET /ui/", uiHandler())
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	a.srv = a.newServer(mux, a.limits.readHeader)
	return a
}

// newServer is the http.Server of one listener, with the API's timeouts.
func (a *API) newServer(h http.Handler, readHeader time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: readHeader, ReadTimeout: a.limits.read, WriteTimeout: a.limits.write, IdleTimeout: a.limits.idle}
}

// waits lifts the write timeout of a call that waits for the supervisor
// (a request's end, a release, a policy's start): its answer may come
// long after the call.
func waits(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})
}

// AddTCP makes the API also serve on ln (from ListenTCP), to callers that
// send "Authorization: Bearer " + token; others get 401. token is what
// ReadTokenFile returned: at least MinTokenBytes. Call it before Serve.
func (a *API) AddTCP(ln net.Listener, token string) error {
	if len(token) < MinTokenBytes {
		return fmt.Errorf("control API on %s: the token is %d bytes; it must be at least %d", ln.Addr(), len(token), MinTokenBytes)
	}
	a.tcpLn = newLimitListener(ln, a.limits.conns, a.limits.perClient, a.logger)
	a.tcp = a.newServer(requireToken(token, a.srv.Handler, a.logger), a.limits.tcpReadHeader)
	return nil
}

// Serve serves until Shutdown, on the unix socket and the TCP listener if
// there is one, each an actor of one oklog/run group; it returns nil after
// a Shutdown. When one listener fails, the other server is closed too and
// Serve returns the error.
func (a *API) Serve() error {
	var g run.Group
	add := func(srv *http.Server, ln net.Listener) {
		g.Add(func() error { return srv.Serve(ln) }, func(err error) {
			// After Shutdown every server returns ErrServerClosed and
			// finishes its calls; only a failure closes the others.
			if !errors.Is(err, http.ErrServerClosed) {
				srv.Close()
			}
		})
	}
	add(a.srv, a.ln)
	if a.tcp != nil {
		add(a.tcp, a.tcpLn)
	}
	if err := g.Run(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the servers, waiting for open calls up to ctx and then
// closing the connections still open, and removes the socket file.
func (a *API) Shutdown(ctx context.Context) error {
	err := shutdown(ctx, a.srv)
	if a.tcp != nil {
		err = errors.Join(err, shutdown(ctx, a.tcp))
	}
	if rerr := os.Remove(a.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// shutdown is graceful up to ctx, then forceful.
func shutdown(ctx context.Context, srv *http.Server) error {
	err := srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, srv.Close())
	}
	return err
}

func (a *API) submit(w http.ResponseWriter, r *http.Request) {
	sub := Submission{Steps: DefaultSteps}
	if !a.decode(w, r, &sub) {
		return
	}
	if err := sub.Validate(); err != nil {
		a.fail(w, http.StatusBadRequest, err)
		return
	}
	id, err := a.sup.Submit(sub)
	if err != nil {
		var full *QueueFullError
		if errors.As(err, &full) {
			w.Header().Set("Retry-After", strconv.Itoa(int(full.RetryAfter/time.Second)))
		}
		a.fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"id": id})
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	info, err := a.sup.Request(r.PathValue("id"))
	if err != nil {
		a.fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (a *API) events(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := a.sup.Request(id); err != nil {
		a.fail(w, statusOf(err), err)
		return
	}
	waits(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	// Watch ends when the request ends or the client goes away.
	_ = a.sup.Watch(r.Context(), id, func(info RequestInfo) error {
		if err := enc.Encode(info); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
}

func (a *API) remove(w http.ResponseWriter, r *http.Request) {
	waits(w)
	info, err := a.sup.Remove(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// ScaleChoice is the body of a scaling: the phase's instance count.
type ScaleChoice struct {
	Instances int `json:"instances"`
}

func (a *API) scale(w http.ResponseWriter, r *http.Request) {
	var c ScaleChoice
	if !a.decode(w, r, &c) {
		return
	}
	waits(w) // a scale-in waits up to the release grace for requests
	res, err := a.sup.Scale(r.Context(), r.PathValue("phase"), c.Instances)
	if err != nil {
		a.fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// ScalerChoice is the body of a scaler change: the scaler's name ("":
// none) and its params.
type ScalerChoice struct {
	Scaler string            `json:"scaler"`
	Params map[string]string `json:"params,omitempty"`
}

func (a *API) scalers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.sup.Scalers())
}

func (a *API) setScaler(w http.ResponseWriter, r *http.Request) {
	var c ScalerChoice
	if !a.decode(w, r, &c) {
		return
	}
	if c.Scaler != "" && !config.ValidName(c.Scaler) {
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: scaler %q is not a valid name", ErrBadInput, c.Scaler))
		return
	}
	waits(w)
	if err := a.sup.SetScaler(r.Context(), c.Scaler, c.Params); err != nil {
		a.fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, a.sup.Scalers())
}

// PolicyChoice is the body of a policy or shadow change: the policy's name
// ("" removes a shadow).
type PolicyChoice struct {
	Policy string `json:"policy"`
}

func (a *API) policies(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.sup.Policies())
}

func (a *API) setPolicy(w http.ResponseWriter, r *http.Request) {
	a.changePolicy(w, r, false)
}

func (a *API) setShadow(w http.ResponseWriter, r *http.Request) {
	a.changePolicy(w, r, true)
}

func (a *API) changePolicy(w http.ResponseWriter, r *http.Request, shadow bool) {
	var c PolicyChoice
	if !a.decode(w, r, &c) {
		return
	}
	if c.Policy == "" && !shadow || c.Policy != "" && !config.ValidName(c.Policy) {
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: policy %q is not a valid name", ErrBadInput, c.Policy))
		return
	}
	waits(w)
	set := a.sup.SetPolicy
	if shadow {
		set = a.sup.SetShadow
	}
	if err := set(r.Context(), r.PathValue("phase"), c.Policy); err != nil {
		a.fail(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, a.sup.Policies())
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	page := Page{After: r.URL.Query().Get("after"), State: r.URL.Query().Get("state")}
	switch o := r.URL.Query().Get("order"); o {
	case "", "oldest":
	case "newest":
		page.Newest = true
	default:
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: order %q: want oldest or newest", ErrBadInput, o))
		return
	}
	if page.State != "" && !slices.Contains(RequestStates, page.State) {
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: state %q: want queued, running, done or failed", ErrBadInput, page.State))
		return
	}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageLimit {
			a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: limit %q: want a number from 1 to %d", ErrBadInput, v, MaxPageLimit))
			return
		}
		page.Limit = n
	}
	if page.After != "" && !validID(page.After) {
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: after %q is not a request id", ErrBadInput, page.After))
		return
	}
	writeJSON(w, http.StatusOK, a.sup.Status(r.Context(), os.Getpid(), page))
}

// Health is the body of GET /v1/health and GET /v1/ready.
type Health struct {
	State  string `json:"state"`            // the supervisor's: running, releasing, …
	Ready  bool   `json:"ready"`            // every phase has a ready instance
	Reason string `json:"reason,omitempty"` // why it is not ready
}

// health answers 200 as long as the supervisor serves its API: the
// liveness probe.
func (a *API) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.sup.health())
}

// ready answers 200 when every phase has a ready instance and the
// supervisor takes requests, 503 with the reason otherwise: the
// readiness probe.
func (a *API) ready(w http.ResponseWriter, r *http.Request) {
	h := a.sup.health()
	code := http.StatusOK
	if !h.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

func (a *API) release(w http.ResponseWriter, r *http.Request) {
	// Release is not tied to the caller's connection: once asked, it runs
	// to the end.
	waits(w)
	err := a.sup.Release(context.Background())
	if err != nil {
		a.fail(w, http.StatusInternalServerError, fmt.Errorf("release: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"state": "released"})
}

// decode reads a JSON body of at most MaxBodyBytes into v; it answers 413
// or 400 itself and returns false on failure.
func (a *API) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			a.fail(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body is larger than %d bytes", MaxBodyBytes))
			return false
		}
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: body is not valid JSON for %s %s: %v", ErrBadInput, r.Method, r.URL.Path, err))
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		a.fail(w, http.StatusBadRequest, fmt.Errorf("%w: body of %s %s holds more than one JSON value; send one", ErrBadInput, r.Method, r.URL.Path))
		return false
	}
	return true
}

func (a *API) fail(w http.ResponseWriter, code int, err error) {
	if code >= 500 {
		a.logger.Error("control api", "error", err)
	}
	writeJSON(w, code, ErrorBody{Error: err.Error()})
}

func statusOf(err error) int {
	switch {
	// Not found first: "no such phase" is bad input too.
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrUnknownPhase), errors.Is(err, ErrPluginNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrBadInput):
		return http.StatusBadRequest
	case errors.Is(err, ErrReleasing):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrQueueFull):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrStateFull):
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
