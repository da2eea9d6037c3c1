package sdk

import (
	"context"
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
