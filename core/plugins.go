package core

import (
	"context"

	"github.com/boxctl/boxctl/sdk"
)

// Plugins is what a runtime needs from its plugins: a client per role,
// started on first use, and what each plugin said about itself. The real
// one is package pluginhost's Host, which runs plugins as processes;
// WithPlugins substitutes another (in-process implementations, tests).
type Plugins interface {
	VMM(ctx context.Context) (sdk.VMMClient, error)
	Disks(ctx context.Context) (sdk.DiskBackendClient, error)
	Snapshots(ctx context.Context) (sdk.SnapshotBackendClient, error)
	Images(ctx context.Context) (sdk.ImageSourceClient, error)
	// Info is what the plugin serving role (sdk.RoleVMM, ...) said about
	// itself when it started.
	Info(ctx context.Context, role string) (sdk.Info, error)
	// Ready starts and configures the plugins of roles side by side and
	// reports the first failure.
	Ready(ctx context.Context, roles ...string) error
	// Counts says how many plugins were started and calls made.
	Counts() (starts, calls int64)
	// Close stops the plugins.
	Close()
}

// WithPlugins makes the runtime use p instead of starting plugin
// processes; it owns p and closes it. The box monitor (a separate
// process) still starts the configured VMM plugin to stop a VM.
func WithPlugins(p Plugins) Option { return func(r *Runtime) { r.plugins = p } }

// Prestart starts the plugins of roles side by side, so that a command
// that will need several pays for one plugin start instead of several in a
// row. Failures are left for the first real use to report.
func (r *Runtime) Prestart(ctx context.Context, roles ...string) {
	_ = r.plugins.Ready(ctx, roles...)
}
