// Package knob reads a scaler's params, the scaler block's params in the
// config, with errors that name the param and what was expected.
package knob

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Reader reads params, remembering the first error.
type Reader struct {
	scaler string
	params map[string]string
	known  []string
	err    error
}

// New reads params for the scaler named scaler.
func New(scaler string, params map[string]string) *Reader {
	return &Reader{scaler: scaler, params: params}
}

// Fraction reads a number from 0 to 1.
func (r *Reader) Fraction(key string, def float64) float64 {
	r.known = append(r.known, key)
	v, ok := r.params[key]
	if !ok {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f >= 0 && f <= 1) {
		r.fail("%s = %q: want a fraction from 0 to 1, e.g. \"0.8\"", key, v)
		return def
	}
	return f
}

// Duration reads a positive duration.
func (r *Reader) Duration(key string, def time.Duration) time.Duration {
	r.known = append(r.known, key)
	v, ok := r.params[key]
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.fail("%s = %q: want a duration, e.g. \"30s\"", key, v)
		return def
	}
	return d
}

// Err returns the first bad param, or an unknown one.
func (r *Reader) Err() error {
	if r.err != nil {
		return r.err
	}
	for k := range r.params {
		if !slices.Contains(r.known, k) {
			slices.Sort(r.known)
			return fmt.Errorf("%s: param %q is unknown; the known params are %s", r.scaler, k, strings.Join(r.known, ", "))
		}
	}
	return nil
}

func (r *Reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: params: "+format, append([]any{r.scaler}, args...)...)
	}
}
