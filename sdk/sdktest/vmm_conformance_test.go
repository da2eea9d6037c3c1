package sdktest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boxctl/boxctl/sdk"
)

// defectiveVMM plans without launching anything; defect names one contract
// breach for the suite to catch ("" for none).
type defectiveVMM struct{ defect string }

func (v *defectiveVMM) Info(context.Context) (sdk.Info, error) {
	info := sdk.Info{Name: "defective", Version: "0.0.1", Capabilities: sdk.Capabilities{AgentTransport: sdk.AgentVsock}}
	if v.defect == "no-agent-transport" {
		info.Capabilities.AgentTransport = ""
	}
	return info, nil
}

func (v *defectiveVMM) Configure(context.Context, *sdk.Config) error { return nil }

func (v *defectiveVMM) Plan(_ context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	if err := v.check(spec); err != nil {
		if v.defect == "unnamed-field" {
			return sdk.LaunchPlan{}, fmt.Errorf("bad spec: %w", sdk.ErrInvalidArgument)
		}
		return sdk.LaunchPlan{}, err
	}
	plan := sdk.LaunchPlan{
		Argv: []string{"/bin/sleep", "1000"}, Handle: []byte("h"),
		AgentSocket: filepath.Join(spec.RunDir, "agent.sock"), ConsoleLog: filepath.Join(spec.RunDir, "console.log"),
	}
	switch v.defect {
	case "relative-argv":
		plan.Argv[0] = "sleep"
	case "socket-outside-rundir":
		plan.AgentSocket = "/tmp/agent.sock"
	case "writes-next-to-disks":
		_ = os.WriteFile(filepath.Join(filepath.Dir(spec.Disks[0].Path), "lock"), nil, 0o600)
	}
	return plan, nil
}

func (v *defectiveVMM) check(s sdk.VMSpec) error {
	if v.defect == "accepts-any-spec" {
		return nil
	}
	bad := func(format string, a ...any) error {
		return fmt.Errorf(format+": %w", append(a, sdk.ErrInvalidArgument)...)
	}
	switch {
	case !filepath.IsAbs(s.RunDir):
		return bad("RunDir %q", s.RunDir)
	case s.VCPUs < 1:
		return bad("VCPUs %d", s.VCPUs)
	case s.MemoryMiB < 64:
		return bad("MemoryMiB %d", s.MemoryMiB)
	case s.Network.Mode > sdk.NetworkUser:
		return bad("Network.Mode %d", s.Network.Mode)
	case len(s.Disks) > 26:
		return bad("Disks[26]: too many")
	}
	for i, d := range s.Disks {
		if _, err := os.Stat(d.Path); err != nil || (d.Format != "raw" && d.Format != "qcow2") {
			return bad("Disks[%d] %s (%s)", i, d.Path, d.Format)
		}
	}
	return nil
}

func (v *defectiveVMM) Stop(context.Context, sdk.VM, bool) error { return nil }

// TestVMMSuiteHelper runs the suite's Plan checks against a defectiveVMM;
// TestVMMSuiteCatchesDefects runs it in a child process.
func TestVMMSuiteHelper(t *testing.T) {
	defect, ok := os.LookupEnv("SDKTEST_VMM_DEFECT")
	if !ok {
		t.Skip("run by TestVMMSuiteCatchesDefects")
	}
	VMMConformance(t, func(t *testing.T) sdk.VMM {
		vmm := Serve(t, sdk.ServeConfig{VMM: &defectiveVMM{defect: defect}}).VMM
		if err := vmm.Configure(context.Background(), &sdk.Config{}); err != nil {
			t.Fatal(err)
		}
		return vmm
	})
}

// A suite that passes a defective plugin proves nothing: each defect must
// fail the named check, and the plugin without one must pass.
func TestVMMSuiteCatchesDefects(t *testing.T) {
	for _, c := range []struct{ defect, want string }{
		{"", ""},
		{"relative-argv", "want an absolute argv[0]"},
		{"socket-outside-rundir", "want a socket inside RunDir"},
		{"accepts-any-spec", "want sdk.ErrInvalidArgument"},
		{"unnamed-field", `naming one of ["vcpu"]`},
		{"no-agent-transport", "declare how the agent socket reaches the guest"},
		{"writes-next-to-disks", "outside RunDir"},
	} {
		t.Run("defect="+c.defect, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestVMMSuiteHelper$/^(Info|PlanOfAValidSpec|PlanHasNoSideEffectsOutsideRunDir|PlanRefusesInvalidSpecs)$", "-test.v")
			cmd.Env = append(os.Environ(), "SDKTEST_VMM_DEFECT="+c.defect)
			out, err := cmd.CombinedOutput()
			switch {
			case c.defect == "" && err != nil:
				t.Fatalf("the suite fails a plugin without defects: %v\n%s", err, out)
			case c.defect != "" && (err == nil || !strings.Contains(string(out), c.want)):
				t.Fatalf("defect %s: the suite said (%v):\n%s\nwant a failure saying %q", c.defect, err, out, c.want)
			case c.defect != "" && !strings.Contains(string(out), "VMM conformance failure dump"):
				t.Errorf("defect %s: no failure dump in:\n%s", c.defect, out)
			}
		})
	}
}
