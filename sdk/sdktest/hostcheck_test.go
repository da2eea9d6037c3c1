package sdktest

import (
	"context"
	"errors"
	"testing"

	"github.com/boxctl/boxctl/sdk"
)

// plainVMM is a VMM with no optional feature.
type plainVMM struct{}

func (plainVMM) Info(context.Context) (sdk.Info, error)       { return sdk.Info{Name: "plain"}, nil }
func (plainVMM) Configure(context.Context, *sdk.Config) error { return nil }
func (plainVMM) Stop(context.Context, sdk.VM, bool) error     { return nil }
func (plainVMM) Plan(context.Context, sdk.VMSpec) (sdk.LaunchPlan, error) {
	return sdk.LaunchPlan{Accelerator: "tcg"}, nil
}

// checkingVMM reports a fixed verdict on the host.
type checkingVMM struct {
	plainVMM
	report sdk.HostReport
}

func (c checkingVMM) CheckHost(context.Context) (sdk.HostReport, error) { return c.report, nil }

// CheckHost crosses the wire with its three fields, is announced by the
// host-check capability, and a VMM without it answers sdk.ErrUnsupported.
func TestCheckHostOverTheWire(t *testing.T) {
	ctx := context.Background()
	want := sdk.HostReport{Usable: true, Accelerator: "tcg", Reason: "KVM not usable (probe): TCG software emulation"}
	c := Serve(t, sdk.ServeConfig{VMM: checkingVMM{report: want}}).VMM
	if err := c.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil || !info.Capabilities.HostCheck {
		t.Errorf("Info of a HostChecker: %+v, %v; want the host-check capability", info.Capabilities, err)
	}
	got, err := c.CheckHost(ctx)
	if err != nil || got != want {
		t.Errorf("CheckHost: %+v, %v; want %+v", got, err, want)
	}
	plan, err := c.Plan(ctx, sdk.VMSpec{})
	if err != nil || plan.Accelerator != "tcg" {
		t.Errorf("Plan: accelerator %q, %v; want tcg", plan.Accelerator, err)
	}

	// A verdict of "not usable" without a reason gets one on the client.
	bare := Serve(t, sdk.ServeConfig{VMM: checkingVMM{}}).VMM
	if err := bare.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if r, err := bare.CheckHost(ctx); err != nil || r.Usable || r.Reason == "" {
		t.Errorf("CheckHost of a VMM saying not usable without a reason: %+v, %v", r, err)
	}

	plain := Serve(t, sdk.ServeConfig{VMM: plainVMM{}}).VMM
	if err := plain.Configure(ctx, &sdk.Config{}); err != nil {
		t.Fatal(err)
	}
	if info, _ := plain.Info(ctx); info.Capabilities.HostCheck {
		t.Error("a VMM without CheckHost declares host-check")
	}
	if _, err := plain.CheckHost(ctx); !errors.Is(err, sdk.ErrUnsupported) {
		t.Errorf("CheckHost of a VMM without it: %v, want sdk.ErrUnsupported", err)
	}
}
