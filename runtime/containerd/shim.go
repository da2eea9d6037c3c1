package containerd

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/boxctl/boxctl/core"
	"github.com/boxctl/boxctl/core/model"
)

// RuntimeName is the containerd runtime type the shim serves; containerd
// derives the binary name containerd-shim-boxctl-v2 from it.
const RuntimeName = "io.containerd.boxctl.v2"

// Options configure the shim binary.
type Options struct {
	// Version is reported by `-info` and `-version`.
	Version string
	// RuntimeOptions are passed to core.Open. The config is the file the
	// runtime's options in containerd's config name (ConfigPath), else
	// the environment's ($BOXCTL_CONFIG, $BOXCTL_HOME), as for the CLI.
	RuntimeOptions []core.Option
}

// Main runs the shim binary: `start` (answered here in the form the
// calling containerd understands), `delete` and the shim server (through
// containerd's shim library).
func Main(opts Options) {
	ctx := context.Background()
	if f, ok := isStartAction(os.Args[1:]); ok {
		if err := runStart(ctx, f, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", RuntimeName, err)
			os.Exit(1)
		}
		return
	}
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pub, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			sd, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			ns, err := namespaces.NamespaceRequired(ic.Context)
			if err != nil {
				return nil, err
			}
			return newService(opts.RuntimeOptions, ns, pub.(shim.Publisher), sd.(shutdown.Service)), nil
		},
	})
	// NoSubreaper, NoReaper: the shim's children are core's (plugin
	// processes it waits for itself, monitors that detach); a reaper
	// would steal their exit statuses.
	shim.RunShim(ctx, &manager{opts: opts}, func(c *shim.Config) {
		c.NoSubreaper = true
		c.NoReaper = true
	})
}

// manager is the shim library's view of the binary: Stop is `shim delete`,
// which containerd runs after a shim died, in a new process.
type manager struct{ opts Options }

func (m *manager) Name() string { return RuntimeName }

func (m *manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	// Main answers start itself, for every containerd generation.
	return nil, fmt.Errorf("start is handled before the shim library: %w", errdefs.ErrNotImplemented)
}

// Stop finds the container's box by its labels, removes it with its image
// and unmounts the rootfs: what is left of a container whose shim died.
func (m *manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return shim.StopStatus{}, err
	}
	bundle := ""
	if o, ok := ctx.Value(shim.OptsKey{}).(shim.Opts); ok {
		bundle = o.BundlePath
	}
	if bundle == "" {
		if bundle, err = os.Getwd(); err != nil {
			return shim.StopStatus{}, err
		}
	}
	configPath, err := recordedConfig(bundle)
	if err != nil {
		return shim.StopStatus{}, err
	}
	rt, err := openRuntime(ctx, configPath, m.opts.RuntimeOptions)
	if err != nil {
		return shim.StopStatus{}, err
	}
	defer rt.Close()
	status := shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}
	boxes, err := findBoxes(ctx, rt, ns, id)
	if err != nil {
		return status, err
	}
	for _, b := range boxes {
		if b.Run != nil {
			status.Pid = b.Run.VM.PID
		}
		if err := removeBox(ctx, rt, b.ID); err != nil {
			return status, err
		}
	}
	_ = os.RemoveAll(filepath.Join(bundle, imageDirName))
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmount rootfs")
	}
	return status, nil
}

func (m *manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	return &types.RuntimeInfo{
		Name:    RuntimeName,
		Version: &types.RuntimeVersion{Version: m.opts.Version},
	}, nil
}

// findBoxes returns the boxes of container id in namespace ns.
func findBoxes(ctx context.Context, rt *core.Runtime, ns, id string) ([]*model.Box, error) {
	all, err := rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list boxes: %w", err)
	}
	var out []*model.Box
	for _, b := range all {
		if b.Config.Labels[LabelNamespace] == ns && b.Config.Labels[LabelID] == id {
			out = append(out, b)
		}
	}
	return out, nil
}
