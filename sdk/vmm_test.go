package sdk

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// A network mode the plugin's sdk does not know must reach the plugin as
// itself, not as "no network": the plugin refuses it then.
func TestNetworkModeCrossesTheWireUnchanged(t *testing.T) {
	for _, m := range []NetworkMode{NetworkNone, NetworkUser, 2, 7, -1} {
		got := specFromProto(specToProto(VMSpec{Network: NetworkSpec{Mode: m}})).Network.Mode
		if got != m {
			t.Errorf("network mode %d came back as %d", m, got)
		}
	}
	if got := networkModeToProto(NetworkNone); got != pluginv1.NetworkSpec_MODE_NONE {
		t.Errorf("NetworkNone is %v on the wire", got)
	}
	if got := networkModeToProto(NetworkUser); got != pluginv1.NetworkSpec_MODE_USER {
		t.Errorf("NetworkUser is %v on the wire", got)
	}
	if got := networkModeFromProto(pluginv1.NetworkSpec_MODE_UNSPECIFIED); got != NetworkNone {
		t.Errorf("an unspecified mode reads as %d", got)
	}
}

// A client that is not this sdk's may send a SwitchDisk request no VMM
// could carry out: the server refuses it before the implementation sees it.
func TestSwitchDiskServerChecksTheRequest(t *testing.T) {
	impl := &countingSwitcher{}
	s := &vmmServer{baseServer: newBaseServer(impl, &lifecycles{m: map[Plugin]*lifecycle{}}, vmmCapabilities), impl: impl}
	ctx := context.Background()
	if _, err := s.Configure(ctx, &pluginv1.ConfigureRequest{}); err != nil {
		t.Fatal(err)
	}
	good := &pluginv1.DiskSpec{Path: "/d/new.qcow2", Format: "qcow2", BackingChain: []*pluginv1.ChainFile{{Path: "/d/old.raw", Format: "raw"}}}
	for _, req := range []*pluginv1.SwitchDiskRequest{
		{Index: -3, Disk: good},
		{Index: 1},
		{Index: 1, Disk: &pluginv1.DiskSpec{Path: "/d/new.qcow2", Format: "qcow2"}},
	} {
		if _, err := s.SwitchDisk(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("SwitchDisk(%v): %v; want InvalidArgument", req, err)
		}
	}
	if _, err := s.SwitchDisk(ctx, &pluginv1.SwitchDiskRequest{Index: 1, Disk: good}); err != nil {
		t.Fatal(err)
	}
	if impl.n != 1 {
		t.Errorf("the implementation saw %d requests, want the 1 valid one", impl.n)
	}
}

type countingSwitcher struct{ n int }

func (*countingSwitcher) Info(context.Context) (Info, error)       { return Info{Name: "c"}, nil }
func (*countingSwitcher) Configure(context.Context, *Config) error { return nil }
func (*countingSwitcher) Plan(context.Context, VMSpec) (LaunchPlan, error) {
	return LaunchPlan{}, nil
}
func (*countingSwitcher) Stop(context.Context, VM, bool) error { return nil }
func (c *countingSwitcher) SwitchDisk(context.Context, VM, int, DiskSpec) error {
	c.n++
	return nil
}

// The server refuses memory-snapshot requests no VMM could carry out (a
// relative path, a restore without inputs) before the implementation sees
// them, and answers UNIMPLEMENTED for an implementation without the
// feature, a restore plan included; VMSpec.Restore crosses the wire.
func TestMemorySnapshotServerChecksTheRequest(t *testing.T) {
	ctx := context.Background()
	server := func(impl VMM) *vmmServer {
		s := &vmmServer{baseServer: newBaseServer(impl, &lifecycles{m: map[Plugin]*lifecycle{}}, vmmCapabilities), impl: impl}
		if _, err := s.Configure(ctx, &pluginv1.ConfigureRequest{}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	impl := &countingSnapshotter{}
	s := server(impl)
	info, err := s.Info(ctx, &pluginv1.InfoRequest{})
	if err != nil || !slices.Contains(info.GetCapabilities(), "memory-snapshot") {
		t.Errorf("Info of a MemorySnapshotter: %v, %v; want the memory-snapshot capability", info.GetCapabilities(), err)
	}
	for _, p := range []string{"", "rel/state"} {
		if _, err := s.SaveState(ctx, &pluginv1.SaveStateRequest{Path: p}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("SaveState(%q): %v; want InvalidArgument", p, err)
		}
	}
	for _, r := range []*pluginv1.RestoreSpec{{Path: "rel", Inputs: map[string]string{"a": "b"}}, {Path: "/s"}} {
		if _, err := s.Plan(ctx, &pluginv1.PlanRequest{Spec: &pluginv1.VMSpec{Restore: r}}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Plan with Restore %v: %v; want InvalidArgument", r, err)
		}
	}
	if impl.saves != 0 || impl.plans != 0 {
		t.Errorf("the implementation saw %d saves and %d plans, want none", impl.saves, impl.plans)
	}
	want := &RestoreSpec{Path: "/s", Inputs: map[string]string{"kernel": "k1"}}
	if _, err := s.Plan(ctx, &pluginv1.PlanRequest{Spec: specToProto(VMSpec{Restore: want})}); err != nil {
		t.Fatal(err)
	}
	if got := impl.restore; got == nil || got.Path != want.Path || got.Inputs["kernel"] != "k1" {
		t.Errorf("the implementation got Restore %+v, want %+v", got, want)
	}

	plain := server(&countingSwitcher{})
	if _, err := plain.SaveState(ctx, &pluginv1.SaveStateRequest{Path: "/s"}); status.Code(err) != codes.Unimplemented {
		t.Errorf("SaveState of a VMM without memory snapshots: %v; want Unimplemented", err)
	}
	if _, err := plain.StateInputs(ctx, &pluginv1.StateInputsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("StateInputs of a VMM without memory snapshots: %v; want Unimplemented", err)
	}
	if _, err := plain.Plan(ctx, &pluginv1.PlanRequest{Spec: specToProto(VMSpec{Restore: want})}); status.Code(err) != codes.Unimplemented {
		t.Errorf("Plan with Restore of a VMM without memory snapshots: %v; want Unimplemented", err)
	}
}

type countingSnapshotter struct {
	countingSwitcher
	saves, plans int
	restore      *RestoreSpec
}

func (c *countingSnapshotter) Plan(_ context.Context, spec VMSpec) (LaunchPlan, error) {
	c.plans++
	c.restore = spec.Restore
	return LaunchPlan{}, nil
}
func (c *countingSnapshotter) SaveState(context.Context, VM, string) (SavedState, error) {
	c.saves++
	return SavedState{}, nil
}
func (c *countingSnapshotter) StateInputs(context.Context, VMSpec) (map[string]string, error) {
	return map[string]string{"a": "b"}, nil
}
