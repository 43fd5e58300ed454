// Package phasetest tests phase plugins. Start serves a Go sdk.Phase
// through the real gRPC layer and the Go phase runtime in memory; the
// conformance kit (Run, RunBinary) checks that a phase plugin, in memory or
// a built binary of any language started as the supervisor starts it,
// keeps the phase protocol of docs/protocol.md:
//
//	func TestConformance(t *testing.T) {
//		phasetest.Run(t, func() sdk.Phase { return smooth.New() }, phasetest.Case{
//			Request: sdk.Request{ID: "r1", Prompt: "a fox", Seed: 1, Steps: 2},
//			Next:    []tensor.Spec{smooth.LatentSpec(params)},
//		})
//	}
//
//	func TestBinary(t *testing.T) {
//		phasetest.RunBinary(t, "bin/phased-phase-smooth", c) // built beforehand
//	}
//
// The checks, each on a fresh instance:
//
//   - Info: kind "phase", API version 1, and for a binary the NAME of its
//     file phased-phase-NAME;
//   - Configure: once, with the case's params; a second Configure and an
//     instance id that cannot name a segment are refused as invalid;
//   - Ready: refused before Configure, then ready;
//   - Rooms: a sender room reports an ipc endpoint in the instance's run
//     directory; Status lists the rooms open and their roles; room 0 is
//     refused; removing a room twice, or one never opened, succeeds;
//   - Transfer, over shm and over zmq: a request whose inputs come from a
//     reference peer (a transfer manager in the test process) and whose
//     outputs go to one, checksums verified on both sides, or whose
//     artifact is written with the SHA-256 it reports; the progress stream
//     shows the Run from waiting to finished;
//   - Hostile: descriptors that would make it write outside a buffer,
//     overlap buffers, escape the shared-memory directory or name a bad
//     status endpoint fail that room with a reason; frames for another
//     room, of another version or not protobuf at all are dropped and
//     counted; a Success whose checksum does not match fails the
//     receiving room and its Run; the instance then still serves;
//   - Release: no socket file and no shared-memory segment of the instance
//     is left, and a binary exits by itself on the controller's Shutdown
//     (go-plugin does not have to kill it) leaving no process of its group.
package phasetest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/phase"
	"github.com/phased/phased/sdk/plugintest"
	"github.com/phased/phased/sdk/tensor"
)

// Start serves p over gRPC in memory, the way phase.Serve serves it in a
// plugin process, and returns the supervisor's side of it: every
// PhaseControl call, Ready (for a Loader) and Progress (for
// sdk.ReportProgress) included. The connection closes when the test ends.
func Start(t testing.TB, p sdk.Phase) sdk.PhaseControl {
	t.Helper()
	return plugintest.Dispense[sdk.PhaseControl](t, sdk.PluginPhase, &sdk.PhasePlugin{Impl: phase.New(p, nil)})
}

// Case is what the kit needs to know to drive a phase: how to configure
// it, a request, and what the next phase of a pipeline takes from it.
type Case struct {
	// Params are given to Configure.
	Params map[string]string
	// Request is run through the phase; the kit sets its ArtifactDir.
	Request sdk.Request
	// Next lists the tensors the next phase takes from this one (as that
	// phase's Inputs declare them). Empty for the last phase of a
	// pipeline, which must return an artifact.
	Next []tensor.Spec
	// Fill makes the inputs the reference peer sends for the phase's
	// declared input specs; nil fills them with a fixed pattern.
	Fill func(specs []tensor.Spec) ([]tensor.Tensor, error)
	// Timeout bounds each call to the phase; 0 is a minute.
	Timeout time.Duration
	// Settle bounds how long the kit waits for the instance to show the
	// effect of what it sent (a room failed, a frame counted, a Run's
	// last progress event); 0 is ten seconds.
	Settle time.Duration
}

// Run checks the phase that newPhase returns, served through the Go phase
// runtime and the real gRPC layer in memory. Each check gets a fresh
// instance.
func Run(t *testing.T, newPhase func() sdk.Phase, c Case) {
	t.Helper()
	run(t, c, "", func(t *testing.T) instance {
		return instance{ctl: Start(t, newPhase()), pid: os.Getpid()}
	})
}

// RunBinary checks the phase plugin binary at path, started as the
// supervisor starts it; each check starts its own process. Its Info must
// name it as its file does (phased-phase-NAME).
func RunBinary(t *testing.T, path string, c Case) {
	t.Helper()
	run(t, c, plugintest.NameOf(path, sdk.KindPhase), func(t *testing.T) instance {
		p := plugintest.Start(t, path, sdk.KindPhase)
		ctl, ok := p.Raw.(sdk.PhaseControl)
		if !ok {
			t.Fatalf("phasetest: %s: dispensed %T, not a phase", path, p.Raw)
		}
		return instance{ctl: ctl, pid: p.Pid, stop: p.Stop, killed: p.Killed}
	})
}

// instance is one phase instance under test: its client, the pid of its
// process, and for a binary how to stop it gracefully.
type instance struct {
	ctl    sdk.PhaseControl
	pid    int
	stop   func()      // go-plugin's graceful shutdown; nil in memory
	killed func() bool // after stop: whether it had to be killed
}

func run(t *testing.T, c Case, name string, start func(t *testing.T) instance) {
	if c.Timeout == 0 {
		c.Timeout = time.Minute
	}
	if c.Settle == 0 {
		c.Settle = 10 * time.Second
	}
	k := &kit{c: c}
	t.Run("Info", func(t *testing.T) { k.checkInfo(t, start(t), name) })
	t.Run("Configure", func(t *testing.T) { k.checkConfigure(t, start(t)) })
	t.Run("Rooms", func(t *testing.T) { k.checkRooms(t, k.configured(t, start(t))) })
	for _, b := range []sdk.Backend{sdk.BackendShm, sdk.BackendZMQ} {
		t.Run("Transfer/"+string(b), func(t *testing.T) { k.checkTransfer(t, k.configured(t, start(t)), b) })
	}
	t.Run("Hostile", func(t *testing.T) { k.checkHostile(t, k.configured(t, start(t))) })
	t.Run("Release", func(t *testing.T) { k.checkRelease(t, k.configured(t, start(t))) })
}

// kit runs the checks of one Case.
type kit struct {
	c Case
}

// call returns a context for one call to the phase.
func (k *kit) call(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), k.c.Timeout)
	t.Cleanup(cancel)
	return ctx
}
