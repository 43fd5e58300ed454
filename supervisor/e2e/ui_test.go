package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/phased/phased/supervisor"
)

// chromium returns Debian's headless-capable Chromium, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH (Debian: apt-get install chromium); make deps installs it")
	return ""
}

// browse loads url in headless Chromium, lets its scripts run for a few
// seconds of virtual time, and returns the DOM it then holds; with shot,
// it also saves a screenshot there.
func browse(t *testing.T, bin, profile, url, shot string) string {
	t.Helper()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--user-data-dir=" + profile, "--window-size=1400,900", "--virtual-time-budget=4000"}
	if shot != "" {
		args = append(args, "--screenshot="+shot)
	} else {
		args = append(args, "--dump-dom")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, errb.String())
	}
	return out.String()
}

// rowState returns the state the dashboard's request table shows for id.
func rowState(dom, id string) string {
	m := regexp.MustCompile(`<tr data-id="` + regexp.QuoteMeta(id) + `" data-state="([a-z]+)"`).FindStringSubmatch(dom)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestDashboard drives the live page in headless Chromium against a
// supervisor on a loopback TCP listener: the page takes the token from
// its fragment, shows the instances, and shows a request queued behind a
// long one, then done; it saves a screenshot (PHASED_UI_SCREENSHOT names
// where, else the test's temporary directory).
func TestDashboard(t *testing.T) {
	bin := chromium(t)
	dir := shortDir(t)
	tokenFile := filepath.Join(dir, "token")
	const token = "dashboard-test-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := startSupervisor(t, dir, writeConfig(t, dir, fmt.Sprintf("max_inflight = 1\nparams = { height = 64, width = 64 }\ncontrol {\n  listen = %q\n  token_file = %q\n}\n", addr, tokenFile)+pipeline))
	ctx := context.Background()
	long, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "long", Steps: 10000})
	if err != nil {
		t.Fatal(err)
	}
	queued, err := p.client.Submit(ctx, supervisor.Submission{Prompt: "waits", Steps: 3})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + addr + "/ui/#token=" + token
	profile := filepath.Join(dir, "chromium")

	dom := browse(t, bin, profile, url, "")
	if got := rowState(dom, queued); got != supervisor.StateQueued {
		t.Fatalf("the page shows request %s as %q, want queued; DOM:\n%s", queued, got, dom)
	}
	if got := rowState(dom, long); got != supervisor.StateRunning {
		t.Errorf("the page shows request %s as %q, want running", long, got)
	}
	for _, want := range []string{`data-instance="transformer-1"`, "#1 in queue", `data-state="running">running</span>`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page has no %q", want)
		}
	}

	if _, err := p.client.Remove(ctx, long); err != nil {
		t.Fatal(err)
	}
	if info, err := p.client.Watch(ctx, queued, nil); err != nil || info.State != supervisor.StateDone {
		t.Fatalf("%s: %+v, %v", queued, info, err)
	}
	dom = browse(t, bin, profile, url, "")
	if got := rowState(dom, queued); got != supervisor.StateDone {
		t.Fatalf("the page shows request %s as %q after it ended, want done; DOM:\n%s", queued, got, dom)
	}
	for _, span := range []string{"queued", "schedule", "run", "hop", "remove", "artifact"} {
		if !strings.Contains(dom, `data-span="`+span+`"`) {
			t.Errorf("the page draws no %q span", span)
		}
	}
	shot := os.Getenv("PHASED_UI_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "dashboard.png")
	}
	browse(t, bin, profile, url, shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)
	p.release(t)
}
