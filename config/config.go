package config

import (
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// Built-in defaults, used for anything the config file does not set.
const (
	DefaultVMM         = "qemu"
	DefaultStorage     = "qcow2"
	DefaultImages      = "oci"
	DefaultLogLevel    = "warn"
	DefaultCPUs        = 1
	DefaultMemoryMiB   = 512
	DefaultDiskSize    = 10 << 30
	DefaultCallTimeout = 30 * time.Second
)

// Config is boxctl's effective configuration.
type Config struct {
	// File is the file the configuration was read from; "" when only the
	// built-in defaults apply.
	File string
	// Home is where boxctl keeps state, images, disks and boxes.
	Home string
	// LogLevel is one of trace, debug, info, warn, error, off.
	LogLevel string
	// VMM, Storage and Images name the plugin serving each role. Storage
	// serves both the DiskBackend and the SnapshotBackend.
	VMM     string
	Storage string
	Images  string
	// Plugins holds the `plugin "<name>"` blocks, by name.
	Plugins  map[string]*Plugin
	Defaults BoxDefaults
	Registry Registry

	// files holds the parsed sources, for rendering diagnostics with
	// snippets.
	files map[string]*hcl.File
}

// Plugin is a `plugin "<name>" { ... }` block.
type Plugin struct {
	Name string
	// Path to the binary; "" means: look next to boxctl, then in
	// <home>/plugins.
	Path string
	// SHA256 of the binary, checked before it is started; "" skips the check.
	SHA256 string
	// CallTimeout bounds each quick plugin call; a plugin that does not
	// answer in time is reported as hung and stopped.
	CallTimeout time.Duration
	// ConfigBody is the source of the block's `config { ... }` body, handed
	// to the plugin verbatim; ConfigStart is its position in the file.
	ConfigBody  []byte
	ConfigStart hcl.Pos

	// Ranges for diagnostics raised after loading (binary missing,
	// checksum mismatch).
	DeclRange   hcl.Range
	PathRange   *hcl.Range
	SHA256Range *hcl.Range
}

// BoxDefaults apply to boxes created without explicit settings.
type BoxDefaults struct {
	CPUs       int
	MemoryMiB  uint64
	DiskSize   uint64
	AutoRemove bool
	Detach     bool
	// AllowHostLoopback lets boxes reach the host's loopback and the
	// host's own addresses (off: a service bound to 127.0.0.1 is not for
	// sandboxed code).
	AllowHostLoopback bool
}

// Registry holds the settings for reaching image registries.
type Registry struct {
	Mirrors     []Mirror
	Insecure    []string
	Credentials []Credential
	// DockerCredentials says whether Docker's config file and credential
	// helpers are consulted for hosts without an explicit credential.
	DockerCredentials bool
}

// Mirror lists endpoints tried before a registry host.
type Mirror struct {
	Registry  string
	Endpoints []string
}

// Credential is an explicit credential for one registry host.
type Credential struct {
	Registry string
	Username string
	Password string
	Token    string
}

// Default returns the built-in configuration.
func Default() *Config {
	return &Config{
		Home:     DefaultHome(),
		LogLevel: DefaultLogLevel,
		VMM:      DefaultVMM,
		Storage:  DefaultStorage,
		Images:   DefaultImages,
		Plugins:  map[string]*Plugin{},
		Defaults: BoxDefaults{
			CPUs:      DefaultCPUs,
			MemoryMiB: DefaultMemoryMiB,
			DiskSize:  DefaultDiskSize,
		},
		Registry: Registry{DockerCredentials: true},
		files:    map[string]*hcl.File{},
	}
}

// DefaultHome is $BOXCTL_HOME, else $XDG_DATA_HOME/boxctl, else
// ~/.local/share/boxctl.
func DefaultHome() string {
	if h := os.Getenv("BOXCTL_HOME"); h != "" {
		return h
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "boxctl")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "boxctl")
	}
	return filepath.Join(home, ".local", "share", "boxctl")
}

// Plugin returns the block for the named plugin, or an empty one (all
// defaults) when the config has none.
func (c *Config) Plugin(name string) *Plugin {
	if p, ok := c.Plugins[name]; ok {
		return p
	}
	return &Plugin{Name: name, CallTimeout: DefaultCallTimeout}
}

// Files returns the parsed sources by file name, for rendering diagnostics.
func (c *Config) Files() map[string]*hcl.File { return c.files }
