package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/phased/phased/supervisor/pki"
)

// TestTLSVerb: `tls init` makes the CA directory and says the next step;
// `tls issue HOST` writes a bundle that loads, and says how a host uses
// it; issue before init, a second init and mistakes on the command line
// fail with what to do.
func TestTLSVerb(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "tls")

	_, errOut, code := runMain(t, nil, "tls", "issue", "gpu-1", "--dir", dir)
	want := "supervisor tls issue: no CA in " + dir + " (" + filepath.Join(dir, pki.CAFile) + ": file does not exist): run `supervisor tls init --dir " + dir + "` first, or give the --dir that holds the CA\n"
	if code != ExitFailed || errOut != want {
		t.Fatalf("issue before init: exit %d, stderr %q\nwant %q", code, errOut, want)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("issue before init made %s: %v", dir, err)
	}

	out, errOut, code := runMain(t, nil, "tls", "init", "--dir", dir)
	if code != 0 || errOut != "" || !strings.HasPrefix(out, "made a CA and the cluster's CURVE key in "+dir+":\n") ||
		!strings.HasSuffix(out, "next, issue every host a bundle, the supervisor's too:\n  supervisor tls issue HOST --dir "+dir+"\n") {
		t.Fatalf("init: exit %d, stderr %q, stdout:\n%s", code, errOut, out)
	}
	for _, f := range []string{pki.CAFile, pki.CAKeyFile, pki.CurveFile} {
		if !strings.Contains(out, filepath.Join(dir, f)) {
			t.Errorf("init does not name %s:\n%s", f, out)
		}
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if _, errOut, code := runMain(t, nil, "tls", "init", "--dir", dir); code != ExitFailed || !strings.Contains(errOut, "supervisor tls init: "+filepath.Join(dir, pki.CAFile)+": file already exists: "+dir+" holds a CA already; use another --dir") {
		t.Errorf("second init: exit %d, stderr %q", code, errOut)
	}

	out, errOut, code = runMain(t, nil, "tls", "issue", "gpu-1", "--dir", dir, "--ip", "10.0.0.5", "--dns", "gpu-1.local")
	bundle := filepath.Join(dir, "gpu-1")
	for _, w := range []string{"issued gpu-1 (agent) a bundle in " + bundle + ":\n", "cert.pem   gpu-1's certificate, for gpu-1, gpu-1.local, 10.0.0.5, valid until ",
		"key.pem", "curve.key", "scp -rp " + bundle + " gpu-1:/etc/phased/tls", "supervisor agent --tls-dir /etc/phased/tls"} {
		if code != 0 || errOut != "" || !strings.Contains(out, w) {
			t.Errorf("issue: exit %d, stderr %q; no %q in\n%s", code, errOut, w, out)
		}
	}
	if b, err := pki.LoadBundle(bundle); err != nil || b.Host != "gpu-1" {
		t.Errorf("the bundle issued: %v", err)
	}

	other := filepath.Join(tmp, "bundle-6")
	out, errOut, code = runMain(t, nil, "tls", "issue", "::6", "--dir", dir, "--out", other, "--json")
	var got struct {
		Bundle string   `json:"bundle"`
		Host   string   `json:"host"`
		Names  []string `json:"names"`
		Files  []string `json:"files"`
	}
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil {
		t.Fatalf("issue --json: exit %d, %v, stderr %q, stdout %q", code, err, errOut, out)
	}
	wantFiles := []string{filepath.Join(other, pki.CAFile), filepath.Join(other, pki.CertFile), filepath.Join(other, pki.KeyFile), filepath.Join(other, pki.CurveFile)}
	if got.Bundle != other || got.Host != "::6" || !slices.Equal(got.Names, []string{"::6"}) || !slices.Equal(got.Files, wantFiles) {
		t.Errorf("issue --json: %+v", got)
	}

	for _, tt := range []struct {
		args []string
		err  string // stderr begins with it
	}{
		{[]string{"tls"}, "supervisor tls: want `tls init` or `tls issue HOST`\n"},
		{[]string{"tls", "isue"}, "supervisor tls: unknown verb \"isue\": want `tls init` or `tls issue HOST`; did you mean \"issue\"?\n"},
		{[]string{"tls", "init", "x"}, "supervisor tls init: unexpected argument \"x\"\n"},
		{[]string{"tls", "issue"}, "supervisor tls issue: want exactly one HOST, got 0 arguments\n"},
		{[]string{"tls", "issue", "gpu 2", "--dir", dir}, "supervisor tls issue: bad host name \"gpu 2\": ' ' at byte 4 is not allowed; use letters, digits, '-', '.' and '_', or an IP address\n"},
		{[]string{"tls", "issue", "gpu-2", "--dir", dir, "--ip", "ten"}, "supervisor tls issue: --ip \"ten\" is not an IP address\n"},
	} {
		_, errOut, code := runMain(t, nil, tt.args...)
		if code != ExitUsage || !strings.HasPrefix(errOut, tt.err) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2, %q", tt.args, code, errOut, tt.err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "gpu-2")); !os.IsNotExist(err) {
		t.Errorf("a refused issue made its bundle directory: %v", err)
	}
}
