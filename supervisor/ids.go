package supervisor

import (
	"crypto/rand"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// Request ids are ULIDs (26 characters of Crockford base32: 48 bits of
// milliseconds, 80 random bits), so that they are unique across runs,
// restarts and state directories, and sort in submission order: a result
// named after its request id never replaces another one. Within one
// supervisor they strictly increase, also within a millisecond and also
// when the clock steps back (the next id is then the last one plus one).
//
// Ids of supervisors before ULIDs were "r" and a number ("r000042"); a
// journal may still hold them, and they sort before every ULID.

// idGen makes request ids.
type idGen struct {
	mu   sync.Mutex
	last ulid.ULID
}

// next returns a new id, greater than every id it returned or was shown.
func (g *idGen) next(now time.Time) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	id, err := ulid.New(ulid.Timestamp(now), rand.Reader)
	if err != nil || id.Compare(g.last) <= 0 {
		id = increment(g.last)
	}
	g.last = id
	return id.String()
}

// seen makes every later id greater than id (one read from a journal).
func (g *idGen) seen(id string) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return // a legacy id: every ULID is greater
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if u.Compare(g.last) > 0 {
		g.last = u
	}
}

// increment returns u + 1, as one 128-bit number.
func increment(u ulid.ULID) ulid.ULID {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]++
		if u[i] != 0 {
			break
		}
	}
	return u
}

// validID reports whether id may be a request id: a ULID, or a legacy
// "r" and a number.
func validID(id string) bool {
	if u, err := ulid.ParseStrict(id); err == nil && u.String() == id {
		return true
	}
	return legacyNumber(id) > 0
}

// legacyNumber is the number in a legacy id ("r000042" → 42), 0 for
// anything else.
func legacyNumber(id string) uint64 {
	if !strings.HasPrefix(id, "r") {
		return 0
	}
	n, err := strconv.ParseUint(id[1:], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// idLess orders request ids as they were given: legacy ids first, by
// number, then ULIDs, which sort as strings.
func idLess(a, b string) bool {
	na, nb := legacyNumber(a), legacyNumber(b)
	switch {
	case na > 0 && nb > 0:
		return na < nb
	case na > 0 || nb > 0:
		return na > 0
	}
	return a < b
}
