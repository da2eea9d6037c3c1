package sdk

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// ProtocolVersion is the plugin protocol version this sdk speaks (the v1
// services in sdk/proto/v1). go-plugin negotiates it at start-up.
const ProtocolVersion = 1

// Names under which the role services are registered in the go-plugin set.
const (
	RoleVMM       = "vmm"
	RoleDisks     = "disk"
	RoleSnapshots = "snapshot"
	RoleImages    = "images"
)

// Roles lists every role name, in a fixed order.
func Roles() []string { return []string{RoleVMM, RoleDisks, RoleSnapshots, RoleImages} }

// Handshake is the go-plugin handshake shared by boxctl and its plugins. The
// magic cookie only keeps a plugin binary from being run by hand by mistake;
// it is not a security measure.
func Handshake() plugin.HandshakeConfig {
	return plugin.HandshakeConfig{
		ProtocolVersion:  ProtocolVersion,
		MagicCookieKey:   "BOXCTL_PLUGIN_MAGIC_COOKIE",
		MagicCookieValue: "d3b7c1f0-boxctl-plugin-v1",
	}
}

// Plugin is the part every role implementation has.
//
// Call order, which the sdk's server enforces: Info may be called any
// time; Configure exactly once per process (an implementation serving two
// roles is configured once), before any role call; role calls before a
// successful Configure fail with ErrInvalidState and never reach the
// implementation.
type Plugin interface {
	// Info describes the plugin. It must not depend on configuration. The
	// sdk fills in ProtocolVersions and the capabilities the implementation's
	// optional interfaces prove.
	Info(ctx context.Context) (Info, error)
	// Configure validates and applies the plugin's config block. Return the
	// error from Config.Decode (or ConfigError) unchanged so the user sees
	// the file, line and column.
	Configure(ctx context.Context, cfg *Config) error
}

// ServeConfig names the role implementations a plugin binary serves. Set
// the ones the plugin has; at least one.
type ServeConfig struct {
	VMM       VMM
	Disks     DiskBackend
	Snapshots SnapshotBackend
	Images    ImageSource
	// Logger defaults to NewLogger with the binary's name.
	Logger hclog.Logger
	// ProtocolVersion overrides the protocol version the plugin announces.
	// Only tests of the version negotiation set it.
	ProtocolVersion int
}

// NewLogger returns the logger a plugin should use: JSON on stderr at trace
// level. boxctl parses the lines and filters them by its own log level, so
// `BOXCTL_LOG=debug boxctl ...` shows plugin logs too.
func NewLogger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})
}

// Serve runs the plugin until boxctl disconnects, or until the process
// that started it is gone, however it ended, or SIGTERM: then the plugin
// removes its go-plugin socket and exits.
func Serve(cfg ServeConfig) {
	hs := Handshake()
	if os.Getenv(hs.MagicCookieKey) == hs.MagicCookieValue {
		// Run by a host, not by hand (go-plugin explains that case).
		exitWithHost()
	}
	logger := cfg.Logger
	if logger == nil {
		logger = NewLogger(pluginNameFromArgs())
	}
	version := cfg.ProtocolVersion
	if version == 0 {
		version = ProtocolVersion
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  hs,
		VersionedPlugins: map[int]plugin.PluginSet{version: cfg.PluginSet()},
		GRPCServer:       grpcServer,
		Logger:           logger,
	})
}

// PluginSet is the go-plugin set that serves the configured roles.
func (cfg ServeConfig) PluginSet() plugin.PluginSet {
	set := plugin.PluginSet{}
	life := &lifecycles{m: map[Plugin]*lifecycle{}}
	if cfg.VMM != nil {
		set[RoleVMM] = &vmmPlugin{impl: cfg.VMM, life: life}
	}
	if cfg.Disks != nil {
		set[RoleDisks] = &diskPlugin{impl: cfg.Disks, life: life}
	}
	if cfg.Snapshots != nil {
		set[RoleSnapshots] = &snapshotPlugin{impl: cfg.Snapshots, life: life}
	}
	if cfg.Images != nil {
		set[RoleImages] = &imagePlugin{impl: cfg.Images, life: life}
	}
	return set
}

// ClientPluginSet is the plugin set the host side (boxctl) uses to dispense
// role clients. Dispensing a role returns the matching interface (VMM,
// DiskBackend, SnapshotBackend or ImageSource).
func ClientPluginSet() plugin.PluginSet {
	return plugin.PluginSet{
		RoleVMM:       &vmmPlugin{},
		RoleDisks:     &diskPlugin{},
		RoleSnapshots: &snapshotPlugin{},
		RoleImages:    &imagePlugin{},
	}
}

