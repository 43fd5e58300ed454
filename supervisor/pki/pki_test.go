package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/sdk/transfer"
)

// newCA makes a CA in a new directory and returns the directory.
func newCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newBundle issues host an agent's bundle from the CA in caDir and
// loads it.
func newBundle(t *testing.T, caDir, host string) *Bundle {
	t.Helper()
	return newRoleBundle(t, caDir, host, RoleAgent)
}

// newRoleBundle is newBundle for a host of role.
func newRoleBundle(t *testing.T, caDir, host string, role Role) *Bundle {
	t.Helper()
	if err := Issue(caDir, host, "", nil, nil, role); err != nil {
		t.Fatal(err)
	}
	b, err := LoadBundle(filepath.Join(caDir, host))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantModes checks the permission bits of paths.
func wantModes(t *testing.T, modes map[string]fs.FileMode) {
	t.Helper()
	for path, want := range modes {
		fi, err := os.Stat(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", path, got, want)
		}
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCert(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return cert
}

func readKey(t *testing.T, path string) *ecdsa.PrivateKey {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key, err := parseKey(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return key
}

// TestInit: the CA directory is private and holds a self-signed P-256 CA
// certificate of 10 years that may sign only end certificates, its
// PKCS#8 key (0600) and a CURVE key pair (0600).
func TestInit(t *testing.T) {
	dir := newCA(t)
	wantModes(t, map[string]fs.FileMode{
		dir:                           0o700,
		filepath.Join(dir, CAKeyFile): 0o600,
		filepath.Join(dir, CurveFile): 0o600,
		filepath.Join(dir, CAFile):    0o644,
	})
	cert := readCert(t, filepath.Join(dir, CAFile))
	key := readKey(t, filepath.Join(dir, CAKeyFile))
	switch {
	case cert.Subject.CommonName != "phased CA":
		t.Errorf("CN %q", cert.Subject.CommonName)
	case !cert.IsCA || !cert.BasicConstraintsValid || cert.MaxPathLen != 0 || !cert.MaxPathLenZero:
		t.Errorf("IsCA %v, constraints %v, MaxPathLen %d, zero %v", cert.IsCA, cert.BasicConstraintsValid, cert.MaxPathLen, cert.MaxPathLenZero)
	case cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		t.Errorf("key usage %b", cert.KeyUsage)
	case key.Curve != elliptic.P256() || !key.PublicKey.Equal(cert.PublicKey):
		t.Errorf("the key is on %s, or not the certificate's", key.Curve.Params().Name)
	case cert.CheckSignatureFrom(cert) != nil:
		t.Errorf("not self-signed: %v", cert.CheckSignatureFrom(cert))
	}
	if years := cert.NotAfter.Sub(cert.NotBefore).Hours() / 24 / 365; years < 9.99 || years > 10.01 {
		t.Errorf("valid for %.2f years (%s to %s)", years, cert.NotBefore, cert.NotAfter)
	}
	if _, err := transfer.ReadCurveKeyFile(filepath.Join(dir, CurveFile)); err != nil {
		t.Error(err)
	}
}

// TestInitRefuses: Init never overwrites a CA, nor a stray CA key or
// CURVE key, names the file it found, says what to do, and writes
// nothing.
func TestInitRefuses(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(dir string) error
		found   string // the file the error names
	}{
		{"a second Init", Init, CAFile},
		{"a CA key alone", func(dir string) error { return os.WriteFile(filepath.Join(dir, CAKeyFile), nil, 0o600) }, CAKeyFile},
		{"a CURVE key alone", func(dir string) error { return os.WriteFile(filepath.Join(dir, CurveFile), nil, 0o600) }, CurveFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tt.prepare(dir); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadDir(dir)
			err := Init(dir)
			want := filepath.Join(dir, tt.found) + ": file already exists: " + dir +
				" holds a CA already; use another --dir, or remove its ca.pem, ca-key.pem and curve.key to make a new CA (every host then needs a new bundle)"
			if err == nil || err.Error() != want || !errors.Is(err, fs.ErrExist) {
				t.Fatalf("Init: %v\nwant %s", err, want)
			}
			if after, _ := os.ReadDir(dir); len(after) != len(before) {
				t.Errorf("Init wrote files: %d before, %d after", len(before), len(after))
			}
		})
	}
}

// TestIssue: a bundle is private and holds the CA's certificate and
// CURVE key as they are, and a P-256 certificate for HOST and the extra
// names, for server and client authentication, valid for a year, with a
// random serial of at most 128 bits.
func TestIssue(t *testing.T) {
	caDir := newCA(t)
	caPEM, _ := os.ReadFile(filepath.Join(caDir, CAFile))
	curvePEM, _ := os.ReadFile(filepath.Join(caDir, CurveFile))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tests := []struct {
		host    string
		out     string // "" for caDir/host
		ips     []net.IP
		dns     []string
		wantDNS []string
		wantIPs []string
	}{
		{host: "gpu-1", wantDNS: []string{"gpu-1"}},
		{host: "10.0.0.5", wantIPs: []string{"10.0.0.5"}},
		{host: "gpu_2.rack-3", out: filepath.Join(t.TempDir(), "b", "gpu2"),
			ips: []net.IP{net.ParseIP("10.0.0.6"), net.ParseIP("::1"), net.ParseIP("10.0.0.6")}, dns: []string{"gpu2.cluster.local", "GPU_2.rack-3"},
			wantDNS: []string{"gpu_2.rack-3", "gpu2.cluster.local"}, wantIPs: []string{"10.0.0.6", "::1"}},
	}
	serials := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if err := Issue(caDir, tt.host, tt.out, tt.ips, tt.dns, RoleAgent); err != nil {
				t.Fatal(err)
			}
			out := tt.out
			if out == "" {
				out = filepath.Join(caDir, tt.host)
			}
			wantModes(t, map[string]fs.FileMode{out: 0o700, filepath.Join(out, KeyFile): 0o600, filepath.Join(out, CurveFile): 0o600})
			for name, want := range map[string][]byte{CAFile: caPEM, CurveFile: curvePEM} {
				if got, _ := os.ReadFile(filepath.Join(out, name)); !bytes.Equal(got, want) {
					t.Errorf("%s is not a copy of the CA directory's", name)
				}
			}
			cert := readCert(t, filepath.Join(out, CertFile))
			key := readKey(t, filepath.Join(out, KeyFile))
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			switch {
			case cert.Subject.CommonName != tt.host:
				t.Errorf("CN %q", cert.Subject.CommonName)
			case !slices.Equal(cert.DNSNames, tt.wantDNS) || !slices.Equal(ips, tt.wantIPs):
				t.Errorf("DNS names %q, IPs %q; want %q, %q", cert.DNSNames, ips, tt.wantDNS, tt.wantIPs)
			case !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}):
				t.Errorf("extended key usage %v", cert.ExtKeyUsage)
			case cert.IsCA:
				t.Errorf("a host certificate is a CA")
			case key.Curve != elliptic.P256() || !key.PublicKey.Equal(cert.PublicKey):
				t.Errorf("the key is on %s, or not the certificate's", key.Curve.Params().Name)
			case cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.Cmp(new(big.Int).Lsh(big.NewInt(1), 128)) >= 0 || serials[cert.SerialNumber.String()]:
				t.Errorf("serial %v: not in (0, 2^128), or seen before", cert.SerialNumber)
			}
			serials[cert.SerialNumber.String()] = true
			if days := cert.NotAfter.Sub(cert.NotBefore).Hours() / 24; days < 365 || days > 367 {
				t.Errorf("valid for %.1f days", days)
			}
			for _, use := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{use}}); err != nil {
					t.Errorf("verify for %v: %v", use, err)
				}
			}
		})
	}
}

