package transfer

import (
	"bytes"
	"testing"

	zmq "github.com/pebbe/zmq4"
)

func TestRawSend(t *testing.T) {
	zctx := rawContext(t)
	pull, push := rawSocket(t, zctx, zmq.PULL), rawSocket(t, zctx, zmq.PUSH)
	for _, s := range []*zmq.Socket{pull, push} {
		if err := checkRaw(s); err != nil {
			t.Fatal(err)
		}
	}
	if err := pull.Bind("inproc://raw"); err != nil {
		t.Fatal(err)
	}
	if err := push.Connect("inproc://raw"); err != nil {
		t.Fatal(err)
	}
	msg := []byte("0123456789abcdef")
	if err := sendFrom(push, msg[:4], zmq.SNDMORE); err != nil {
		t.Fatal(err)
	}
	if err := sendFrom(push, msg, 0); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4)
	if n, err := recvInto(pull, head, 0); err != nil || n != 4 || string(head) != "0123" {
		t.Fatalf("head: %d %q %v", n, head, err)
	}
	if more, _ := pull.GetRcvmore(); !more {
		t.Fatal("no second part")
	}
	buf := make([]byte, 10)
	n, err := recvInto(pull, buf, 0)
	if err != nil || n != len(msg) || !bytes.Equal(buf, msg[:10]) {
		t.Fatalf("body: %d %q %v; want a truncated 16-byte message", n, buf, err)
	}
	if _, err := recvInto(pull, buf, zmq.DONTWAIT); zmq.AsErrno(err) != zmq.Errno(11) {
		t.Fatalf("empty socket: %v, want EAGAIN", err)
	}
}
