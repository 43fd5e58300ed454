// Package pki is phased's small certificate authority: the credentials
// that let a supervisor and the agents on other hosts trust each other.
//
// Init makes, in one directory, a CA (an ECDSA P-256 certificate and key)
// and the cluster's CURVE key pair, which encrypts the zmq data between
// hosts. Issue signs a certificate for one host with that CA and writes
// the host's bundle: the CA certificate, the host's certificate and key,
// and a copy of the CURVE key. The same bundle serves an agent as a TLS
// server and a supervisor as a TLS client. LoadBundle reads a bundle back
// and checks it; Bundle.ServerTLS and Bundle.ClientTLS are the mutual
// TLS configurations of the two ends.
//
// The commands `supervisor tls init` and `supervisor tls issue HOST` are
// Init and Issue.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/phased/phased/sdk/transfer"
)

// The files of a CA directory (Init) and of a bundle directory (Issue).
// Both hold CAFile and CurveFile.
const (
	CAFile    = "ca.pem"     // the CA certificate
	CAKeyFile = "ca-key.pem" // the CA's private key (CA directory only)
	CertFile  = "cert.pem"   // the host's certificate (bundle only)
	KeyFile   = "key.pem"    // the host's private key (bundle only)
	CurveFile = "curve.key"  // the cluster's CURVE key pair (transfer.WriteCurveKeyFile)
)

// CAName is the common name of the CA certificate.
const CAName = "phased CA"

// How long certificates are valid. A host certificate never outlives its
// CA. Both start an hour before they are made, so that a host whose
// clock is a little behind accepts them at once.
const (
	caValidYears   = 10
	hostValidYears = 1
	clockSkew      = time.Hour
)

// maxHostLen is the longest HOST: one DNS label. An extra DNS name may
// be a whole name, up to maxDNSLen.
const (
	maxHostLen = 63
	maxDNSLen  = 253
)

// ErrBadHost is the error of Issue for a host, or an extra DNS name, that
// is not a valid name or IP address.
var ErrBadHost = errors.New("bad host name")