// TestIssueRefuses: a bad host or DNS name, a directory with no CA, an
// existing bundle and the CA directory as the bundle's are refused with
// what was wrong, and no bundle file is written.
func TestIssueRefuses(t *testing.T) {
	caDir := newCA(t)
	noCA := t.TempDir()
	if err := Issue(caDir, "taken", "", nil, nil, RoleAgent); err != nil {
		t.Fatal(err)
	}
	taken := filepath.Join(caDir, "taken")
	allowed := "; use letters, digits, '-', '.' and '_', or an IP address"
	tests := []struct {
		caDir, host string
		dns         []string
		out         string
		want        string
		is          error
	}{
		{caDir, "", nil, "", `bad host name "": it is empty; give the host's name or IP address`, ErrBadHost},
		{caDir, "gpu 1", nil, "", `bad host name "gpu 1": ' ' at byte 4 is not allowed` + allowed, ErrBadHost},
		{caDir, "a/b", nil, "", `bad host name "a/b": '/' at byte 2 is not allowed` + allowed, ErrBadHost},
		{caDir, "gpü", nil, "", `bad host name "gpü": 'ü' at byte 3 is not allowed` + allowed, ErrBadHost},
		{caDir, "..", nil, "", `bad host name "..": it begins with '.'; a host name begins with a letter or digit`, ErrBadHost},
		{caDir, "-h", nil, "", `bad host name "-h": it begins with '-'; a host name begins with a letter or digit`, ErrBadHost},
		{caDir, strings.Repeat("a", 64), nil, "", `bad host name "` + strings.Repeat("a", 64) + `": 64 characters; a host name has at most 63`, ErrBadHost},
		{caDir, "gpu-1", []string{"ok.example", "bad name"}, "", `bad host name "bad name" (an extra DNS name of gpu-1): ' ' at byte 4 is not allowed` + allowed, ErrBadHost},
		{noCA, "gpu-1", nil, "", "no CA in " + noCA + " (" + filepath.Join(noCA, CAFile) + ": file does not exist): run `supervisor tls init --dir " + noCA + "` first, or give the --dir that holds the CA", fs.ErrNotExist},
		{caDir, "taken", nil, "", filepath.Join(taken, CAFile) + ": file already exists: " + taken + " holds a bundle already; use another --out, or remove its ca.pem, cert.pem, key.pem and curve.key to issue a new one", fs.ErrExist},
		{caDir, "gpu-1", nil, caDir + "/", "bundle of gpu-1: --out " + caDir + "/ is the CA directory; a bundle goes into a directory of its own, which is copied to the host", nil},
	}
	for _, tt := range tests {
		err := Issue(tt.caDir, tt.host, tt.out, nil, tt.dns, RoleAgent)
		if err == nil || err.Error() != tt.want || tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("Issue(%q, %q): %v\nwant %s (is %v)", tt.caDir, tt.host, err, tt.want, tt.is)
		}
	}
	entries, _ := os.ReadDir(caDir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{CAKeyFile, CAFile, CurveFile, "taken"}; !slices.Equal(names, want) {
		t.Errorf("the CA directory holds %q after the refusals, want %q", names, want)
	}
}

