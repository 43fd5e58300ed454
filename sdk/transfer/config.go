package transfer

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// DefaultShmDir is where receivers create their shared-memory segments when
// Config.ShmDir is empty.
const DefaultShmDir = "/dev/shm"

// Defaults of the Config fields that bound the segment pool and peers.
const (
	// DefaultPoolBytes bounds the bytes of idle segments a receiver keeps
	// for reuse.
	DefaultPoolBytes = 1 << 30
	// DefaultPoolSegments bounds the number of idle segments a receiver
	// keeps for reuse.
	DefaultPoolSegments = 32
	// DefaultPeerTimeout is how long a room waits for a vanished peer to
	// come back before it fails.
	DefaultPeerTimeout = 10 * time.Second
)

// MaxSocketPath is the longest unix socket path the kernel accepts
// (sun_path is 108 bytes with its terminating NUL).
const MaxSocketPath = 107

// Config configures a Manager.
type Config struct {
	// Dir is the run directory where room sockets are bound. It must exist
	// and be short enough for the longest socket path (see MaxSocketPath).
	Dir string
	// Name identifies this manager in segment names and logs; it must match
	// ^[A-Za-z0-9_.-]{1,64}$ and be unique among the processes sharing
	// ShmDir (e.g. instance name + pid).
	Name string
	// ShmDir holds shared-memory segments; empty means DefaultShmDir.
	ShmDir string
	// PoolBytes and PoolSegments bound the receiver's pool of idle
	// shared-memory segments, kept mapped for the next rooms (see the
	// package comment): at most PoolSegments segments of PoolBytes bytes
	// in all; the least recently freed are unlinked first. 0 means
	// DefaultPoolBytes and DefaultPoolSegments; a negative value disables
	// the pool (every room gets a new segment).
	PoolBytes    int64
	PoolSegments int
	// PeerTimeout bounds how long a room waits for its peer once the
	// connection to it broke (the peer process died, was released, or
	// closed the room): if it does not reconnect within PeerTimeout, the
	// room fails with a reason naming the peer's endpoint. 0 means
	// DefaultPeerTimeout; it must not be negative.
	PeerTimeout time.Duration
	// ZMQHost is the address that the sockets of zmq rooms bind to, on a
	// port the system picks (tcp://ZMQHost:*); the bound endpoint is
	// reported. "" means DefaultZMQHost, loopback: name this host's address
	// on the network between the hosts to reach across them.
	ZMQHost string
	// CUDA enables the cuda backend on GPU CUDADevice (an ordinal among
	// the devices the process sees, see CUDA_VISIBLE_DEVICES): Start
	// retains its primary context, and fails in a build without -tags
	// cuda or on a host without that GPU.
	CUDA       bool
	CUDADevice int
	// VerifyHandoffs guards zero-copy hand-offs (docs/protocol.md
	// section 5.6) against a writer that writes an output after it was
	// sent: as a receiver, Receive hashes every tensor lent to it and
	// compares the writer's checksum, as it does for copied ones; as a
	// sender, the Manager maps each output it lent read-only until the
	// receiver gives it back, so that such a write faults in the writer.
	// Off by default: the bytes never move, so there is no copy to check,
	// and both cost more than the hand-off itself (a read of every byte;
	// an mprotect, about 30 µs per MiB on a 2-vCPU VM).
	VerifyHandoffs bool
	// Curve, when set, secures the sockets of zmq rooms (tcp://) with
	// ZeroMQ CURVE: every bound one is a CURVE server with this secret
	// key, every connecting one a CURVE client that expects this public
	// key of its server and presents this pair, and the Manager's ZAP
	// handler admits only clients that present this public key. The
	// whole cluster shares one pair (ReadCurveKeyFile), so a peer
	// without it cannot connect: its room fails after PeerTimeout. nil
	// means no encryption and no authentication. ipc sockets (shm and
	// cuda rooms) are not affected.
	Curve *CurveKeys
	// MaxSockets bounds the zmq sockets of the Manager (each room holds up
	// to four); 0 means the process's file-descriptor limit. An open past
	// it fails with ErrTooManyFiles.
	MaxSockets int
	// Logger receives the manager's logs as given (name it before passing
	// it in); nil means no logs.
	Logger hclog.Logger
}

// DefaultZMQHost is where zmq rooms bind unless Config.ZMQHost says.
const DefaultZMQHost = "127.0.0.1"

