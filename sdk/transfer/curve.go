package transfer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	zmq "github.com/pebbe/zmq4"
)

// CurveKeyFileEnv names the environment variable that gives a phase
// process the CURVE key file of its cluster (docs/deploy.md): with it,
// the sockets of its zmq rooms are encrypted and authenticated
// (Config.Curve). The supervisor and `supervisor agent` set it for the
// plugins they start when their TLS directory holds a key.
const CurveKeyFileEnv = "PHASED_CURVE_KEY_FILE"

// CurveKeys is a CURVE key pair, each key in Z85 (40 characters).
type CurveKeys struct {
	Public, Secret string
}

// NewCurveKeys makes a new CURVE key pair. It fails when libzmq was built
// without CURVE (libsodium).
func NewCurveKeys() (CurveKeys, error) {
	if !zmq.HasCurve() {
		return CurveKeys{}, errNoCurve
	}
	pub, sec, err := zmq.NewCurveKeypair()
	if err != nil {
		return CurveKeys{}, fmt.Errorf("new CURVE key pair: %w", err)
	}
	return CurveKeys{Public: pub, Secret: sec}, nil
}

var errNoCurve = errors.New("this libzmq has no CURVE security (it was built without libsodium): install Debian's libzmq5")

// check checks that both keys are Z85 of 32 bytes and that the public key
// is the secret key's.
func (k CurveKeys) check() error {
	for _, key := range []struct{ name, z85 string }{{"public", k.Public}, {"secret", k.Secret}} {
		if len(key.z85) != 40 || len(zmq.Z85decode(key.z85)) != 32 {
			return fmt.Errorf("the %s key is not 40 characters of Z85", key.name)
		}
	}
	if !zmq.HasCurve() {
		return errNoCurve
	}
	pub, err := zmq.AuthCurvePublic(k.Secret)
	if err != nil {
		return fmt.Errorf("derive the public key: %w", err)
	}
	if pub != k.Public {
		return errors.New("the public key is not the secret key's")
	}
	return nil
}

// WriteCurveKeyFile writes keys to a new file at path, readable by its
// owner only; it fails if the file exists. The format, two lines:
//
//	public Z85
//	secret Z85
func WriteCurveKeyFile(path string, keys CurveKeys) error {
	if err := keys.check(); err != nil {
		return fmt.Errorf("write CURVE key file %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write CURVE key file: %w", err)
	}
	_, err = fmt.Fprintf(f, "public %s\nsecret %s\n", keys.Public, keys.Secret)
	return errors.Join(err, f.Close())
}

// ReadCurveKeyFile reads a key file written by WriteCurveKeyFile. It
// refuses a file that others than its owner may read, as ssh does.
func ReadCurveKeyFile(path string) (CurveKeys, error) {
	fail := func(format string, args ...any) (CurveKeys, error) {
		return CurveKeys{}, fmt.Errorf("CURVE key file %s: %s", path, fmt.Sprintf(format, args...))
	}
	f, err := os.Open(path)
	if err != nil {
		return CurveKeys{}, fmt.Errorf("CURVE key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return CurveKeys{}, fmt.Errorf("CURVE key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fail("not a regular file")
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fail("mode %04o lets others read the secret key: chmod 600 it", fi.Mode().Perm())
	}
	if fi.Size() > 4096 {
		return fail("%d bytes: a key file holds two lines", fi.Size())
	}
	var keys CurveKeys
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := string(bytes.TrimSpace(sc.Bytes()))
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, value, _ := strings.Cut(text, " ")
		value = strings.TrimSpace(value)
		switch {
		case name == "public" && keys.Public == "":
			keys.Public = value
		case name == "secret" && keys.Secret == "":
			keys.Secret = value
		default:
			return fail("line %d: expected `public KEY` then `secret KEY`, each once", line)
		}
	}
	if err := sc.Err(); err != nil {
		return CurveKeys{}, fmt.Errorf("CURVE key file %s: %w", path, err)
	}
	if keys.Public == "" || keys.Secret == "" {
		return fail("expected two lines, `public KEY` and `secret KEY`")
	}
	if err := keys.check(); err != nil {
		return fail("%v", err)
	}
	return keys, nil
}

