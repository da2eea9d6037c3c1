package sdk

import (
	"testing"

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
