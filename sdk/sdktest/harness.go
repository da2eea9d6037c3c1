// Package sdktest tests boxctl plugins: it runs an implementation
// in-process behind a real gRPC client/server pair (the same go-plugin glue
// boxctl uses), and it holds the conformance suites a plugin must pass.
//
// # The harness
//
// Serve serves a ServeConfig and returns role clients, so a test calls the
// implementation through the wire without building a binary. The server is
// the sdk's own, so it enforces the documented call order exactly as a
// plugin process does: Info any time; role calls fail with
// sdk.ErrInvalidState and never reach the implementation until Configure
// succeeded; Configure reaches an implementation once, however many roles
// it serves, and a later Configure is answered with the first result.
//
// # Storage conformance
//
// DiskBackendConformance and SnapshotBackendConformance run the storage
// contract as a table of named checks (`go test -v` lists them). Every
// check is its own subtest on a fresh root: a new plugin instance and an
// empty state directory. A check that needs a capability the plugin does
// not declare (Resize, Export, Import, Snapshots, Clone) is skipped, naming
// it; a failing check logs what it had set up (its steps, the plugin's
// capabilities, and the disks and snapshots the plugin lists). Disk content
// is read and written with qemu-io by default (WithDiskContent changes
// that).
//
// Run them from the plugin's own tests with a NewStorageFunc that returns a
// fresh, unconfigured implementation for a state directory; the suite
// serves it through Serve and configures it with that directory:
//
//	func newStorage(t *testing.T, stateDir string) sdktest.Storage {
//		s := mystore.New()
//		return sdktest.Storage{Disks: s, Snapshots: s}
//	}
//
//	func TestDiskBackendConformance(t *testing.T) {
//		sdktest.DiskBackendConformance(t, newStorage)
//	}
//
//	func TestSnapshotBackendConformance(t *testing.T) {
//		sdktest.SnapshotBackendConformance(t, newStorage, sdktest.WithPluginConfig(`cluster_size = "64KiB"`))
//	}
//
// To run them against the plugin binary instead, start it with go-plugin
// (sdk.Handshake, sdk.ClientPluginSet), dispense the roles and return the
// clients with Served set; `go test -run 'Conformance/Resize'` runs one
// check.
package sdktest

import (
	"testing"

	"github.com/hashicorp/go-plugin"

	"github.com/boxctl/boxctl/sdk"
)

// Clients holds the role clients of a served implementation, with every
// optional method (answering sdk.ErrUnsupported where the implementation
// lacks it). A role the ServeConfig did not set is nil.
type Clients struct {
	VMM       sdk.VMMClient
	Disks     sdk.DiskBackendClient
	Snapshots sdk.SnapshotBackendClient
	Images    sdk.ImageSourceClient
}

// Serve serves cfg's roles on a real gRPC server over a unix socket and
// returns clients connected to it, unconfigured. Everything is torn down
// when t ends.
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
		out.VMM = dispense(sdk.RoleVMM).(sdk.VMMClient)
	}
	if cfg.Disks != nil {
		out.Disks = dispense(sdk.RoleDisks).(sdk.DiskBackendClient)
	}
	if cfg.Snapshots != nil {
		out.Snapshots = dispense(sdk.RoleSnapshots).(sdk.SnapshotBackendClient)
	}
	if cfg.Images != nil {
		out.Images = dispense(sdk.RoleImages).(sdk.ImageSourceClient)
	}
	return out
}
