package rng

import "testing"

func TestSeededRepeats(t *testing.T) {
	a, b, c := Seeded(1, 2), Seeded(1, 2), Seeded(2, 1)
	same, differ := true, false
	for range 100 {
		x, y, z := a.IntN(1000), b.IntN(1000), c.IntN(1000)
		same = same && x == y
		differ = differ || x != z
		if x < 0 || x >= 1000 {
			t.Fatalf("IntN(1000) = %d", x)
		}
	}
	if !same || !differ {
		t.Fatalf("same seed repeats: %t; other seed differs: %t", same, differ)
	}
}
