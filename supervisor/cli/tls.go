package cli

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/phased/phased/supervisor/pki"
)

// defaultTLSDir is where `tls init` makes the CA and `tls issue` finds it.
const defaultTLSDir = "./phased-tls"

// tlsCmd is `supervisor tls init|issue`: it makes the cluster's CA and
// CURVE key, and issues each host its bundle (package pki).
func (a *app) tlsCmd() *cobra.Command {
	var dir string
	var asJSON bool
	args, run := subVerbs("`tls init` or `tls issue HOST`")
	cmd := &cobra.Command{
		Use:   "tls (init | issue HOST)",
		Short: "Make the cluster's CA and CURVE key; issue each host its TLS bundle",
		Long: `A supervisor and the agents on other hosts talk over mutual TLS, and the
data between hosts goes over zmq with CURVE. ` + "`tls init`" + ` makes the credentials
once: a CA and the cluster's CURVE key, in --dir. ` + "`tls issue HOST`" + ` signs a
certificate for HOST with that CA and writes HOST's bundle directory, which
is copied to HOST: an agent reads it with ` + "`supervisor agent --tls-dir DIR`" + `,
a supervisor with ` + "`cluster { tls_dir = \"DIR\" }`" + ` in its config.

Keep the CA directory private, on one host: its key issues bundles, and
its CURVE key reads the cluster's data.`,
		Example: `  supervisor tls init
  supervisor tls issue gpu-1 --ip 10.0.0.5
  supervisor tls issue supervisor --dns phased.example.com`,
		Args:        args,
		RunE:        run,
		Annotations: map[string]string{groupOnly: "true"},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&dir, "dir", defaultTLSDir, "the CA's `DIR`: its certificate and key, and the cluster's CURVE key")
	pf.BoolVar(&asJSON, "json", false, "print what was written as JSON")

	cmd.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Make a CA and the cluster's CURVE key in --dir",
		Long: `Makes, in --dir (created 0700 if need be): ` + pki.CAFile + `, a self-signed CA
certificate (ECDSA P-256, 10 years); ` + pki.CAKeyFile + `, its private key (0600);
and ` + pki.CurveFile + `, the cluster's CURVE key pair (0600), which every bundle
copies. It refuses to overwrite a CA: a new CA means a new bundle for
every host.`,
		Example: `  supervisor tls init
  supervisor tls init --dir /etc/phased/ca`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := pki.Init(dir); err != nil {
				return err
			}
			files := []string{filepath.Join(dir, pki.CAFile), filepath.Join(dir, pki.CAKeyFile), filepath.Join(dir, pki.CurveFile)}
			if asJSON {
				return printJSON(a.stdout, struct {
					Dir   string   `json:"dir"`
					Files []string `json:"files"`
				}{dir, files})
			}
			fmt.Fprintf(a.stdout, "made a CA and the cluster's CURVE key in %s:\n", dir)
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "  %s\tthe CA certificate (%s, 10 years)\n", files[0], pki.CAName)
			fmt.Fprintf(tw, "  %s\tits private key: keep it private, on this host\n", files[1])
			fmt.Fprintf(tw, "  %s\tthe cluster's CURVE key pair, copied into every bundle\n", files[2])
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "next, issue every host a bundle, the supervisor's too:\n  supervisor tls issue HOST --dir %s\n", dir)
			return nil
		},
	})

	var out, role string
	var ips, names []string
	issue := &cobra.Command{
		Use:   "issue HOST",
		Short: "Issue HOST a certificate of the CA in --dir, into a bundle directory for HOST",
		Long: `Issues HOST a certificate signed by the CA in --dir, and writes HOST's
bundle into --out (created 0700 if need be): ` + pki.CAFile + `, a copy of the CA
certificate; ` + pki.CertFile + `, HOST's certificate; ` + pki.KeyFile + `, its private key (ECDSA
P-256, 0600); and ` + pki.CurveFile + `, a copy of the cluster's CURVE key (0600).

The certificate names HOST (a DNS name, or an IP address when HOST is
one) and every --ip and --dns: name each address the others reach HOST
by. It is valid for a year, for both server and client authentication,
and names the host's --role: an agent (the default) serves supervisors
only, a supervisor dials agents only, so that one agent's certificate
cannot drive another agent. HOST is letters,
digits, '-', '.' and '_' (1 to 63 characters, beginning with a letter or
digit) or an IP address. It refuses to overwrite a bundle.`,
		Example: `  supervisor tls issue gpu-1 --ip 10.0.0.5
  supervisor tls issue 10.0.0.6 --dir /etc/phased/ca --out /tmp/gpu-6
  supervisor tls issue supervisor --role supervisor --dns phased.example.com`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("want exactly one HOST, got %s", arguments(len(args)))
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			host := args[0]
			var addrs []net.IP
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return usagef("--ip %q is not an IP address", s)
				}
				addrs = append(addrs, ip)
			}
			bundle := out
			if bundle == "" {
				bundle = filepath.Join(dir, host)
			}
			if !slices.Contains(pki.Roles, pki.Role(role)) {
				return usagef("--role %q: expected agent or supervisor", role)
			}
			err := pki.Issue(dir, host, bundle, addrs, names, pki.Role(role))
			if errors.Is(err, pki.ErrBadHost) {
				return &exitError{code: ExitUsage, err: err}
			}
			if err != nil {
				return err
			}
			b, err := pki.LoadBundle(bundle)
			if err != nil {
				return fmt.Errorf("the bundle just issued does not load: %w", err)
			}
			return a.printBundle(b, asJSON)
		},
	}
	issue.Flags().StringVar(&role, "role", string(pki.RoleAgent), "what HOST is: `agent` or supervisor")
	issue.Flags().StringVar(&out, "out", "", "write the bundle into `OUT` (default: DIR/HOST, DIR being --dir)")
	issue.Flags().StringArrayVar(&ips, "ip", nil, "one more `IP` address the certificate names (repeat it)")
	issue.Flags().StringArrayVar(&names, "dns", nil, "one more DNS `NAME` the certificate names (repeat it)")
	cmd.AddCommand(issue)
	return cmd
}