// CurveFromEnv reads the key file that $PHASED_CURVE_KEY_FILE names, for
// Config.Curve; nil when the variable is unset or empty.
func CurveFromEnv() (*CurveKeys, error) {
	path := os.Getenv(CurveKeyFileEnv)
	if path == "" {
		return nil, nil
	}
	keys, err := ReadCurveKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("transfer: $%s: %w", CurveKeyFileEnv, err)
	}
	return &keys, nil
}

// With Config.Curve, every tcp socket of a room is a CURVE socket: the
// bound one a server with the cluster's secret key, the connecting one a
// client that knows the server by the cluster's public key and presents
// the cluster's pair (docs/protocol.md section 4.7). The public key is
// public, so CURVE alone would admit anyone who has it: each Manager
// runs a ZAP handler (RFC 27) in its own zmq context, which admits a
// client only if it presents the cluster's public key, which only a
// holder of the secret key can. The handler's ROUTER socket is one more
// socket of the socket owner, in its epoll set like the others (zmq4's
// AuthStart serves the default context only, from a goroutine of its
// own).

// zapEndpoint is where libzmq asks its context's ZAP handler.
const zapEndpoint = "inproc://zeromq.zap.01"

// zapDomain is the ZMQ_ZAP_DOMAIN of every CURVE server socket: with a
// domain set, libzmq asks the ZAP handler about every client.
const zapDomain = "phased"

// curveOverhead is what CURVE adds to a message part on the wire, where
// ZMQ_MAXMSGSIZE counts it: the part travels in a MESSAGE command (its
// name, 8 bytes; nonce, 8; MAC, 16; flags, 1). A CURVE socket's limit is
// raised by it, so that a peer may send the same parts as without CURVE.
const curveOverhead = 33

// handshakeFailed are the monitor events of a failed handshake.
const handshakeFailed = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH

// curveServer makes s, before it binds, a CURVE server with keys' secret
// key, whose clients the ZAP handler vets.
func curveServer(s *zmq.Socket, keys *CurveKeys) error {
	if err := s.SetCurveServer(1); err != nil {
		return fmt.Errorf("set CURVE server: %w", err)
	}
	if err := s.SetCurveSecretkey(keys.Secret); err != nil {
		return fmt.Errorf("set CURVE secret key: %w", err)
	}
	if err := s.SetZapDomain(zapDomain); err != nil {
		return fmt.Errorf("set ZAP domain: %w", err)
	}
	return nil
}

// curveClient makes s, before it connects, a CURVE client of a server
// whose public key is server, presenting the pair own.
func curveClient(s *zmq.Socket, server string, own *CurveKeys) error {
	if err := s.SetCurveServerkey(server); err != nil {
		return fmt.Errorf("set CURVE server key: %w", err)
	}
	if err := s.SetCurvePublickey(own.Public); err != nil {
		return fmt.Errorf("set CURVE public key: %w", err)
	}
	if err := s.SetCurveSecretkey(own.Secret); err != nil {
		return fmt.Errorf("set CURVE secret key: %w", err)
	}
	return nil
}

// handshakeFailure says why a connection's handshake failed, from its
// monitor event, and what to do; curve tells whether this end uses CURVE.
func handshakeFailure(ev zmq.Event, value int, curve bool) string {
	const fix = "every host needs the cluster's CURVE key file, $" + CurveKeyFileEnv
	switch {
	case ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
		return fmt.Sprintf("it refused this process's CURVE key, ZAP status %d: %s", value, fix)
	case ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL && value == protocolErrorMechanismMismatch && curve:
		return "it has no CURVE key: " + fix
	case ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL && value == protocolErrorMechanismMismatch:
		return "it uses CURVE and this process has no key: " + fix
	case ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
		return fmt.Sprintf("libzmq protocol error %#x", value)
	case curve:
		// A CURVE server that cannot open the client's hello (the
		// client expects another server key) closes the connection.
		return fmt.Sprintf("the connection closed during the CURVE handshake (%v), as a peer with another key pair closes it: %s", syscall.Errno(value), fix)
	}
	return fmt.Sprintf("the connection closed during the handshake (%v)", syscall.Errno(value))
}

