package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/phased/phased/sdk/transfer"
)

// Bundle is a host's credentials, read from a bundle directory that Issue
// wrote.
type Bundle struct {
	Dir  string // the bundle directory
	Host string // the certificate's common name
	Role Role   // what the host is in the cluster
	// CA trusts the CA of the bundle, and only it.
	CA *x509.CertPool
	// Cert is the host's certificate and key; Cert.Leaf is parsed.
	Cert tls.Certificate
	// Curve is the cluster's CURVE key pair, read from CurveFile.
	Curve     transfer.CurveKeys
	CurveFile string // the path of the bundle's CURVE key file
}

// LoadBundle reads the bundle directory dir and checks it: CertFile is
// signed by CAFile, for server and client authentication, and valid now;
// KeyFile is its key and readable by its owner only; CurveFile reads
// (transfer.ReadCurveKeyFile). Every file is required. An error names the
// file and says what to do.
func LoadBundle(dir string) (*Bundle, error) {
	fail := func(format string, args ...any) (*Bundle, error) {
		return nil, fmt.Errorf("TLS bundle %s: %s", dir, fmt.Sprintf(format, args...))
	}
	const reissue = "issue the host a new bundle with `supervisor tls issue HOST` and copy it here"
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail("no such directory; %s", reissue)
	case err != nil:
		return fail("%v", err)
	case !fi.IsDir():
		return fail("not a directory; %s", reissue)
	}
	missing := func(name string) error {
		return fmt.Errorf("TLS bundle %s: %s is missing; %s", dir, name, reissue)
	}
	read := func(name string) ([]byte, error) {
		data, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, missing(name)
		case err != nil:
			return nil, fmt.Errorf("TLS bundle %s: %w", dir, err)
		}
		return data, nil
	}
	caPEM, err := read(CAFile)
	if err != nil {
		return nil, err
	}
	caCert, err := parseCert(caPEM)
	if err != nil {
		return fail("%s: %v", CAFile, err)
	}
	certPEMBytes, err := read(CertFile)
	if err != nil {
		return nil, err
	}
	cert, err := parseCert(certPEMBytes)
	if err != nil {
		return fail("%s: %v", CertFile, err)
	}
	keyPath := filepath.Join(dir, KeyFile)
	keyPEMBytes, err := read(KeyFile)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return fail("%s: mode %04o lets others read the private key: chmod 600 %s", KeyFile, fi.Mode().Perm(), keyPath)
	}
	key, err := parseKey(keyPEMBytes)
	if err != nil {
		return fail("%s: %v", KeyFile, err)
	}

	now := time.Now()
	switch {
	case now.After(caCert.NotAfter):
		return fail("the CA certificate %s expired at %s; make a new CA with `supervisor tls init`, then issue every host a new bundle", CAFile, utc(caCert.NotAfter))
	case now.After(cert.NotAfter):
		return fail("the certificate %s of %s expired at %s; %s", CertFile, cert.Subject.CommonName, utc(cert.NotAfter), reissue)
	case now.Before(cert.NotBefore):
		return fail("the certificate %s of %s is valid from %s only, and this host's clock says %s: check the clock", CertFile, cert.Subject.CommonName, utc(cert.NotBefore), utc(now))
	}
	ca := x509.NewCertPool()
	ca.AddCert(caCert)
	_, err = cert.Verify(x509.VerifyOptions{Roots: ca, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(err, &unknown):
		return fail("the certificate %s is not signed by the CA of %s (were they copied from bundles of different CAs?); %s", CertFile, CAFile, reissue)
	case err != nil:
		return fail("the certificate %s: %v; %s", CertFile, err, reissue)
	}
	for _, use := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if !slices.Contains(cert.ExtKeyUsage, use) {
			return fail("the certificate %s is not for both server and client authentication; %s", CertFile, reissue)
		}
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return fail("%s is not the key of %s (were they copied from different bundles?); %s", KeyFile, CertFile, reissue)
	}
	pair, err := tls.X509KeyPair(certPEMBytes, keyPEMBytes)
	if err != nil {
		return fail("%s and %s: %v", CertFile, KeyFile, err)
	}
	pair.Leaf = cert

	curveFile := filepath.Join(dir, CurveFile)
	curve, err := transfer.ReadCurveKeyFile(curveFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, missing(CurveFile)
	case err != nil:
		return fail("%v", err)
	}
	role := RoleOf(cert)
	if role == "" {
		return fail("the certificate %s names no role (agent or supervisor); %s", CertFile, reissue)
	}
	return &Bundle{Dir: dir, Host: cert.Subject.CommonName, Role: role, CA: ca, Cert: pair, Curve: curve, CurveFile: curveFile}, nil
}

// ServerTLS is the TLS configuration of the bundle's host as a server:
// TLS 1.3, the host's certificate, and only clients with a certificate of
// the bundle's CA.
//
// Its peers must hold the other role: an agent serves supervisors only.
func (b *Bundle) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{b.Cert},
		ClientAuth:            tls.RequireAndVerifyClientCert,
		ClientCAs:             b.CA,
		VerifyPeerCertificate: b.peerRole(),
	}
}

// peerRole checks that a verified peer holds the role the bundle's host
// works with: a supervisor for an agent, an agent for a supervisor.
func (b *Bundle) peerRole() func([][]byte, [][]*x509.Certificate) error {
	want := RoleSupervisor
	if b.Role == RoleSupervisor {
		want = RoleAgent
	}
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if len(chains) == 0 || len(chains[0]) == 0 {
			return errors.New("pki: no verified certificate")
		}
		leaf := chains[0][0]
		if got := RoleOf(leaf); got != want {
			return fmt.Errorf("pki: %s's certificate has role %q, want %q (agents serve supervisors only, supervisors dial agents only)", leaf.Subject.CommonName, got, want)
		}
		return nil
	}
}

// ClientTLS is the TLS configuration of the bundle's host as a client of
// serverName: TLS 1.3, the host's certificate, and only a server whose
// certificate, of the bundle's CA, names serverName.
func (b *Bundle) ClientTLS(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{b.Cert},
		RootCAs:               b.CA,
		ServerName:            serverName,
		VerifyPeerCertificate: b.peerRole(),
	}
}

// utc formats t for an error: RFC 3339 in UTC.
func utc(t time.Time) string { return t.UTC().Format(time.RFC3339) }
