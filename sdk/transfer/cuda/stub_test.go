//go:build !cuda

package cuda

import (
	"errors"
	"strings"
	"testing"
)

func TestInitWithoutCUDA(t *testing.T) {
	d, err := Init(0)
	if !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("Init(0) error = %v, want ErrNoCUDA", err)
	}
	if d != nil {
		t.Fatalf("Init(0) device = %v, want nil", d)
	}
	if msg := err.Error(); !strings.Contains(msg, "built without -tags cuda") {
		t.Fatalf("ErrNoCUDA says %q; it should tell the user to build with -tags cuda", msg)
	}
}
