package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/phased/phased/sdk/policytest"
	"github.com/phased/phased/supervisor"
)

// TestPolicies runs the pipeline under each shipped policy, chosen in the
// config the way a user does: the binary phased-policy-NAME in the plugin
// directory, named by the phase. Every artifact equals the reference, and
// the spread is the policy's.
func TestPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy, extra, key string
		check              func(used map[string]int) error
	}{
		{"leastloaded", "", "", both},
		{"p2c", "", "", nil},
		{"random", "", "", nil},
		{"weighted", "weights = [3, 1]", "", func(used map[string]int) error {
			if used["transformer-0"] != 6 || used["transformer-1"] != 2 {
				return fmt.Errorf("weights 3, 1 over 8 requests gave %v, want 6 and 2", used)
			}
			return nil
		}},
		{"affinity", "", "lora-a", func(used map[string]int) error {
			if len(used) != 1 {
				return fmt.Errorf("one key went to %v, want one instance", used)
			}
			return nil
		}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			dir := shortDir(t)
			cfg := fmt.Sprintf(`
phase "encoder"     { plugin = "encoder" }
phase "transformer" {
  plugin    = "transformer"
  instances = 2
  policy    = %q
  %s
}
phase "decoder"     { plugin = "decoder" }
`, tc.policy, tc.extra)
			p := startSupervisor(t, dir, writeConfig(t, dir, cfg))
			const n = 8
			infos := p.submitAll(t, n, func(i int) supervisor.Submission {
				return supervisor.Submission{Prompt: fmt.Sprintf("p %d", i), Seed: int64(i), Steps: 2, Key: tc.key}
			})
			used := map[string]int{}
			for i, info := range infos {
				used[info.Instances["transformer"]]++
				if i%4 != 0 {
					continue
				}
				got, err := os.ReadFile(info.Artifact)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, reference(t, fmt.Sprintf("p %d", i), int64(i), 2)) {
					t.Fatalf("request %d: the artifact differs from the reference", i)
				}
			}
			if tc.check != nil {
				if err := tc.check(used); err != nil {
					t.Fatal(err)
				}
			}
			p.release(t)
		})
	}
}

// both checks that both transformers took requests.
func both(used map[string]int) error {
	if used["transformer-0"] == 0 || used["transformer-1"] == 0 {
		return fmt.Errorf("transformer use %v: want both used", used)
	}
	return nil
}

// TestPolicyBinariesConform runs the conformance kit against every policy
// binary built for these tests, started as the supervisor starts them.
func TestPolicyBinariesConform(t *testing.T) {
	bins, err := filepath.Glob(filepath.Join(pluginDir, "phased-policy-*"))
	if err != nil || len(bins) < 6 {
		t.Fatalf("policy binaries in %s: %v (%v), want the six shipped", pluginDir, bins, err)
	}
	for _, bin := range bins {
		t.Run(filepath.Base(bin), func(t *testing.T) { policytest.RunBinary(t, bin) })
	}
}