// printBundle says what `tls issue` wrote, and how a host uses it.
func (a *app) printBundle(b *pki.Bundle, asJSON bool) error {
	leaf := b.Cert.Leaf
	names := slices.Clone(leaf.DNSNames)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	files := []string{pki.CAFile, pki.CertFile, pki.KeyFile, pki.CurveFile}
	if asJSON {
		paths := make([]string, len(files))
		for i, f := range files {
			paths[i] = filepath.Join(b.Dir, f)
		}
		return printJSON(a.stdout, struct {
			Bundle   string    `json:"bundle"`
			Host     string    `json:"host"`
			Role     pki.Role  `json:"role"`
			Names    []string  `json:"names"`
			NotAfter time.Time `json:"not_after"`
			Files    []string  `json:"files"`
		}{b.Dir, b.Host, b.Role, names, leaf.NotAfter.UTC(), paths})
	}
	fmt.Fprintf(a.stdout, "issued %s (%s) a bundle in %s:\n", b.Host, b.Role, b.Dir)
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  %s\tthe CA certificate\n", pki.CAFile)
	fmt.Fprintf(tw, "  %s\t%s's certificate, for %s, valid until %s\n", pki.CertFile, b.Host, strings.Join(names, ", "), leaf.NotAfter.UTC().Format(time.DateOnly))
	fmt.Fprintf(tw, "  %s\tits private key\n", pki.KeyFile)
	fmt.Fprintf(tw, "  %s\tthe cluster's CURVE key pair\n", pki.CurveFile)
	if err := tw.Flush(); err != nil {
		return err
	}
	remote := b.Host
	if strings.Contains(remote, ":") {
		remote = "[" + remote + "]" // an IPv6 address, for scp
	}
	use := "supervisor agent --tls-dir /etc/phased/tls"
	if b.Role == pki.RoleSupervisor {
		use = `cluster { tls_dir = "/etc/phased/tls" } in the supervisor's config`
	}
	fmt.Fprintf(a.stdout, "copy the directory to %s and keep it private there (e.g. scp -rp %s %s:/etc/phased/tls), then:\n  %s\n", b.Host, b.Dir, remote, use)
	return nil
}
