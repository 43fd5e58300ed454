// Package threshold is a phased scaler: LightX2V's rule. A phase whose
// utilisation (the fraction of its ready instances with a request in
// flight) is above out gets one instance more; one below in gets one
// fewer; neither within cooldown of the phase's last scaling, and never
// past its min and max.
//
// Params (the scaler block's): out (default 0.8), in (0.2), cooldown
// ("30s").
package threshold

import (
	"context"
	"fmt"
	"time"

	"github.com/phased/phased/scalers/internal/knob"
	"github.com/phased/phased/sdk"
)

// Name and Version are the plugin's.
const (
	Name    = "threshold"
	Version = "0.1.0"
)

// Defaults of the params.
const (
	DefaultOut      = 0.8
	DefaultIn       = 0.2
	DefaultCooldown = 30 * time.Second
)

// Scaler is the threshold scaler; it keeps no state.
type Scaler struct{}

// New returns the threshold scaler.
func New() *Scaler { return &Scaler{} }

// Info describes the plugin.
func (*Scaler) Info(context.Context) (sdk.Info, error) { return sdk.ScalerInfo(Name, Version), nil }

// Scale applies the rule to every phase.
func (*Scaler) Scale(_ context.Context, req sdk.ScaleRequest) (sdk.ScaleDecision, error) {
	k := knob.New(Name, req.Params)
	out, in, cooldown := k.Fraction("out", DefaultOut), k.Fraction("in", DefaultIn), k.Duration("cooldown", DefaultCooldown)
	if err := k.Err(); err != nil {
		return sdk.ScaleDecision{}, err
	}
	if in >= out {
		return sdk.ScaleDecision{}, fmt.Errorf("%s: params: in = %v must be below out = %v", Name, in, out)
	}
	d := sdk.ScaleDecision{Targets: map[string]int{}}
	for _, ph := range req.Phases {
		if ph.Ready == 0 || !ph.LastScaled.IsZero() && req.Now.Sub(ph.LastScaled) < cooldown {
			continue // nothing to measure yet, or cooling down
		}
		n := ph.Instances
		switch {
		case ph.Utilisation > out:
			n++
		case ph.Utilisation < in:
			n--
		}
		if n = min(max(n, ph.Min), ph.Max); n != ph.Instances {
			d.Targets[ph.Phase] = n
		}
	}
	return d, nil
}