func pluginNameFromArgs() string {
	if len(os.Args) == 0 {
		return "plugin"
	}
	name := os.Args[0]
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '/' {
			return name[i+1:]
		}
	}
	return name
}

// infoConfigureClient is the pair of calls every generated role client has.
type infoConfigureClient interface {
	Info(ctx context.Context, in *pluginv1.InfoRequest, opts ...grpc.CallOption) (*pluginv1.InfoResponse, error)
	Configure(ctx context.Context, in *pluginv1.ConfigureRequest, opts ...grpc.CallOption) (*pluginv1.ConfigureResponse, error)
}

// baseClient implements Plugin over a generated gRPC client.
type baseClient struct{ c infoConfigureClient }

func (b baseClient) Info(ctx context.Context) (Info, error) {
	resp, err := b.c.Info(ctx, &pluginv1.InfoRequest{})
	if err != nil {
		return Info{}, fromStatus(err)
	}
	return infoFromProto(resp), nil
}

func (b baseClient) Configure(ctx context.Context, cfg *Config) error {
	resp, err := b.c.Configure(ctx, configToRequest(cfg))
	if err != nil {
		return fromStatus(err)
	}
	return diagnosticsFromProto(resp.GetDiagnostics())
}

// lifecycle is where one implementation is in the call order.
type lifecycle struct {
	mu         sync.Mutex
	called     bool
	configured bool
	result     []*pluginv1.Diagnostic
}

// lifecycles tracks every implementation a process serves: one value may
// serve two roles (a storage plugin's disks and snapshots) and is
// configured once.
type lifecycles struct {
	mu sync.Mutex
	m  map[Plugin]*lifecycle
}

func (l *lifecycles) of(impl Plugin) *lifecycle {
	if l == nil {
		return &lifecycle{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lc, ok := l.m[impl]
	if !ok {
		lc = &lifecycle{}
		l.m[impl] = lc
	}
	return lc
}

// baseServer implements the Info and Configure handlers over a Plugin and
// enforces the call order.
type baseServer struct {
	impl Plugin
	life *lifecycle
	// caps marks the capabilities impl proves with optional interfaces of
	// this role.
	caps func(impl Plugin, c *Capabilities)
}

func newBaseServer(impl Plugin, life *lifecycles, caps func(Plugin, *Capabilities)) baseServer {
	return baseServer{impl: impl, life: life.of(impl), caps: caps}
}

func (b baseServer) Info(ctx context.Context, _ *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	info, err := b.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if len(info.ProtocolVersions) == 0 {
		info.ProtocolVersions = []int{ProtocolVersion}
	}
	if b.caps != nil {
		b.caps(b.impl, &info.Capabilities)
	}
	return infoToProto(info), nil
}

// Configure passes the first call to the implementation and answers later
// ones (another role of the same implementation, or a confused host) with
// the first result.
func (b baseServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	b.life.mu.Lock()
	defer b.life.mu.Unlock()
	if !b.life.called {
		err := b.impl.Configure(ctx, configFromRequest(req))
		b.life.called = true
		b.life.result = diagnosticsToProto(err)
		b.life.configured = err == nil
	}
	return &pluginv1.ConfigureResponse{Diagnostics: b.life.result}, nil
}

// ready refuses role calls until Configure succeeded.
func (b baseServer) ready() error {
	b.life.mu.Lock()
	defer b.life.mu.Unlock()
	if b.life.configured {
		return nil
	}
	why := "Configure has not been called"
	if b.life.called {
		why = "Configure failed"
	}
	return toStatus(fmt.Errorf("the plugin is not configured (%s; it must succeed before any other call): %w", why, ErrInvalidState))
}

// unsupported is the answer to an optional call the implementation lacks.
func unsupported(call string) error {
	return toStatus(fmt.Errorf("%s: %w by this plugin", call, ErrUnsupported))
}

// call adapts a unary client call: it converts the status error back into
// an sdk error.
func call[Req, Resp any](ctx context.Context, fn func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	resp, err := fn(ctx, req)
	return resp, fromStatus(err)
}

// handle adapts a unary server handler: it converts the implementation's
// error into a status error.
func handle[Resp any](resp Resp, err error) (Resp, error) {
	if err != nil {
		var zero Resp
		return zero, toStatus(err)
	}
	return resp, nil
}
