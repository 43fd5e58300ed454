package sdk

import (
	"context"

	"github.com/phased/phased/sdk/tensor"
)

// Allocator gives a phase memory for its outputs that the next hop can
// hand to the receiver instead of copying it: shared memory of the
// phase's own process, on one host (docs/protocol.md section 5.6). The
// phase runtime puts one in the context of every Run that has a next
// phase; Alloc and Written find it there.
type Allocator interface {
	// Alloc returns a tensor for spec. Its bytes are not zeroed.
	Alloc(spec tensor.Spec) (tensor.Tensor, error)
	// Written records the checksum (tensor.Checksum, or tensor.Chain
	// over its blocks in order) of a tensor from Alloc that the phase
	// computed while writing it in full, so that the hop does not read
	// it again.
	Written(t tensor.Tensor, sum uint64) error
}

type allocatorKey struct{}

// WithAllocator returns ctx carrying a, for Alloc and Written (the phase
// runtime's, and tests').
func WithAllocator(ctx context.Context, a Allocator) context.Context {
	return context.WithValue(ctx, allocatorKey{}, a)
}

// Alloc returns a tensor for spec to write an output of Phase.Run into.
// Where the run's next hop stays on this host, its bytes are in shared
// memory and the hop lends them to the next phase instead of copying
// them; elsewhere (sdk.RunLocal, another host, a GPU hop) it is ordinary
// memory. Either way the tensor is valid until Run's outputs have been
// sent, and its bytes are not zeroed: write every one.
func Alloc(ctx context.Context, spec tensor.Spec) (tensor.Tensor, error) {
	if a, ok := ctx.Value(allocatorKey{}).(Allocator); ok {
		return a.Alloc(spec)
	}
	return tensor.New(spec)
}

// Written tells the hop the checksum of t, a tensor from Alloc that the
// phase hashed while writing it, so that the hop does not hash it again;
// it does nothing for ordinary memory. Calling it is optional.
func Written(ctx context.Context, t tensor.Tensor, sum uint64) error {
	if a, ok := ctx.Value(allocatorKey{}).(Allocator); ok {
		return a.Written(t, sum)
	}
	return nil
}
