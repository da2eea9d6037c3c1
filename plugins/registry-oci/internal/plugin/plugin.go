// Package plugin is boxctl's "oci" ImageSource: it serves the image store
// (package imagestore) over the plugin protocol. It owns the translation
// between the two: the plugin's config block and the core's registry
// settings into store options, references and digest prefixes into cached
// images, and store records into the sdk's image types. The store's errors
// already match the sdk error kinds (package errdefs), so they are returned
// as they are and cross the wire as the sdk maps them.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/config"
	"github.com/boxctl/boxctl/plugins/registry-oci/internal/imagestore"
	"github.com/boxctl/boxctl/sdk"
)

// Name is the plugin's name (its binary is boxctl-plugin-oci).
const Name = "oci"

// Version is the plugin's own version.
const Version = "0.1.0"

// maxConcurrency bounds the concurrency setting: more parallel layer
// downloads than this only add memory and open connections.
const maxConcurrency = 32

// Plugin implements sdk.ImageSource over an image store. Role calls before a
// successful Configure fail with sdk.ErrInvalidState.
type Plugin struct {
	log       hclog.Logger
	transport http.RoundTripper

	mu    sync.RWMutex
	store *imagestore.Store
}

var (
	_ sdk.ImageSource      = (*Plugin)(nil)
	_ sdk.Pruner           = (*Plugin)(nil)
	_ sdk.ReferenceChecker = (*Plugin)(nil)
)

// Option configures New.
type Option func(*Plugin)

// WithLogger sets the logger (default: none).
func WithLogger(l hclog.Logger) Option { return func(p *Plugin) { p.log = l } }

// WithTransport sets the HTTP transport registries are reached through
// (default: http.DefaultTransport, which honours the proxy environment).
func WithTransport(rt http.RoundTripper) Option { return func(p *Plugin) { p.transport = rt } }

// New returns an unconfigured plugin.
func New(opts ...Option) *Plugin {
	p := &Plugin{log: hclog.NewNullLogger()}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Info implements sdk.Plugin. Prune and CheckReferences are not declared
// here: the sdk sets them because Plugin implements sdk.Pruner and
// sdk.ReferenceChecker.
func (p *Plugin) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        Name,
		Version:     Version,
		Description: "images from OCI registries, OCI layouts and docker archives; read-only ext4 root disks",
		Capabilities: sdk.Capabilities{
			Registry:      true,
			OCILayout:     true,
			DockerArchive: true,
			RootFSExt4:    true,
		},
	}, nil
}

// settings is the plugin's own config block:
//
//	plugin "oci" {
//	  config {
//	    concurrency       = 3              # layers downloaded at once
//	    platform          = "linux/arm64"  # default platform of pulls
//	    max_unpacked_size = "64GiB"        # limit on an image's unpacked size
//	  }
//	}
//
// The fields are expressions so that a bad value is reported at its
// position in the file.
type settings struct {
	Concurrency     hcl.Expression `hcl:"concurrency,optional"`
	Platform        hcl.Expression `hcl:"platform,optional"`
	MaxUnpackedSize hcl.Expression `hcl:"max_unpacked_size,optional"`
}