// handshake runs one TLS handshake on loopback between a server with srv
// and a client with cli. It returns the common name of the client's
// certificate as the server saw it, and each side's error. After its
// handshake the client reads the byte the server sends after its own:
// in TLS 1.3 the server refuses a client's certificate after the
// client's handshake has returned, and the client learns it on reading.
func handshake(t *testing.T, srv, cli *tls.Config) (peerCN string, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cn  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(conn, srv)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		var cn string
		if peers := tc.ConnectionState().PeerCertificates; len(peers) > 0 {
			cn = peers[0].Subject.CommonName
		}
		_, err = tc.Write([]byte{1})
		done <- result{cn, err}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, cli)
	clientErr = tc.Handshake()
	if clientErr == nil {
		_, clientErr = tc.Read(make([]byte, 1))
	}
	conn.Close() // a server still reading learns the client gave up
	r := <-done
	return r.cn, r.err, clientErr
}

// TestMutualTLS: two bundles of one CA complete a handshake and the
// server sees the client's host; a client of another CA, a client with
// no certificate, a server of another CA, and a server that is not the
// host the client asked for are refused.
func TestMutualTLS(t *testing.T) {
	caDir, otherCA := newCA(t), newCA(t)
	// b is an agent, c a supervisor, d another agent.
	b, c := newBundle(t, caDir, "host-b"), newRoleBundle(t, caDir, "host-c", RoleSupervisor)
	d := newBundle(t, caDir, "host-d")
	stranger := newRoleBundle(t, otherCA, "host-x", RoleSupervisor)
	// An agent as a client that does not check the server's role: the
	// refusal is the server's.
	agentClient := d.ClientTLS("host-b")
	agentClient.VerifyPeerCertificate = nil
	noCert := c.ClientTLS("host-b")
	noCert.Certificates = nil
	// A client with a certificate of another CA, that trusts the server:
	// the refusal is the server's.
	strangerClient := stranger.ClientTLS("host-b")
	strangerClient.RootCAs = b.CA
	tests := []struct {
		name                 string
		srv, cli             *tls.Config
		wantCN               string
		serverErr, clientErr string // in the errors; "" for none
	}{
		{"one CA", b.ServerTLS(), c.ClientTLS("host-b"), "host-c", "", ""},
		{"client of another CA", b.ServerTLS(), strangerClient, "",
			"tls: failed to verify certificate: x509: certificate signed by unknown authority", "remote error: tls: unknown certificate authority"},
		{"client with no certificate", b.ServerTLS(), noCert, "",
			"tls: client didn't provide a certificate", "remote error: tls: certificate required"},
		{"server of another CA", stranger.ServerTLS(), c.ClientTLS("host-x"), "",
			"remote error: tls: bad certificate", "tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		{"client of the agent role: an agent cannot drive another", b.ServerTLS(), agentClient, "",
			`pki: host-d's certificate has role "agent", want "supervisor"`, "remote error: tls: bad certificate"},
		{"server of the supervisor role", stranger.ServerTLS(), stranger.ClientTLS("host-x"), "",
			"remote error: tls: bad certificate", `pki: host-x's certificate has role "supervisor", want "agent"`},
		{"server not the host asked for", b.ServerTLS(), c.ClientTLS("host-c"), "",
			"remote error: tls: bad certificate", "tls: failed to verify certificate: x509: certificate is valid for host-b, not host-c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cn, serverErr, clientErr := handshake(t, tt.srv, tt.cli)
			check := func(side string, err error, want string) {
				if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
					t.Errorf("%s: %v; want %q", side, err, want)
				}
			}
			check("server", serverErr, tt.serverErr)
			check("client", clientErr, tt.clientErr)
			if cn != tt.wantCN {
				t.Errorf("the server saw the client %q, want %q", cn, tt.wantCN)
			}
		})
	}
	if v := b.ServerTLS().MinVersion; v != tls.VersionTLS13 || b.ClientTLS("x").MinVersion != tls.VersionTLS13 {
		t.Errorf("minimum TLS version %x", v)
	}
}

