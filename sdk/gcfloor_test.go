package sdk

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// rss is this process's resident memory in bytes (/proc/self/statm).
func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Skip("no /proc/self/statm:", err)
	}
	pages, err := strconv.ParseInt(strings.Fields(string(b))[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

var sink []byte

// TestSetGCFloor: with GOGC set the floor stays away; without it, 16 MiB
// of garbage run no collection, and the floor's 64 MiB are not resident.
func TestSetGCFloor(t *testing.T) {
	for _, env := range []string{"GOGC", "GOMEMLIMIT"} {
		if old, ok := os.LookupEnv(env); ok {
			os.Unsetenv(env)
			defer os.Setenv(env, old)
		}
	}
	log := hclog.NewNullLogger()
	t.Setenv("GOMEMLIMIT", "1GiB")
	SetGCFloor(log)
	if ballast != nil {
		t.Fatal("GOMEMLIMIT is set, yet SetGCFloor allocated its floor")
	}
	os.Unsetenv("GOMEMLIMIT")

	runtime.GC()
	before := rss(t)
	SetGCFloor(log)
	if len(ballast) != GCFloor {
		t.Fatalf("floor of %d bytes, want %d", len(ballast), GCFloor)
	}
	runtime.GC() // the next goal counts the floor as live
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gcs := ms.NumGC
	grown := rss(t) - before
	for range 64 {
		sink = make([]byte, 256<<10)
	}
	runtime.ReadMemStats(&ms)
	if ms.NumGC != gcs {
		t.Errorf("%d collections ran for 16 MiB of garbage above the floor", ms.NumGC-gcs)
	}
	if grown > GCFloor/4 {
		t.Errorf("the floor made %d MiB resident", grown>>20)
	}
}
