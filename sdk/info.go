package sdk

import (
	"sort"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// Info describes a plugin. It must not depend on configuration.
type Info struct {
	// Name is the plugin's name, e.g. "qemu": lower case, [a-z0-9-].
	Name string
	// Version is the plugin's own version (semver).
	Version string
	// Description is one line for `boxctl plugins ls`.
	Description string
	// ProtocolVersions the binary speaks; Serve fills it in.
	ProtocolVersions []int
	// Capabilities the plugin offers. Serve adds those the implementation
	// proves by implementing an optional interface (Pauser sets Pause,
	// Resizer sets Resize, ...); the others are properties only the plugin
	// can declare (GracefulStop, CloneO1, ...).
	Capabilities Capabilities
}

// AgentTransport says how a VMM connects the host to the guest agent.
type AgentTransport string

const (
	// AgentSerial: the agent socket is a virtio-serial port behind a stream
	// multiplexer (package sdk/agentmux).
	AgentSerial AgentTransport = "agent-serial"
	// AgentVsock: the agent socket is a vsock port the VMM maps to a unix
	// socket.
	AgentVsock AgentTransport = "agent-vsock"
)

// Capabilities are the optional features a plugin offers, per role. The
// core checks them before it calls an optional method, and tells the user
// which plugin lacks a feature rather than failing deep inside a call.
type Capabilities struct {
	// VMM.
	Pause          bool // Pauser: Pause and Resume work
	GracefulStop   bool // Stop without force asks the guest to power off
	Metrics        bool // MetricsReporter: Metrics works
	StateFile      bool // launch plans name a state file the VM process keeps current
	Sandbox        bool // VMSpec.Sandbox is honoured (user, syscall filter, no new privileges)
	ExplicitChain  bool // exactly DiskSpec.BackingChain is opened, never a name found in a disk file
	DiskSwitch     bool // DiskSwitcher: SwitchDisk works (O(1) snapshots and clones of running boxes)
	MemorySnapshot bool // MemorySnapshotter: SaveState, StateInputs and VMSpec.Restore work
	HostCheck      bool // HostChecker: CheckHost works
	// NetworkAllow: VMSpec.Network.Allow is enforced outside the guest
	// (declared by the plugin: an older one would ignore the list, so the
	// core refuses to start a box with one on a VMM without it).
	NetworkAllow   bool
	AgentTransport AgentTransport // how the agent socket reaches the guest

	// DiskBackend and SnapshotBackend.
	Snapshots bool // the SnapshotBackend role is served
	Clone     bool // Cloner: Clone works
	CloneO1   bool // Cloner.Clone takes constant time whatever the data size
	Resize    bool // Resizer
	Export    bool // Exporter
	Import    bool // Importer
	// SnapshotTransfer: Export and Import take the snapshot fields
	// (declared by the plugin: an older one would ignore them).
	SnapshotTransfer bool

	// ImageSource.
	Registry        bool // registry references
	OCILayout       bool // oci-layout: references
	DockerArchive   bool // docker-archive: references
	RootFSExt4      bool // RootDisk returns an ext4 filesystem image
	CheckReferences bool // ReferenceChecker
	Prune           bool // Pruner
	Commit          bool // Committer
	Push            bool // Pusher
	ExportImage     bool // ImageExporter

	// Other holds flags this sdk does not know (from a newer plugin); they
	// are passed on unchanged.
	Other []string
}

// capabilityFlags name the boolean capabilities on the wire.
func (c *Capabilities) flags() []struct {
	name string
	v    *bool
} {
	return []struct {
		name string
		v    *bool
	}{
		{"pause", &c.Pause}, {"graceful-stop", &c.GracefulStop}, {"metrics", &c.Metrics},
		{"state-file", &c.StateFile}, {"sandbox", &c.Sandbox}, {"explicit-chain", &c.ExplicitChain},
		{"disk-switch", &c.DiskSwitch}, {"memory-snapshot", &c.MemorySnapshot}, {"host-check", &c.HostCheck}, {"network-allow", &c.NetworkAllow},
		{"snapshots", &c.Snapshots}, {"clone", &c.Clone}, {"clone-o1", &c.CloneO1}, {"resize", &c.Resize},
		{"export", &c.Export}, {"import", &c.Import}, {"snapshot-transfer", &c.SnapshotTransfer},
		{"registry", &c.Registry}, {"oci-layout", &c.OCILayout}, {"docker-archive", &c.DockerArchive},
		{"rootfs-ext4", &c.RootFSExt4}, {"check-reference", &c.CheckReferences}, {"prune", &c.Prune},
		{"commit", &c.Commit}, {"push", &c.Push},
		{"export-image", &c.ExportImage},
	}
}

// Strings lists the capabilities as their wire names, sorted: what `boxctl
// plugins ls` shows.
func (c Capabilities) Strings() []string {
	var out []string
	for _, f := range c.flags() {
		if *f.v {
			out = append(out, f.name)
		}
	}
	if c.AgentTransport != "" {
		out = append(out, string(c.AgentTransport))
	}
	out = append(out, c.Other...)
	sort.Strings(out)
	return out
}

// CapabilitiesOf parses capabilities from their wire names (Strings).
func CapabilitiesOf(names []string) Capabilities { return capabilitiesFromStrings(names) }

func capabilitiesFromStrings(in []string) Capabilities {
	var c Capabilities
	flags := map[string]*bool{}
	for _, f := range c.flags() {
		flags[f.name] = f.v
	}
	seen := map[string]bool{}
	for _, s := range in {
		if seen[s] {
			continue
		}
		seen[s] = true
		if v, ok := flags[s]; ok {
			*v = true
			continue
		}
		switch AgentTransport(s) {
		case AgentSerial, AgentVsock:
			c.AgentTransport = AgentTransport(s)
			continue
		}
		c.Other = append(c.Other, s)
	}
	return c
}

func infoToProto(i Info) *pluginv1.InfoResponse {
	out := &pluginv1.InfoResponse{Name: i.Name, Version: i.Version, Description: i.Description, Capabilities: i.Capabilities.Strings()}
	for _, v := range i.ProtocolVersions {
		out.ProtocolVersions = append(out.ProtocolVersions, uint32(v))
	}
	return out
}

func infoFromProto(r *pluginv1.InfoResponse) Info {
	i := Info{Name: r.GetName(), Version: r.GetVersion(), Description: r.GetDescription(), Capabilities: capabilitiesFromStrings(r.GetCapabilities())}
	for _, v := range r.GetProtocolVersions() {
		i.ProtocolVersions = append(i.ProtocolVersions, int(v))
	}
	return i
}
