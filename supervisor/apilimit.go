package supervisor

import (
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// limitListener hands out at most max connections of its listener at a
// time, and at most perClient from one IP address. A connection past
// either limit is closed as soon as it is accepted, so that it neither
// holds a descriptor nor waits in the backlog; the refusals are logged
// at most once every rateLogEvery.
type limitListener struct {
	net.Listener
	max, perClient int
	refused        *rateLog

	mu    sync.Mutex
	total int
	byIP  map[string]int
}

func newLimitListener(ln net.Listener, max, perClient int, logger hclog.Logger) *limitListener {
	return &limitListener{
		Listener: ln, max: max, perClient: perClient, byIP: map[string]int{},
		refused: newRateLog(logger, "control API connections refused: too many open", "limit", max, "per_client", perClient),
	}
}

// Accept returns the next connection within the limits.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := c.RemoteAddr().String()
		if host, _, err := net.SplitHostPort(ip); err == nil {
			ip = host
		}
		l.mu.Lock()
		ok := l.total < l.max && l.byIP[ip] < l.perClient
		if ok {
			l.total++
			l.byIP[ip]++
		}
		l.mu.Unlock()
		if !ok {
			c.Close()
			l.refused.log("remote", ip)
			continue
		}
		return &limitedConn{Conn: c, l: l, ip: ip}, nil
	}
}

// limitedConn gives its place back when it is closed.
type limitedConn struct {
	net.Conn
	l    *limitListener
	ip   string
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.total--
		if c.l.byIP[c.ip]--; c.l.byIP[c.ip] <= 0 {
			delete(c.l.byIP, c.ip)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// rateLogEvery is the least time between two lines of one rateLog.
const rateLogEvery = 10 * time.Second

// rateLog logs one warning at most once every rateLogEvery, with how many
// times it happened since the last line: a flood of refused calls must
// not flood the log too.
type rateLog struct {
	logger hclog.Logger
	msg    string
	args   []any

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func newRateLog(logger hclog.Logger, msg string, args ...any) *rateLog {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &rateLog{logger: logger, msg: msg, args: args}
}

// log counts one occurrence, with the key/value pairs of the latest, and
// writes a line unless one was written within rateLogEvery.
func (r *rateLog) log(args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.last) < rateLogEvery {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	n := r.suppressed + 1
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	r.logger.Warn(r.msg, append(append(append([]any(nil), r.args...), args...), "times", n)...)
}
