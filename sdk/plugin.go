package sdk

import (
	"context"
	"os"

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
type Plugin interface {
	// Info describes the plugin. It must not depend on configuration.
	// The sdk fills in ProtocolVersions.
	Info(ctx context.Context) (*pluginv1.InfoResponse, error)
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
		GRPCServer:       plugin.DefaultGRPCServer,
		Logger:           logger,
	})
}

// PluginSet is the go-plugin set that serves the configured roles.
func (cfg ServeConfig) PluginSet() plugin.PluginSet {
	set := plugin.PluginSet{}
	if cfg.VMM != nil {
		set[RoleVMM] = &vmmPlugin{impl: cfg.VMM}
	}
	if cfg.Disks != nil {
		set[RoleDisks] = &diskPlugin{impl: cfg.Disks}
	}
	if cfg.Snapshots != nil {
		set[RoleSnapshots] = &snapshotPlugin{impl: cfg.Snapshots}
	}
	if cfg.Images != nil {
		set[RoleImages] = &imagePlugin{impl: cfg.Images}
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

func (b baseClient) Info(ctx context.Context) (*pluginv1.InfoResponse, error) {
	resp, err := b.c.Info(ctx, &pluginv1.InfoRequest{})
	return resp, fromStatus(err)
}

func (b baseClient) Configure(ctx context.Context, cfg *Config) error {
	resp, err := b.c.Configure(ctx, configToRequest(cfg))
	if err != nil {
		return fromStatus(err)
	}
	return diagnosticsFromProto(resp.GetDiagnostics())
}

// baseServer implements the Info and Configure handlers over a Plugin.
type baseServer struct{ impl Plugin }

func (b baseServer) Info(ctx context.Context, _ *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	resp, err := b.impl.Info(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	if resp == nil {
		resp = &pluginv1.InfoResponse{}
	}
	if len(resp.ProtocolVersions) == 0 {
		resp.ProtocolVersions = []uint32{ProtocolVersion}
	}
	return resp, nil
}

func (b baseServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	err := b.impl.Configure(ctx, configFromRequest(req))
	return &pluginv1.ConfigureResponse{Diagnostics: diagnosticsToProto(err)}, nil
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
