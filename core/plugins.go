package core

import (
	"context"
	"fmt"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/sdk"
)

// Plugins is what a runtime needs from its plugins: a client per role,
// started on first use, and what each plugin said about itself. The real
// one is package pluginhost's Host, which runs plugins as processes;
// WithPlugins substitutes another (in-process implementations, tests).
type Plugins interface {
	// VMM is the VMM plugin new boxes get (VMMName).
	VMM(ctx context.Context) (sdk.VMMClient, error)
	// VMMName is the VMM plugin new boxes get: the configured one, or for
	// vmm = "auto" the one chosen for this host.
	VMMName(ctx context.Context) (string, error)
	// NamedVMM is VMM plugin name (the one a box runs on), with what it
	// said about itself.
	NamedVMM(ctx context.Context, name string) (sdk.VMMClient, sdk.Info, error)
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

// boxVMM is the VMM plugin a box runs on.
type boxVMM struct {
	name string
	sdk.VMMClient
	info sdk.Info
}

// vmmNameOf is the VMM plugin box b runs on: the one it recorded at its
// first start; for a box from before that was recorded, the one its last
// run used; for a box never started, the one new boxes get. So a box
// created under one VMM keeps it when the config (or what vmm = "auto"
// chooses) changes.
func (r *Runtime) vmmNameOf(ctx context.Context, b *model.Box) (string, error) {
	if name := recordedVMM(b); name != "" {
		return name, nil
	}
	return r.plugins.VMMName(ctx)
}

// recordedVMM is the VMM plugin box b is bound to by its record; "" for a
// box never started.
func recordedVMM(b *model.Box) string {
	switch {
	case b.VMM != "":
		return b.VMM
	case b.Run != nil:
		return b.Run.VMM
	}
	return ""
}

// vmmOf is the VMM plugin box b runs on (vmmNameOf), started.
func (r *Runtime) vmmOf(ctx context.Context, b *model.Box) (boxVMM, error) {
	name, err := r.vmmNameOf(ctx, b)
	if err != nil {
		return boxVMM{}, fmt.Errorf("vmm plugin: %w", err)
	}
	vmm, info, err := r.plugins.NamedVMM(ctx, name)
	if err != nil {
		if recordedVMM(b) != "" {
			return boxVMM{}, fmt.Errorf("box %s runs on the VMM plugin %q (the one it was first started with): %w", b.Name, name, err)
		}
		return boxVMM{}, fmt.Errorf("vmm plugin %q: %w", name, err)
	}
	return boxVMM{name: name, VMMClient: vmm, info: info}, nil
}

// Prestart starts the plugins of roles side by side, so that a command
// that will need several pays for one plugin start instead of several in a
// row. Failures are left for the first real use to report.
func (r *Runtime) Prestart(ctx context.Context, roles ...string) {
	_ = r.plugins.Ready(ctx, roles...)
}
