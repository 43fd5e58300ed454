package supervisor

import (
	"os"
	"slices"
	"testing"
)

// TestCPUEnv: a plugin process is given its CPUs as PHASED_CPUS and
// GOMAXPROCS, unless the supervisor's environment sets GOMAXPROCS, which
// then rules; nothing for 0.
func TestCPUEnv(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	os.Unsetenv("GOMAXPROCS")
	if got, want := cpuEnv(3), []string{"PHASED_CPUS=3", "GOMAXPROCS=3"}; !slices.Equal(got, want) {
		t.Errorf("cpuEnv(3) = %q, want %q", got, want)
	}
	if got := cpuEnv(0); got != nil {
		t.Errorf("cpuEnv(0) = %q, want nothing", got)
	}
	t.Setenv("GOMAXPROCS", "8")
	if got, want := cpuEnv(3), []string{"PHASED_CPUS=3"}; !slices.Equal(got, want) {
		t.Errorf("with GOMAXPROCS=8 set: cpuEnv(3) = %q, want %q", got, want)
	}
}
