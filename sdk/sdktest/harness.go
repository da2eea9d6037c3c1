// Package sdktest runs a plugin implementation in-process behind a real
// gRPC client/server pair (the same go-plugin glue boxctl uses), so plugin
// authors can test their implementation through the wire without building a
// binary.
package sdktest

import (
	"testing"

	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/sdk"
)

// Clients holds the role clients of a served implementation. A role the
// ServeConfig did not set is nil.
type Clients struct {
	VMM       sdk.VMM
	Disks     sdk.DiskBackend
	Snapshots sdk.SnapshotBackend
	Images    sdk.ImageSource
}

// Serve serves cfg's roles on a real gRPC server over a unix socket and
// returns clients connected to it. Everything is torn down when t ends.
func Serve(t testing.TB, cfg sdk.ServeConfig) Clients {
	t.Helper()
	client, server := plugin.TestPluginGRPCConn(t, false, cfg.PluginSet())
	t.Cleanup(func() {
		// Closing the client asks the server to stop (go-plugin's
		// controller); stopping it here as well would race with that.
		if err := client.Close(); err != nil {
			server.Stop()
		}
	})
	var out Clients
	dispense := func(role string) any {
		raw, err := client.Dispense(role)
		if err != nil {
			t.Fatalf("dispense %s: %v", role, err)
		}
		return raw
	}
	if cfg.VMM != nil {
		out.VMM = dispense(sdk.RoleVMM).(sdk.VMM)
	}
	if cfg.Disks != nil {
		out.Disks = dispense(sdk.RoleDisks).(sdk.DiskBackend)
	}
	if cfg.Snapshots != nil {
		out.Snapshots = dispense(sdk.RoleSnapshots).(sdk.SnapshotBackend)
	}
	if cfg.Images != nil {
		out.Images = dispense(sdk.RoleImages).(sdk.ImageSource)
	}
	return out
}
