// Package plugintest runs phased plugins through the real gRPC layer in
// memory (go-plugin's test connection), so that a plugin author tests a
// Policy exactly as the supervisor will call it, without building a
// binary. Phases go through sdk/phasetest.Start, which adds the phase
// runtime. Neither this package nor sdk imports the transfer manager, so
// a policy's tests build without cgo.
package plugintest

import (
	"os"
	"testing"

	"github.com/hashicorp/go-plugin"

	"github.com/phased/phased/sdk"
)

// Policy serves p over gRPC in memory, the way sdk.ServePolicy serves it in
// a plugin process, and returns the supervisor's side of it. The
// connection closes when the test ends.
func Policy(t testing.TB, p sdk.Policy) sdk.Policy {
	t.Helper()
	return Dispense[sdk.Policy](t, sdk.PluginPolicy, &sdk.PolicyPlugin{Impl: p})
}

// Dispense serves the go-plugin plugin p under name over gRPC in memory
// and returns what the supervisor's side dispenses from it, as a T. The
// connection closes when the test ends.
func Dispense[T any](t testing.TB, name string, p plugin.Plugin) T {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, map[string]plugin.Plugin{name: p})
	// Closing the client also stops the in-memory server, through
	// go-plugin's controller.
	t.Cleanup(func() { client.Close() })
	raw, err := client.Dispense(name)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := raw.(T)
	if !ok {
		t.Fatalf("plugintest: dispensed %T for %q", raw, name)
	}
	return v
}

// RunDir returns a new directory for an instance's sockets (an
// sdk.InstanceConfig's RunDir), under /tmp so that socket paths stay
// within the 107 bytes unix sockets allow; it is removed when the test
// ends.
func RunDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "phased-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