// serveZAP binds the ZAP handler's ROUTER socket in zctx, before any
// room socket exists there, and adds it to the epoll set. It runs in
// Start, before the owner goroutine starts and takes the socket over.
func (o *owner) serveZAP(zctx *zmq.Context, public string) error {
	s, err := newSocket(zctx, zmq.ROUTER)
	if err != nil {
		return fmt.Errorf("ZAP handler: %w", err)
	}
	if err := s.Bind(zapEndpoint); err != nil {
		return errors.Join(fmt.Errorf("ZAP handler: bind %s: %w", zapEndpoint, err), s.Close())
	}
	o.zap, o.zapKey = s, zmq.Z85decode(public)
	if err := o.watch(s, sockRef{zap: true}); err != nil {
		o.zap = nil
		return errors.Join(fmt.Errorf("ZAP handler: %w", err), s.Close())
	}
	return nil
}

// drainZAP answers up to maxBurst ZAP requests; it reports whether more
// may be waiting. A request without the envelope that libzmq puts
// before it has no one to answer and is dropped.
func (o *owner) drainZAP() bool {
	for range maxBurst {
		parts, err := o.zap.RecvMessageBytes(zmq.DONTWAIT)
		if err != nil {
			if !isEAGAIN(err) {
				o.m.log.Error("receive a ZAP request", "error", err)
			}
			return false
		}
		// parts: the requester's routing id (ROUTER), an empty
		// delimiter, then the request.
		if len(parts) < 2 || len(parts[1]) != 0 {
			o.refuse(500, "a ZAP request without its envelope", "")
			continue
		}
		req := parts[2:]
		code, text := zapVerdict(req, o.zapKey)
		var id []byte
		if len(req) > 1 {
			id = req[1]
		}
		if code != 200 {
			o.refuse(code, text, zapAddress(req))
		}
		if _, err := o.zap.SendMessageDontwait(parts[0], "", "1.0", id, strconv.Itoa(code), text, "", ""); err != nil {
			o.m.log.Debug("answer a ZAP request", "error", err)
		}
	}
	return true
}

// refuse counts a refused (code 400) or unreadable (500) ZAP request,
// and logs it at debug, less and less often: a peer that knocks again
// and again does not fill the log.
func (o *owner) refuse(code int, why, address string) {
	n := o.m.refused.Add(1)
	if n&(n-1) == 0 { // 1, 2, 4, 8, ...
		o.m.log.Debug("CURVE client refused", "status", code, "reason", why, "address", address, "refused_so_far", n)
	}
}

// zapVerdict answers a ZAP request (RFC 27: version, request id, domain,
// address, identity, mechanism, credentials): 200 for a CURVE client in
// our domain that presents key, 400 for any other client, 500 for a
// request it cannot read.
func zapVerdict(req [][]byte, key string) (code int, text string) {
	switch {
	case len(req) < 6:
		return 500, "a ZAP request of " + strconv.Itoa(len(req)) + " frames"
	case string(req[0]) != "1.0":
		return 500, "ZAP version " + strconv.Quote(string(req[0]))
	case string(req[5]) != "CURVE":
		return 400, "mechanism " + strconv.Quote(string(req[5])) + ": only CURVE is allowed"
	case len(req) != 7 || len(req[6]) != 32:
		return 500, "CURVE credentials that are not one 32-byte key"
	case string(req[2]) != zapDomain:
		return 400, "ZAP domain " + strconv.Quote(string(req[2]))
	case string(req[6]) != key:
		return 400, "not the cluster's CURVE key"
	}
	return 200, "OK"
}

// zapAddress is a ZAP request's address frame (the client's IP), for the
// log.
func zapAddress(req [][]byte) string {
	if len(req) < 4 {
		return ""
	}
	return string(req[3])
}

// Refused returns how many clients the Manager's ZAP handler refused
// since Start: CURVE clients that presented another key than
// Config.Curve's (and requests it could not read). A client without
// CURVE is turned away by libzmq before the handler is asked, and not
// counted; its connection is closed all the same.
func (m *Manager) Refused() uint64 { return m.refused.Load() }
