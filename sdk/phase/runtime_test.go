package phase

import (
	"bytes"
	"errors"
	"testing"

	"github.com/phased/phased/sdk/tensor"
)

func TestHostCopies(t *testing.T) {
	device := map[uintptr][]byte{0x1000: {1, 2, 3, 4}}
	toHost := func(dst []byte, x tensor.Tensor) error {
		b, ok := device[x.DevicePtr]
		if !ok {
			return errors.New("no such device memory")
		}
		copy(dst, b)
		return nil
	}
	host := tensor.Tensor{Spec: tensor.Spec{Name: "h", DType: tensor.Uint8, Shape: []int64{2}}, Data: []byte{9, 8}}
	dev := tensor.Tensor{Spec: tensor.Spec{Name: "d", DType: tensor.Uint8, Shape: []int64{4}}, DevicePtr: 0x1000}
	in := []tensor.Tensor{host, dev}
	out, err := hostCopies(in, toHost)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out[0].Data, host.Data) || out[1].OnDevice() || !bytes.Equal(out[1].Data, []byte{1, 2, 3, 4}) || !out[1].Spec.Equal(dev.Spec) {
		t.Fatalf("host copies: %+v", out)
	}
	if !in[1].OnDevice() {
		t.Fatal("the received tensors were changed in place")
	}
	// Host tensors only: the same slice back, nothing copied.
	only := []tensor.Tensor{host}
	if out, err := hostCopies(only, toHost); err != nil || &out[0] != &only[0] {
		t.Fatalf("host tensors: %v, copied: %t", err, &out[0] != &only[0])
	}
	// A failed copy is an error, not a half-filled tensor.
	dev.DevicePtr = 0x2000
	if _, err := hostCopies([]tensor.Tensor{dev}, toHost); err == nil || err.Error() != "no such device memory" {
		t.Fatalf("failed copy: %v", err)
	}
}
