package sdk

import (
	"bytes"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestRaiseFDLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)
	if orig.Max < 300 {
		t.Skipf("hard limit %d is too low to lower the soft one", orig.Max)
	}
	low := orig
	low.Cur = 256
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	got := RaiseFDLimit(hclog.New(&hclog.LoggerOptions{Output: &log}))
	if got != orig.Max {
		t.Fatalf("RaiseFDLimit = %d, want the hard limit %d", got, orig.Max)
	}
	if !strings.Contains(log.String(), "raised the file-descriptor limit: from=256") {
		t.Fatalf("log %q does not say it raised the limit", log.String())
	}
}
