package netns

import (
	"strings"
	"testing"
)

func TestNet(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	n, err := New("nt", "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	a, b := n.Host("a"), n.Host("b")
	if a.Addr != "10.77.0.1" || b.Addr != "10.77.0.2" {
		t.Fatalf("addresses %s, %s", a.Addr, b.Addr)
	}
	ping := func() error { return a.Command("ping", "-c", "1", "-W", "1", b.Addr).Run() }
	if err := ping(); err != nil {
		t.Fatalf("a cannot reach b: %v", err)
	}
	if err := b.Cut(); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err == nil {
		t.Fatal("a reaches b with b's link cut")
	}
	if err := b.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Fatalf("a cannot reach b once its link is back: %v", err)
	}
	if _, err := New("BAD"); err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Fatalf("a bad prefix: %v", err)
	}
}
