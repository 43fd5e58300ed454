// Package queue is a phased scaler that aims at a queue wait: by
// Little's law, the requests a phase holds and those waiting for it,
// each taking the phase's service time, need ceil(work / target_wait)
// instances to be through within target_wait. A phase scales out to that
// at once; it scales in by one at a time, once cooldown has passed since
// its last scaling; never past its min and max, and not before its
// service time is known.
//
// Params (the scaler block's): target_wait (default "10s"), cooldown
// ("30s").
package queue

import (
	"context"
	"math"
	"time"

	"github.com/phased/phased/scalers/internal/knob"
	"github.com/phased/phased/sdk"
)

// Name and Version are the plugin's.
const (
	Name    = "queue"
	Version = "0.1.0"
)

// Defaults of the params.
const (
	DefaultTargetWait = 10 * time.Second
	DefaultCooldown   = 30 * time.Second
)

// Scaler is the queue scaler; it keeps no state.
type Scaler struct{}

// New returns the queue scaler.
func New() *Scaler { return &Scaler{} }

// Info describes the plugin.
func (*Scaler) Info(context.Context) (sdk.Info, error) { return sdk.ScalerInfo(Name, Version), nil }

// Scale sizes every phase whose service time is known.
func (*Scaler) Scale(_ context.Context, req sdk.ScaleRequest) (sdk.ScaleDecision, error) {
	k := knob.New(Name, req.Params)
	target, cooldown := k.Duration("target_wait", DefaultTargetWait), k.Duration("cooldown", DefaultCooldown)
	if err := k.Err(); err != nil {
		return sdk.ScaleDecision{}, err
	}
	target = max(target, time.Millisecond)
	d := sdk.ScaleDecision{Targets: map[string]int{}}
	for _, ph := range req.Phases {
		if ph.Service <= 0 {
			continue
		}
		work := float64(ph.Inflight+req.QueueDepth) * ph.Service.Seconds()
		need := ph.Max + 1 // past any bound, without overflowing an int
		if w := math.Ceil(work / target.Seconds()); w <= float64(ph.Max) {
			need = int(w)
		}
		n := ph.Instances
		switch {
		case need > n:
			n = need
		case need < n && (ph.LastScaled.IsZero() || req.Now.Sub(ph.LastScaled) >= cooldown):
			n--
		}
		if n = min(max(n, ph.Min), ph.Max); n != ph.Instances {
			d.Targets[ph.Phase] = n
		}
	}
	return d, nil
}
