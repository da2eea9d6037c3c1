package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/core"
)

// configRecord, in the bundle, names the boxctl config file the container's
// box was made under, for the later shim processes of the container
// (`shim delete` gets no runtime options).
const configRecord = "boxctl-config-path"

// configFromOptions returns the boxctl config file named by the runtime's
// options in containerd's config (CRI passes a runtime's `options` table as
// runtimeoptions.v1.Options: ConfigPath, or the file's content as
// ConfigBody, which is written into the bundle). "" when none is named.
func configFromOptions(opts *anypb.Any, bundle string) (string, error) {
	if opts == nil || len(opts.GetValue()) == 0 {
		return "", nil
	}
	if !strings.HasSuffix(opts.GetTypeUrl(), "runtimeoptions.v1.Options") {
		return "", fmt.Errorf("runtime options of type %s: the boxctl shim reads runtimeoptions.v1.Options (ConfigPath = a boxctl config file): %w", opts.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	var ro runtimeoptions.Options
	if err := proto.Unmarshal(opts.GetValue(), &ro); err != nil {
		return "", fmt.Errorf("runtime options: %w", err)
	}
	if ro.GetConfigPath() != "" {
		return ro.GetConfigPath(), nil
	}
	if len(ro.GetConfigBody()) > 0 {
		p := filepath.Join(bundle, "boxctl-config.hcl")
		if err := os.WriteFile(p, ro.GetConfigBody(), 0o600); err != nil {
			return "", fmt.Errorf("write the runtime options' config: %w", err)
		}
		return p, nil
	}
	return "", nil
}

// openRuntime opens package core with the config file path (or, when "",
// the environment's: $BOXCTL_CONFIG, $BOXCTL_HOME, as for the CLI).
func openRuntime(ctx context.Context, path string, opts []core.Option) (*core.Runtime, error) {
	if path != "" {
		cfg, err := config.LoadFile(path)
		if err != nil {
			return nil, fmt.Errorf("boxctl config %s (from the runtime options): %w", path, err)
		}
		opts = append([]core.Option{core.WithConfig(cfg)}, opts...)
	}
	rt, err := core.Open(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("open boxctl runtime: %w", err)
	}
	return rt, nil
}

// recordedConfig reads the config path a bundle's box was made under.
func recordedConfig(bundle string) (string, error) {
	data, err := os.ReadFile(filepath.Join(bundle, configRecord))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return strings.TrimSpace(string(data)), err
}