// Init makes a CA and the cluster's CURVE key in dir: CAFile, a
// self-signed ECDSA P-256 certificate valid for 10 years; CAKeyFile, its
// key (PKCS#8, mode 0600); CurveFile, a new CURVE key pair (mode 0600).
// It creates dir (0700) when it does not exist. It refuses to overwrite
// any of the three files (the error wraps fs.ErrExist), and leaves no
// file behind when it fails.
func Init(dir string) error {
	advice := fmt.Sprintf("%s holds a CA already; use another --dir, or remove its %s, %s and %s to make a new CA (every host then needs a new bundle)",
		dir, CAFile, CAKeyFile, CurveFile)
	if err := refuseExisting(dir, advice, CAFile, CAKeyFile, CurveFile); err != nil {
		return err
	}
	// Make every secret before writing any file: a libzmq without
	// CURVE must not leave behind a CA with no CURVE key.
	curve, err := transfer.NewCurveKeys()
	if err != nil {
		return fmt.Errorf("CA in %s: %w", dir, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("CA in %s: new key: %w", dir, err)
	}
	serial, err := newSerial()
	if err != nil {
		return fmt.Errorf("CA in %s: %w", dir, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: CAName},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(caValidYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("CA in %s: sign the CA certificate: %w", dir, err)
	}
	keyBytes, err := keyPEM(key)
	if err != nil {
		return fmt.Errorf("CA in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	w := &newFiles{dir: dir}
	err = errors.Join(
		w.write(CAKeyFile, keyBytes, 0o600),
		w.write(CAFile, certPEM(der), 0o644),
		w.curve(curve),
	)
	if err != nil {
		return fmt.Errorf("CA in %s: %w", dir, errors.Join(err, w.undo()))
	}
	return nil
}

// Issue issues host a certificate signed by the CA in caDir and writes
// the host's bundle into out (caDir/host when out is ""), which it
// creates (0700) when it does not exist: CAFile, a copy of the CA's;
// CertFile, the host's certificate; KeyFile, its ECDSA P-256 key (PKCS#8,
// mode 0600); CurveFile, a copy of the CA directory's (mode 0600).
//
// host is a name of letters, digits, '-', '.' and '_' (1 to 63
// characters, beginning with a letter or digit) or an IP address: it is
// the certificate's common name, and its first DNS or IP subject
// alternative name. ips and dns are further names the host is reached
// by. The certificate is valid for a year (never past the CA) for both
// server and client authentication, with a random 128-bit serial.
//
// A bad host or DNS name is ErrBadHost. Issue refuses to overwrite a
// bundle's files (the error wraps fs.ErrExist), and leaves no file
// behind when it fails.
//
// role says what the host is to the others (RoleAgent, RoleSupervisor):
// an agent serves only supervisors, a supervisor dials only agents, so
// that an agent's certificate cannot drive another agent.
func Issue(caDir, host, out string, ips []net.IP, dns []string, role Role) error {
	now := time.Now()
	return issue(caDir, host, out, ips, dns, role, now.Add(-clockSkew), now.AddDate(hostValidYears, 0, 0))
}

// Role is what a certificate's host is in the cluster, written in the
// certificate as the URI subject alternative name phased:role:ROLE.
type Role string

// The roles.
const (
	RoleAgent      Role = "agent"
	RoleSupervisor Role = "supervisor"
)

// Roles lists the roles, for flags.
var Roles = []Role{RoleAgent, RoleSupervisor}

// roleURI is how a role is written in a certificate.
func roleURI(r Role) *url.URL { return &url.URL{Scheme: "phased", Opaque: "role:" + string(r)} }

// RoleOf returns the role a certificate names; "" for none or several.
func RoleOf(cert *x509.Certificate) Role {
	var found Role
	for _, u := range cert.URIs {
		if u.Scheme == "phased" && strings.HasPrefix(u.Opaque, "role:") {
			if found != "" {
				return ""
			}
			found = Role(strings.TrimPrefix(u.Opaque, "role:"))
		}
	}
	if !slices.Contains(Roles, found) {
		return ""
	}
	return found
}

// issue is Issue with the validity of the certificate given; tests make
// expired ones with it.
func issue(caDir, host, out string, ips []net.IP, dns []string, role Role, notBefore, notAfter time.Time) error {
	if !slices.Contains(Roles, role) {
		return fmt.Errorf("certificate of %s: role %q: expected %q or %q", host, role, RoleAgent, RoleSupervisor)
	}
	if err := checkName(host, maxHostLen); err != nil {
		return fmt.Errorf("%w %q: %v", ErrBadHost, host, err)
	}
	for _, name := range dns {
		if err := checkName(name, maxDNSLen); err != nil {
			return fmt.Errorf("%w %q (an extra DNS name of %s): %v", ErrBadHost, name, host, err)
		}
	}
	for _, ip := range ips {
		if len(ip) == 0 {
			return fmt.Errorf("certificate of %s: an extra IP address is empty", host)
		}
	}
	if out == "" {
		out = filepath.Join(caDir, host)
	}
	ca, err := loadCA(caDir)
	if err != nil {
		return err
	}
	if filepath.Clean(out) == filepath.Clean(caDir) {
		return fmt.Errorf("bundle of %s: --out %s is the CA directory; a bundle goes into a directory of its own, which is copied to the host", host, out)
	}
	advice := fmt.Sprintf("%s holds a bundle already; use another --out, or remove its %s, %s, %s and %s to issue a new one",
		out, CAFile, CertFile, KeyFile, CurveFile)
	if err := refuseExisting(out, advice, CAFile, CertFile, KeyFile, CurveFile); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("certificate of %s: new key: %w", host, err)
	}
	serial, err := newSerial()
	if err != nil {
		return fmt.Errorf("certificate of %s: %w", host, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{roleURI(role)},
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	addIP := func(ip net.IP) {
		if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
	}
	addDNS := func(name string) {
		if !slices.ContainsFunc(tmpl.DNSNames, func(n string) bool { return strings.EqualFold(n, name) }) {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	if ip := net.ParseIP(host); ip != nil {
		addIP(ip)
	} else {
		addDNS(host)
	}
	for _, ip := range ips {
		addIP(ip)
	}
	for _, name := range dns {
		addDNS(name)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("certificate of %s: sign: %w", host, err)
	}
	keyBytes, err := keyPEM(key)
	if err != nil {
		return fmt.Errorf("certificate of %s: %w", host, err)
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return fmt.Errorf("bundle of %s: %w", host, err)
	}
	w := &newFiles{dir: out}
	err = errors.Join(
		w.write(KeyFile, keyBytes, 0o600),
		w.write(CertFile, certPEM(der), 0o644),
		w.write(CAFile, ca.pem, 0o644),
		w.curve(ca.curve),
	)
	if err != nil {
		return fmt.Errorf("bundle of %s in %s: %w", host, out, errors.Join(err, w.undo()))
	}
	return nil
}

// authority is what Issue reads of a CA directory.
type authority struct {
	pem   []byte // CAFile as it is, copied into each bundle
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	curve transfer.CurveKeys
}

// loadCA reads and checks the CA of dir: a CA certificate that has not
// expired, its key, and the CURVE key.
func loadCA(dir string) (*authority, error) {
	certFile, keyFile := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	fail := func(format string, args ...any) (*authority, error) {
		return nil, fmt.Errorf("CA in %s: %s", dir, fmt.Sprintf(format, args...))
	}
	pemBytes, err := os.ReadFile(certFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no CA in %s (%s: %w): run `supervisor tls init --dir %s` first, or give the --dir that holds the CA", dir, certFile, fs.ErrNotExist, dir)
	}
	if err != nil {
		return fail("%v", err)
	}
	cert, err := parseCert(pemBytes)
	if err != nil {
		return fail("%s: %v", certFile, err)
	}
	if !cert.IsCA {
		return fail("%s is not a CA certificate", certFile)
	}
	if now := time.Now(); now.After(cert.NotAfter) {
		return fail("%s expired at %s: make a new CA with `supervisor tls init` in another directory, and issue every host a new bundle", certFile, utc(cert.NotAfter))
	}
	keyBytes, err := os.ReadFile(keyFile)
	if err != nil {
		return fail("%v; the CA's key is needed to issue a bundle", err)
	}
	key, err := parseKey(keyBytes)
	if err != nil {
		return fail("%s: %v", keyFile, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return fail("%s is not the key of %s", keyFile, certFile)
	}
	curve, err := transfer.ReadCurveKeyFile(filepath.Join(dir, CurveFile))
	if err != nil {
		return fail("%v", err)
	}
	return &authority{pem: pemBytes, cert: cert, key: key, curve: curve}, nil
}

// checkName says what is wrong with name as a host name of at most max
// characters, or nil. An IP address is a good name.
func checkName(name string, max int) error {
	const allowed = "use letters, digits, '-', '.' and '_', or an IP address"
	switch {
	case net.ParseIP(name) != nil:
		return nil
	case name == "":
		return errors.New("it is empty; give the host's name or IP address")
	case len(name) > max:
		return fmt.Errorf("%d characters; a host name has at most %d", len(name), max)
	}
	for i, r := range name {
		letterOrDigit := 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
		switch {
		case i == 0 && !letterOrDigit:
			return fmt.Errorf("it begins with %q; a host name begins with a letter or digit", r)
		case !letterOrDigit && r != '-' && r != '.' && r != '_':
			return fmt.Errorf("%q at byte %d is not allowed; %s", r, i+1, allowed)
		}
	}
	return nil
}

// refuseExisting returns an error wrapping fs.ErrExist, naming the file
// and giving advice, when one of names exists in dir.
func refuseExisting(dir, advice string, names ...string) error {
	for _, name := range names {
		path := filepath.Join(dir, name)
		_, err := os.Lstat(path)
		switch {
		case err == nil:
			return fmt.Errorf("%s: %w: %s", path, fs.ErrExist, advice)
		case !errors.Is(err, fs.ErrNotExist):
			return err
		}
	}
	return nil
}

// newFiles writes files that must not exist yet into dir, and removes
// those it wrote when a later one fails, so that a failed Init or Issue
// leaves nothing half made. After a failed write, later writes do
// nothing.
type newFiles struct {
	dir    string
	made   []string
	failed bool
}

func (w *newFiles) write(name string, data []byte, mode os.FileMode) error {
	return w.do(name, func(path string) error {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		w.made = append(w.made, path)
		_, err = f.Write(data)
		return errors.Join(err, f.Close())
	})
}

// curve writes the CURVE key file. WriteCurveKeyFile creates it
// exclusively too: a file that is there after it, unless it failed
// because one already was, is this one's to remove.
func (w *newFiles) curve(keys transfer.CurveKeys) error {
	return w.do(CurveFile, func(path string) error {
		err := transfer.WriteCurveKeyFile(path, keys)
		if _, statErr := os.Lstat(path); statErr == nil && !errors.Is(err, fs.ErrExist) {
			w.made = append(w.made, path)
		}
		return err
	})
}

func (w *newFiles) do(name string, write func(path string) error) error {
	if w.failed {
		return nil
	}
	if err := write(filepath.Join(w.dir, name)); err != nil {
		w.failed = true
		return err
	}
	return nil
}

// undo removes the files written.
func (w *newFiles) undo() error {
	var errs []error
	for _, path := range w.made {
		errs = append(errs, os.Remove(path))
	}
	return errors.Join(errs...)
}

// newSerial is a random serial number of 128 bits.
func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("new serial number: %w", err)
	}
	return serial, nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCert reads the first PEM CERTIFICATE block of data.
func parseCert(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// parseKey reads an ECDSA key from the first PEM PRIVATE KEY block
// (PKCS#8) of data.
func parseKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM PRIVATE KEY block (PKCS#8)")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("a %T, not an ECDSA key", key)
	}
	return ec, nil
}
