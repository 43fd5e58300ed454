package supervisor

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// MinTokenBytes is the shortest bearer token the TCP control API accepts.
const MinTokenBytes = 16

// maxTokenFile bounds what ReadTokenFile reads.
const maxTokenFile = 4096

// ErrTokenFile is wrapped by every error about a token file's content or
// permissions.
var ErrTokenFile = errors.New("bad token file")

// ReadTokenFile returns the bearer token in the file at path, without the
// whitespace around it. Like ssh with a private key, it refuses a file that
// group or others may read or write, and it refuses a token shorter than
// MinTokenBytes or one with spaces or control characters inside.
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file", ErrTokenFile, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%w: permissions %04o for %s are too open; it must be readable by its owner only: chmod 600 %s", ErrTokenFile, perm, path, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("%w: %s is larger than %d bytes; it should hold only the token", ErrTokenFile, path, maxTokenFile)
	}
	tok := string(bytes.TrimSpace(b))
	switch {
	case tok == "":
		return "", fmt.Errorf("%w: %s is empty; put a random token in it, e.g. `head -c 32 /dev/urandom | base64 > %s`", ErrTokenFile, path, path)
	case len(tok) < MinTokenBytes:
		return "", fmt.Errorf("%w: the token in %s is %d bytes; it must be at least %d, e.g. `head -c 32 /dev/urandom | base64 > %s`", ErrTokenFile, path, len(tok), MinTokenBytes, path)
	}
	if i := strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }); i >= 0 {
		return "", fmt.Errorf("%w: the token in %s has a space or control character at byte %d; use one line of base64 or hex", ErrTokenFile, path, i)
	}
	return tok, nil
}

// ErrNoToken is returned by ListenTCP when it is given no token file.
var ErrNoToken = errors.New("no token file")

// ListenTCP reads the bearer token from tokenFile (ReadTokenFile) and then
// opens the control API's TCP listener on addr (HOST:PORT). A TCP listener
// without a token is refused: anyone who can connect could drive the
// supervisor.
func ListenTCP(addr, tokenFile string) (ln net.Listener, token string, err error) {
	if tokenFile == "" {
		return nil, "", fmt.Errorf("control API on %s: %w: give --token-file FILE (or token_file in the config's control block), "+
			"a file only you can read holding at least %d random bytes, e.g. `(umask 077; head -c 32 /dev/urandom | base64 > phased.token)`",
			addr, ErrNoToken, MinTokenBytes)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, "", fmt.Errorf("control API: listen address %q: %w; expected HOST:PORT, e.g. 127.0.0.1:7070", addr, err)
	}
	if token, err = ReadTokenFile(tokenFile); err != nil {
		return nil, "", fmt.Errorf("control API on %s: %w", addr, err)
	}
	if ln, err = net.Listen("tcp", addr); err != nil {
		return nil, "", fmt.Errorf("control API: %w", err)
	}
	return ln, token, nil
}

// Loopback reports whether a listener's address a is on loopback only; any
// other is reachable from the network.
func Loopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// requireToken passes on the calls whose Authorization header carries
// token as a bearer token and answers the others 401, logged at most once
// every rateLogEvery. The comparison takes the same time whatever the
// token sent: both sides are hashed first, so not even the length leaks.
func requireToken(token string, next http.Handler, logger hclog.Logger) http.Handler {
	want := sha256.Sum256([]byte(token))
	refused := newRateLog(logger, "control API calls refused")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && isUIPath(r.URL.Path) {
			// The dashboard's static files hold no data; the page
			// sends the token with every call it makes.
			next.ServeHTTP(w, r)
			return
		}
		scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		got := sha256.Sum256([]byte(strings.TrimSpace(cred)))
		if strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		msg := "wrong bearer token"
		if !strings.EqualFold(scheme, "Bearer") {
			msg = "the control API on TCP needs a bearer token: send Authorization: Bearer TOKEN, with the token of the supervisor's --token-file"
		}
		refused.log("remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", msg)
		w.Header().Set("WWW-Authenticate", `Bearer realm="phased"`)
		writeJSON(w, http.StatusUnauthorized, ErrorBody{Error: msg})
	})
}
