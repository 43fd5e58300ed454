package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrPoison begins the reason of a request failed as poison: its
// attempts crashed distinct instances, poison_crashes of them.
var ErrPoison = errors.New("poison")

// maxLostAttempts bounds the attempts of one request lost to instances
// stopped from outside, which spend no retry: far more than any real
// failure rate needs, and an end should something kill every instance
// a request reaches.
const maxLostAttempts = 100

// retryBudget is what a request's lost attempts have spent. An attempt
// lost to an instance stopped from outside (InstanceError.External: a
// kill by an operator or a drained node, a scale-in) is not the
// request's fault and is retried free, up to maxLostAttempts. One lost to a crash, a hang or
// an OOM kill spends one of the config's retries; and a request whose
// attempts have crashed poison distinct instances is dispatched no more:
// it is failed as poison before it takes the pool down.
type retryBudget struct {
	retries, poison int
	spent           int      // retries spent
	free            int      // attempts lost to stops from outside
	crashed         []string // the distinct instances crashed, "ID (how)"
}

// RetryError ends a request whose lost attempts spent its budget.
type RetryError struct {
	Reason string
	Last   *InstanceError // the last attempt's loss
}

func (e *RetryError) Error() string { return e.Reason }
func (e *RetryError) Unwrap() error { return e.Last }

// spend accounts for the loss of the request's attempt number attempts
// (from 1) to ie: it returns what the retry event says of the next
// attempt, or the RetryError that ends the request.
func (b *retryBudget) spend(ie *InstanceError, attempts int) (string, error) {
	if ie.External() {
		b.free++
		if b.free > maxLostAttempts {
			return "", &RetryError{Last: ie, Reason: fmt.Sprintf("failed after %d attempts: %d were lost to instances stopped from outside, the most that are retried; the last: %v",
				attempts, b.free, ie)}
		}
		if ie.Retired {
			return "not counted against retries: its instance was retired by a scale-in", nil
		}
		return "not counted against retries: the instance was stopped from outside", nil
	}
	how := ie.Status
	switch {
	case ie.Hung != "":
		how = "hung"
	case ie.OOM:
		how += ", OOM"
	}
	if !slices.ContainsFunc(b.crashed, func(c string) bool { return strings.HasPrefix(c, ie.Instance+" (") }) {
		b.crashed = append(b.crashed, ie.Instance+" ("+how+")")
	}
	if len(b.crashed) >= b.poison {
		return "", &RetryError{Last: ie, Reason: fmt.Sprintf("%v: its attempts crashed %d distinct instances, %s (poison_crashes = %d); it is not dispatched again: see those instances' log lines in the supervisor's log",
			ErrPoison, len(b.crashed), strings.Join(b.crashed, ", "), b.poison)}
	}
	if b.spent >= b.retries {
		return "", &RetryError{Last: ie, Reason: fmt.Sprintf("failed after %d attempts (retries = %d); the last: %v; raise retries in the config, or see `supervisor status` for the instance",
			attempts, b.retries, ie)}
	}
	b.spent++
	return fmt.Sprintf("retry %d of %d", b.spent, b.retries), nil
}