// Configure implements sdk.Plugin: it validates the config block, maps the
// core's registry settings and opens the image store in cfg.StateDir.
func (p *Plugin) Configure(_ context.Context, cfg *sdk.Config) error {
	var raw settings
	if err := cfg.Decode(&raw); err != nil {
		return err
	}
	opts := []imagestore.Option{imagestore.WithRegistryConfig(p.registryConfig(cfg.Registry))}
	platform := imagestore.HostPlatform()

	var n int
	if rng, set, err := sdk.DecodeOptional(raw.Concurrency, &n); err != nil {
		return err
	} else if set {
		if n < 1 || n > maxConcurrency {
			return sdk.ConfigError(rng, "Invalid concurrency",
				fmt.Sprintf("concurrency is how many layers download at once; it must be between 1 and %d, not %d.", maxConcurrency, n))
		}
		opts = append(opts, imagestore.WithConcurrency(n))
	}
	var s string
	if rng, set, err := sdk.DecodeOptional(raw.Platform, &s); err != nil {
		return err
	} else if set {
		pl, err := imagestore.ParsePlatform(s)
		if err != nil {
			return sdk.ConfigError(rng, "Invalid platform",
				fmt.Sprintf("platform %q is not os/arch[/variant]; write e.g. \"linux/amd64\" or \"linux/arm64\".", s))
		}
		if pl.OS != "linux" {
			return sdk.ConfigError(rng, "Invalid platform",
				fmt.Sprintf("platform %q: boxes run Linux guests, so the os must be linux (e.g. \"linux/%s\").", s, pl.Architecture))
		}
		platform = pl
	}
	opts = append(opts, imagestore.WithDefaultPlatform(platform))
	if rng, set, err := sdk.DecodeOptional(raw.MaxUnpackedSize, &s); err != nil {
		return err
	} else if set {
		n, err := config.ParseSize(s)
		if err != nil || n == 0 {
			detail := fmt.Sprintf("max_unpacked_size = %q: ", s)
			if err != nil {
				detail += err.Error()
			} else {
				detail += "the limit must be more than 0"
			}
			return sdk.ConfigError(rng, "Invalid max_unpacked_size",
				detail+". It limits how much an image may unpack to (the sizes of all files in all its layers); write e.g. \"64GiB\" (the default) or \"200GiB\".")
		}
		opts = append(opts, imagestore.WithMaxUnpackedSize(int64(n)))
	}

	if cfg.StateDir == "" {
		return errors.New("no state directory: boxctl passes <home>/plugins-data/oci; this plugin cannot keep an image cache without it")
	}
	st, err := imagestore.Open(cfg.StateDir, opts...)
	if err != nil {
		return fmt.Errorf("open the image cache: %w", err)
	}
	p.mu.Lock()
	p.store = st
	p.mu.Unlock()
	p.log.Debug("configured", "cache", st.Dir(), "platform", platform.String())
	return nil
}

// registryConfig maps the core's registry settings. Without settings (an
// embedder that sent none) Docker's credentials are used, the documented
// default.
func (p *Plugin) registryConfig(rs *sdk.RegistrySettings) imagestore.RegistryConfig {
	rc := imagestore.RegistryConfig{
		Transport: p.transport,
		UserAgent: "boxctl-plugin-oci/" + Version,
	}
	if rs == nil {
		return rc
	}
	rc.NoDefaultKeychain = !rs.UseDockerCredentials
	for _, m := range rs.Mirrors {
		if len(m.Endpoints) == 0 {
			continue
		}
		if rc.Mirrors == nil {
			rc.Mirrors = map[string][]string{}
		}
		host := hostOnly(m.Registry)
		rc.Mirrors[host] = append(rc.Mirrors[host], m.Endpoints...)
	}
	for _, h := range rs.Insecure {
		rc.Insecure = append(rc.Insecure, hostOnly(h))
	}
	for _, c := range rs.Credentials {
		if rc.Credentials == nil {
			rc.Credentials = map[string]imagestore.Credential{}
		}
		rc.Credentials[hostOnly(c.Registry)] = imagestore.Credential{
			Username: c.Username,
			Password: c.Password,
			Token:    c.Token,
		}
	}
	return rc
}

// hostOnly turns a registry as users tend to write it ("https://host:5000/",
// "index.docker.io") into the host[:port] the store keys its settings by
// (Docker Hub is "docker.io").
func hostOnly(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "https://")
	s = strings.TrimPrefix(s, "http://")
	s = strings.TrimSuffix(s, "/")
	switch s {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return s
}

// current returns the configured store.
func (p *Plugin) current() (*imagestore.Store, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.store == nil {
		return nil, fmt.Errorf("%w: the oci plugin is not configured (Configure must succeed before any other call)", sdk.ErrInvalidState)
	}
	return p.store, nil
}