// TestLoadBundle: a bundle reads back with its host, its CA and the
// cluster's CURVE key.
func TestLoadBundle(t *testing.T) {
	caDir := newCA(t)
	b := newBundle(t, caDir, "gpu-1")
	curve, err := transfer.ReadCurveKeyFile(filepath.Join(caDir, CurveFile))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(caDir, "gpu-1")
	switch {
	case b.Dir != dir || b.Host != "gpu-1" || b.CurveFile != filepath.Join(dir, CurveFile):
		t.Errorf("Dir %q, Host %q, CurveFile %q", b.Dir, b.Host, b.CurveFile)
	case b.Curve != curve:
		t.Errorf("Curve %v, want the CA directory's", b.Curve)
	case b.Cert.Leaf == nil || b.Cert.Leaf.Subject.CommonName != "gpu-1":
		t.Errorf("Cert.Leaf %v", b.Cert.Leaf)
	case !b.CA.Equal(newBundle(t, caDir, "gpu-2").CA):
		t.Errorf("two bundles of one CA have different pools")
	}
}

// TestLoadBundleRefuses: a bundle with a file missing, a key of another
// bundle, a certificate out of its validity, a certificate of another CA
// or a key others may read is refused, naming the file and saying what
// to do.
func TestLoadBundleRefuses(t *testing.T) {
	caDir, otherCA := newCA(t), newCA(t)
	const reissue = "; issue the host a new bundle with `supervisor tls issue HOST` and copy it here"
	expired := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	future := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	tests := []struct {
		name string
		// make makes the bundle in dir; nil issues an ordinary one.
		make func(dir string) error
		// spoil changes the bundle in dir.
		spoil func(dir string) error
		want  string // the error after "TLS bundle DIR: "
	}{
		{"no directory", nil, os.RemoveAll, "no such directory" + reissue},
		{"a file for a directory", nil, func(dir string) error {
			return errors.Join(os.RemoveAll(dir), os.WriteFile(dir, nil, 0o600))
		}, "not a directory" + reissue},
		{"no ca.pem", nil, remove(CAFile), "ca.pem is missing" + reissue},
		{"no cert.pem", nil, remove(CertFile), "cert.pem is missing" + reissue},
		{"no key.pem", nil, remove(KeyFile), "key.pem is missing" + reissue},
		{"no curve.key", nil, remove(CurveFile), "curve.key is missing" + reissue},
		{"the key of another bundle", nil, func(dir string) error {
			other := filepath.Join(t.TempDir(), "other")
			if err := Issue(caDir, "gpu-1", other, nil, nil, RoleAgent); err != nil {
				return err
			}
			return copyFile(filepath.Join(other, KeyFile), filepath.Join(dir, KeyFile))
		}, "key.pem is not the key of cert.pem (were they copied from different bundles?)" + reissue},
		{"a CA of another cluster", nil, func(dir string) error {
			return copyFile(filepath.Join(otherCA, CAFile), filepath.Join(dir, CAFile))
		}, "the certificate cert.pem is not signed by the CA of ca.pem (were they copied from bundles of different CAs?)" + reissue},
		{"expired", func(dir string) error {
			return issue(caDir, "gpu-1", dir, nil, nil, RoleAgent, expired.AddDate(-1, 0, 0), expired)
		}, nil, "the certificate cert.pem of gpu-1 expired at 2024-03-01T12:00:00Z" + reissue},
		{"not valid yet", func(dir string) error {
			return issue(caDir, "gpu-1", dir, nil, nil, RoleAgent, future, future.AddDate(1, 0, 0))
		}, nil, "the certificate cert.pem of gpu-1 is valid from " + utc(future) + " only, and this host's clock says "},
		{"a key others may read", nil, func(dir string) error { return os.Chmod(filepath.Join(dir, KeyFile), 0o644) },
			"key.pem: mode 0644 lets others read the private key: chmod 600 "},
		{"a CURVE key others may read", nil, func(dir string) error { return os.Chmod(filepath.Join(dir, CurveFile), 0o640) },
			"CURVE key file "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "bundle")
			mk := tt.make
			if mk == nil {
				mk = func(dir string) error { return Issue(caDir, "gpu-1", dir, nil, nil, RoleAgent) }
			}
			if err := mk(dir); err != nil {
				t.Fatal(err)
			}
			if tt.spoil != nil {
				if err := tt.spoil(dir); err != nil {
					t.Fatal(err)
				}
			}
			b, err := LoadBundle(dir)
			want := "TLS bundle " + dir + ": " + tt.want
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("LoadBundle = %v, %v\nwant %s", b, err, want)
			}
		})
	}
}

func remove(name string) func(dir string) error {
	return func(dir string) error { return os.Remove(filepath.Join(dir, name)) }
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o600)
}
