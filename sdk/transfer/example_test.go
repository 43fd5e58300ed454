package transfer_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/phased/phased/sdk/tensor"
	"github.com/phased/phased/sdk/transfer"
)

// Two managers, as in two phase processes, move one tensor over room 1.
func Example() {
	dir, err := os.MkdirTemp("", "phased")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	start := func(name string) *transfer.Manager {
		m, err := transfer.New(transfer.Config{Dir: dir, Name: fmt.Sprintf("%s.%d", name, os.Getpid())})
		if err != nil {
			log.Fatal(err)
		}
		if err := m.Start(); err != nil {
			log.Fatal(err)
		}
		return m
	}
	encoder, transformer := start("encoder"), start("transformer")
	defer encoder.Release(ctx)
	defer transformer.Release(ctx)

	context, _ := tensor.FromFloat32("context", []int64{2, 2}, []float32{1, 2, 3, 4})

	// Upstream first: the sender binds, the receiver registers its buffers.
	endpoint, err := encoder.OpenSender(1)
	if err != nil {
		log.Fatal(err)
	}
	if err := transformer.OpenReceiver(1, endpoint, []tensor.Spec{context.Spec}); err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := encoder.Send(ctx, 1, []tensor.Tensor{context}); err != nil {
			log.Print(err)
		}
	}()
	inputs, release, err := transformer.Receive(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(inputs[0].Spec, inputs[0].Float32s())
	release()
	st, _, _ := transformer.Status(1)
	fmt.Println(st)

	// Remove upstream first, then downstream.
	if err := encoder.Remove(1); err != nil {
		log.Fatal(err)
	}
	if err := transformer.Remove(1); err != nil {
		log.Fatal(err)
	}
	// Output:
	// context:float32[2 2] [1 2 3 4]
	// Success
}