// CheckHost checks an address that zmq rooms may bind to: a host name or
// an IP address (IPv6 in brackets), without scheme, port or wildcard.
func CheckHost(host string) error {
	if host == "" || strings.ContainsAny(host, "/*") || (strings.Contains(host, ":") && !strings.HasPrefix(host, "[")) {
		return errors.New("expected a host name or IP address, e.g. 127.0.0.1, 10.0.0.5 or [::1]")
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// longestSocketName is the longest socket file name a Manager creates.
var longestSocketName = receiverSocketName(math.MaxUint64, math.MaxUint64)

func senderSocketName(room uint64) string { return "s-" + strconv.FormatUint(room, 10) + ".sock" }

func receiverSocketName(room, gen uint64) string {
	return "r-" + strconv.FormatUint(room, 10) + "-" + strconv.FormatUint(gen, 10) + ".sock"
}

// ProcessName is the Config.Name of the Manager of an instance's plugin
// process: INSTANCE.PID. Segment names carry it, so that the supervisor
// can tell whose a segment is and sweep those of a process that died.
func ProcessName(instance string, pid int) string {
	return instance + "." + strconv.Itoa(pid)
}

// SplitProcessName splits a ProcessName at its last '.' (an instance id
// may hold dots itself).
func SplitProcessName(name string) (instance string, pid int, ok bool) {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 {
		return "", 0, false
	}
	pid, err := strconv.Atoi(name[i+1:])
	if err != nil || pid <= 0 || name[i+1] == '+' {
		return "", 0, false
	}
	return name[:i], pid, true
}

// SegmentOwner returns the Config.Name of the Manager that made a segment,
// from the segment's file name: phased-NAME-ROOM-GENERATION for a room's,
// phased-NAME-free-N for an idle one in its pool, phased-NAME-out-N for
// an output segment (Alloc) and phased-NAME-lends-0 for its lend table.
// The name is read from the right, since NAME may hold '-' itself.
func SegmentOwner(segment string) (name string, ok bool) {
	rest, ok := strings.CutPrefix(segment, "phased-")
	if !ok {
		return "", false
	}
	rest, last, ok := cutLast(rest)
	if !ok || !isDigits(last) {
		return "", false
	}
	rest, room, ok := cutLast(rest)
	if !ok || room != "free" && room != "out" && room != "lends" && !isDigits(room) {
		return "", false
	}
	return rest, nameRE.MatchString(rest)
}

// cutLast cuts s at its last '-'.
func cutLast(s string) (before, after string, ok bool) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func segmentName(name string, room, gen uint64) string {
	return "phased-" + name + "-" + strconv.FormatUint(room, 10) + "-" + strconv.FormatUint(gen, 10)
}

// normalize checks c and returns it with defaults filled in and Dir and
// ShmDir made absolute. It only reads the file system.
func (c Config) normalize() (Config, error) {
	if !nameRE.MatchString(c.Name) {
		return c, fmt.Errorf("transfer: config: Name %q must match %s", c.Name, nameRE)
	}
	if c.Dir == "" {
		return c, fmt.Errorf("transfer: config: Dir is empty: set it to the run directory for room sockets")
	}
	dir, err := existingDir("Dir", c.Dir)
	if err != nil {
		return c, err
	}
	longest := filepath.Join(dir, longestSocketName)
	if len(longest) > MaxSocketPath {
		return c, fmt.Errorf("transfer: config: Dir %q is too long: socket path %q is %d bytes, the unix socket limit is %d; use a run directory of at most %d bytes",
			dir, longest, len(longest), MaxSocketPath, MaxSocketPath-len(longestSocketName)-1)
	}
	c.Dir = dir
	if c.ShmDir == "" {
		c.ShmDir = DefaultShmDir
	}
	if c.ShmDir, err = existingDir("ShmDir", c.ShmDir); err != nil {
		return c, err
	}
	switch {
	case c.PoolBytes == 0:
		c.PoolBytes = DefaultPoolBytes
	case c.PoolBytes < 0:
		c.PoolBytes = 0
	}
	switch {
	case c.PoolSegments == 0:
		c.PoolSegments = DefaultPoolSegments
	case c.PoolSegments < 0:
		c.PoolSegments = 0
	}
	if c.PoolBytes == 0 || c.PoolSegments == 0 {
		c.PoolBytes, c.PoolSegments = 0, 0
	}
	switch {
	case c.PeerTimeout == 0:
		c.PeerTimeout = DefaultPeerTimeout
	case c.PeerTimeout < 0:
		return c, fmt.Errorf("transfer: config: PeerTimeout %v is negative: use a positive duration, or 0 for the default %v", c.PeerTimeout, DefaultPeerTimeout)
	}
	if c.MaxSockets < 0 {
		return c, fmt.Errorf("transfer: config: MaxSockets %d is negative: use 0 for the file-descriptor limit", c.MaxSockets)
	}
	if c.CUDADevice < 0 {
		return c, fmt.Errorf("transfer: config: CUDADevice %d is negative: name a device ordinal, 0 for the first GPU", c.CUDADevice)
	}
	if c.ZMQHost == "" {
		c.ZMQHost = DefaultZMQHost
	}
	if err := CheckHost(c.ZMQHost); err != nil {
		return c, fmt.Errorf("transfer: config: ZMQHost %q: %w", c.ZMQHost, err)
	}
	if c.Curve != nil {
		keys := *c.Curve // the caller's may change
		if err := keys.check(); err != nil {
			return c, fmt.Errorf("transfer: config: Curve: %w", err)
		}
		c.Curve = &keys
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c, nil
}

func existingDir(field, dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("transfer: config: %s %q: %w", field, dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("transfer: config: %s: %w", field, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("transfer: config: %s %q is not a directory", field, abs)
	}
	return abs, nil
}
