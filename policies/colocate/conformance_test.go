package colocate

import (
	"testing"

	"github.com/phased/phased/sdk"
	"github.com/phased/phased/sdk/policytest"
)

func TestConformance(t *testing.T) {
	policytest.Run(t, func() sdk.Policy { return New() })
}
