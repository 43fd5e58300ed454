package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// ErrNoSupervisor is wrapped when nothing answers on the control socket.
var ErrNoSupervisor = errors.New("no supervisor")

// Client talks to a supervisor's control API over its unix socket, or
// over TCP with a bearer token.
type Client struct {
	Socket string // the unix socket; "" for a TCP client
	Addr   string // HOST:PORT of a TCP client; "" for a unix one
	token  string
	base   string // the URL calls are made under
	http   *http.Client
}

// NewClient returns a client for the supervisor at socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, base: "http://phased", http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// NewTCPClient returns a client for the supervisor whose control API
// listens on addr (HOST:PORT, from `supervisor start --listen`); every call
// carries token as a bearer token. It speaks plain HTTP: reach a supervisor
// on another host through an SSH tunnel.
func NewTCPClient(addr, token string) *Client {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return &Client{Addr: addr, token: token, base: "http://" + addr, http: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}}
}

// Submit submits a request and returns its id.
func (c *Client) Submit(ctx context.Context, sub Submission) (string, error) {
	var out struct {
		ID string `json:"id"`
	}
	err := c.do(ctx, http.MethodPost, "/v1/requests", sub, &out)
	return out.ID, err
}

// Request returns one request.
func (c *Client) Request(ctx context.Context, id string) (RequestInfo, error) {
	var out RequestInfo
	err := c.do(ctx, http.MethodGet, "/v1/requests/"+url.PathEscape(id), nil, &out)
	return out, err
}

// Watch calls fn with each snapshot of the request until it ends, and
// returns the last one.
func (c *Client) Watch(ctx context.Context, id string, fn func(RequestInfo)) (RequestInfo, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/requests/"+url.PathEscape(id)+"/events", nil)
	if err != nil {
		return RequestInfo{}, err
	}
	defer resp.Body.Close()
	var last RequestInfo
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var info RequestInfo
		if err := json.Unmarshal(sc.Bytes(), &info); err != nil {
			return last, fmt.Errorf("events of %s: %w", id, err)
		}
		last = info
		if fn != nil {
			fn(info)
		}
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("events of %s: %w", id, err)
	}
	if !last.Terminal() {
		return last, fmt.Errorf("events of %s: the supervisor closed the stream before the request ended", id)
	}
	return last, nil
}

// Remove removes a request and returns its final state.
func (c *Client) Remove(ctx context.Context, id string) (RequestInfo, error) {
	var out RequestInfo
	err := c.do(ctx, http.MethodDelete, "/v1/requests/"+url.PathEscape(id), nil, &out)
	return out, err
}

// Status returns the supervisor's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return c.StatusPage(ctx, Page{})
}

// StatusPage returns the supervisor's status with the page of requests
// page selects.
func (c *Client) StatusPage(ctx context.Context, page Page) (Status, error) {
	q := url.Values{}
	if page.Limit > 0 {
		q.Set("limit", strconv.Itoa(page.Limit))
	}
	if page.After != "" {
		q.Set("after", page.After)
	}
	if page.State != "" {
		q.Set("state", page.State)
	}
	if page.Newest {
		q.Set("order", "newest")
	}
	path := "/v1/status"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out Status
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Metrics returns the supervisor's metrics in Prometheus's text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	resp, err := c.send(ctx, http.MethodGet, "/metrics", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// Health returns the supervisor's state and readiness (GET /v1/ready;
// its 503 is not an error here: Ready says it).
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/v1/ready", nil, &h)
	var ae *APIError
	if errors.As(err, &ae) && ae.Code == http.StatusServiceUnavailable {
		return c.health(ctx)
	}
	return h, err
}

func (c *Client) health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "/v1/health", nil, &h)
	return h, err
}

// Policies returns each phase's policies and the policy processes.
func (c *Client) Policies(ctx context.Context) (PolicyList, error) {
	var out PolicyList
	err := c.do(ctx, http.MethodGet, "/v1/policies", nil, &out)
	return out, err
}

// SetPolicy makes policy the live policy of phase (make before break).
func (c *Client) SetPolicy(ctx context.Context, phase, policy string) (PolicyList, error) {
	var out PolicyList
	err := c.do(ctx, http.MethodPut, "/v1/phases/"+url.PathEscape(phase)+"/policy", PolicyChoice{Policy: policy}, &out)
	return out, err
}

// SetShadow makes policy the shadow of phase; "" removes it.
func (c *Client) SetShadow(ctx context.Context, phase, policy string) (PolicyList, error) {
	var out PolicyList
	err := c.do(ctx, http.MethodPut, "/v1/phases/"+url.PathEscape(phase)+"/shadow", PolicyChoice{Policy: policy}, &out)
	return out, err
}

// Scale sets phase's instance count to n; it returns once the new
// instances are ready or the retired ones released.
func (c *Client) Scale(ctx context.Context, phase string, n int) (ScaleResult, error) {
	var out ScaleResult
	err := c.do(ctx, http.MethodPut, "/v1/phases/"+url.PathEscape(phase)+"/scale", ScaleChoice{Instances: n}, &out)
	return out, err
}

// Scalers returns the autoscaler, the phases' counts and the scalers on
// offer.
func (c *Client) Scalers(ctx context.Context) (ScalerList, error) {
	var out ScalerList
	err := c.do(ctx, http.MethodGet, "/v1/scaler", nil, &out)
	return out, err
}

// SetScaler makes scaler name the autoscaler, with params; "" turns
// autoscaling off.
func (c *Client) SetScaler(ctx context.Context, name string, params map[string]string) (ScalerList, error) {
	var out ScalerList
	err := c.do(ctx, http.MethodPut, "/v1/scaler", ScalerChoice{Scaler: name, Params: params}, &out)
	return out, err
}

// Release asks for an ordered release and returns when it is done.
func (c *Client) Release(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/release", nil, nil)
}

// APIError is an error answer of the control API.
type APIError struct {
	Code int
	Msg  string
	// RetryAfter is the answer's Retry-After (a 429: the queue is full),
	// 0 when it has none.
	RetryAfter time.Duration
}

func (e *APIError) Error() string { return e.Msg }

// Unwrap makes a 404 match ErrNotFound (errors.Is): no such request,
// phase or policy plugin; and a 429 ErrQueueFull.
func (e *APIError) Unwrap() error {
	switch e.Code {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusTooManyRequests:
		return ErrQueueFull
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// send makes a call and turns connection failures and error answers into
// errors a user can act on.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		switch {
		case c.Addr == "" && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)):
			return nil, fmt.Errorf("%w at %s (start one with `supervisor start`)", ErrNoSupervisor, c.Socket)
		case c.Addr != "" && errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("%w at %s (start one with `supervisor start --listen %s --token-file FILE`)", ErrNoSupervisor, c.Addr, c.Addr)
		case c.Addr != "":
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("supervisor at %s: %w", c.Addr, err)
		}
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var eb ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		if resp.StatusCode == http.StatusUnauthorized {
			eb.Error = fmt.Sprintf("supervisor at %s refused the call: %s", c.Addr, eb.Error)
		}
		ae := &APIError{Code: resp.StatusCode, Msg: eb.Error}
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			ae.RetryAfter = time.Duration(min(secs, 86400)) * time.Second
		}
		return nil, ae
	}
	return resp, nil
}
