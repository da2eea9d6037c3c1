package config

import (
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// AutoVMM is the vmm setting that chooses the VMM plugin per host: the
// first of AutoVMMCandidates whose plugin is installed and says it can run
// VMs here.
const AutoVMM = "auto"

// AutoVMMCandidates are the VMM plugins vmm = "auto" tries, best first:
// libkrun (where its library loads and KVM really runs guests), then QEMU
// (KVM where that works, TCG otherwise).
func AutoVMMCandidates() []string { return []string{"libkrun", "qemu"} }

// Built-in defaults, used for anything the config file does not set.
const (
	DefaultVMM         = AutoVMM
	DefaultStorage     = "qcow2"
	DefaultImages      = "oci"
	DefaultLogLevel    = "warn"
	DefaultCPUs        = 1
	DefaultMemoryMiB   = 512
	DefaultDiskSize    = 10 << 30
	DefaultCallTimeout = 30 * time.Second
	// DefaultSandboxUIDBase is where per-box hypervisor user IDs start:
	// far above the IDs of real users and of the usual subordinate ID
	// ranges (/etc/subuid starts at 100000).
	DefaultSandboxUIDBase = 0x70000000
	// MinSandboxUIDBase and MaxSandboxUID bound the per-box IDs: below the
	// first lie real users; 4294967295 is (uid_t)-1 and 4294967294 is
	// often nobody.
	MinSandboxUIDBase = 1 << 16
	MaxSandboxUID     = 0xFFFFFFFD
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
	// VMM, Storage and Images name the plugin serving each role (VMM may be
	// AutoVMM: chosen per host). Storage
	// serves both the DiskBackend and the SnapshotBackend.
	VMM     string
	Storage string
	Images  string
	// Plugins holds the `plugin "<name>"` blocks, by name.
	Plugins  map[string]*Plugin
	Defaults BoxDefaults
	Registry Registry
	Sandbox  Sandbox

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

// Network modes of the defaults block's network attribute.
const (
	NetworkUser = "user"
	NetworkNone = "none"
)

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
	// Network is the network mode of new boxes: "user" (outbound through
	// the host's user-mode network stack, the default) or "none" (no
	// network device).
	Network string
	// AllowNet is the egress allow-list of new user-mode boxes that set
	// none of their own (HOST[:PORT] or CIDR[:PORT] each); empty: no list.
	AllowNet []string
	// BootTemplates: a new box of an image starts from a memory snapshot
	// taken right after the image's first boot (same kernel, VMM, vCPUs,
	// memory and disk size) instead of booting, where the VMM can.
	BootTemplates bool
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

// Sandbox is the `sandbox { ... }` block: how the hypervisor process is
// confined (docs/security.md).
type Sandbox struct {
	// Enabled confines the hypervisor: a syscall filter and no new
	// privileges always, and, when boxctl runs as root, a per-box
	// unprivileged user. false turns all of it off (for debugging).
	Enabled bool
	// UIDBase: box number n (counted per home) runs as user and group
	// UIDBase+n.
	UIDBase uint32
	// Cgroups gives each box a cgroup v2 with memory and CPU limits, where
	// the host lets boxctl create one.
	Cgroups bool
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
			CPUs:          DefaultCPUs,
			Network:       NetworkUser,
			MemoryMiB:     DefaultMemoryMiB,
			DiskSize:      DefaultDiskSize,
			BootTemplates: true,
		},
		Registry: Registry{DockerCredentials: true},
		Sandbox:  Sandbox{Enabled: true, UIDBase: DefaultSandboxUIDBase, Cgroups: true},
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
