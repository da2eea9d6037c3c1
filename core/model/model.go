// Package model holds boxctl's domain types: boxes, their configuration,
// their lifecycle status and runs, and the typed errors callers branch on.
// It has no behaviour beyond small helpers; the runtime (package core)
// drives the lifecycle and package state persists these types.
package model

import (
	"time"

	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/sdk"
)

// Errors the runtime returns; match them with errors.Is. They are the
// sdk's errors, the one vocabulary core, sdk and plugins share: a missing
// image reported by the image plugin matches ErrNotFound as a missing box
// does.
var (
	ErrNotFound        = sdk.ErrNotFound
	ErrAlreadyExists   = sdk.ErrAlreadyExists
	ErrInvalidState    = sdk.ErrInvalidState
	ErrShutDown        = sdk.ErrShutDown
	ErrAmbiguous       = sdk.ErrAmbiguous
	ErrInvalidArgument = sdk.ErrInvalidArgument
	ErrPermission      = sdk.ErrPermissionDenied
	ErrUnsupported     = sdk.ErrUnsupported
)

// Status is a box's lifecycle status.
type Status string

// Box statuses. Configured -> Starting -> Running -> Stopping -> Stopped;
// Running <-> Paused while a snapshot is taken; Stopped -> Starting again;
// Running -> Suspended (through Stopped) and Suspended -> Starting.
const (
	StatusConfigured Status = "configured"
	StatusStarting   Status = "starting"
	StatusRunning    Status = "running"
	StatusPaused     Status = "paused"
	StatusStopping   Status = "stopping"
	StatusStopped    Status = "stopped"
	// StatusSuspended: the VM is gone, its memory and devices saved; the
	// next start resumes every process where it was.
	StatusSuspended Status = "suspended"
)

// Active reports whether a VM may exist for a box in this status.
func (s Status) Active() bool {
	switch s {
	case StatusStarting, StatusRunning, StatusPaused, StatusStopping:
		return true
	}
	return false
}

// BoxConfig is what a box is created with. Zero values mean "the default"
// (from the config file's defaults block, or the image).
type BoxConfig struct {
	// Image is the image reference the box runs.
	Image string `json:"image"`
	// Entrypoint and Cmd override the image's; nil keeps the image's.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env entries (K=V) are added to the image's.
	Env        []string          `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	User       string            `json:"user,omitempty"`
	CPUs       int               `json:"cpus,omitempty"`
	MemoryMiB  uint64            `json:"memory_mib,omitempty"`
	DiskSize   uint64            `json:"disk_size,omitempty"`
	AutoRemove bool              `json:"auto_remove,omitempty"`
	Detach     bool              `json:"detach,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Health     *HealthCheck      `json:"health,omitempty"`
	// Platform selects an image platform ("linux/arm64"); "" is the host's.
	Platform string `json:"platform,omitempty"`
	// Ports forward host ports to ports in the box.
	Ports []PortMapping `json:"ports,omitempty"`
	// AllowHostLoopback lets the box reach services on the host's
	// loopback (through the gateway address) and the host's own
	// addresses. Off by default: a service listening only on 127.0.0.1 is
	// not meant for sandboxed code.
	AllowHostLoopback bool `json:"allow_host_loopback,omitempty"`
	// NetworkMode is NetworkModeUser or NetworkModeNone; the config file's
	// default fills it in at create.
	NetworkMode string `json:"network_mode,omitempty"`
	// AllowNet is the box's egress allow-list as given (HOST[:PORT],
	// CIDR[:PORT]; see sdk.ParseNetworkAllow): when not empty, only these
	// destinations are reachable. Validated at create.
	AllowNet []string `json:"allow_net,omitempty"`
	// Mounts are host directories and named volumes mounted in the box.
	Mounts []Mount `json:"mounts,omitempty"`
	// Hostname is the guest's host name; "" is the box's short ID.
	Hostname string `json:"hostname,omitempty"`
}

// MountKind says what a Mount's source is.
type MountKind string

const (
	// MountBind shares a host directory (Source, absolute) with the box.
	MountBind MountKind = "bind"
	// MountVolume attaches the named volume Source.
	MountVolume MountKind = "volume"
)

// Mount is a host directory or a named volume mounted at Target, an
// absolute path in the box.
type Mount struct {
	Kind     MountKind `json:"kind"`
	Source   string    `json:"source"`
	Target   string    `json:"target"`
	ReadOnly bool      `json:"read_only,omitempty"`
}

// Volume is a named data disk in the storage plugin's store that outlives
// the boxes it is attached to.
type Volume struct {
	Name string `json:"name"`
	// DiskID is the storage plugin's disk.
	DiskID    string    `json:"disk_id"`
	Size      uint64    `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// Network modes of a box.
const (
	// NetworkModeUser: outbound through the host's user-mode network stack.
	NetworkModeUser = "user"
	// NetworkModeNone: no network device at all.
	NetworkModeNone = "none"
)

// PortMapping forwards HostIP:HostPort on the host to GuestPort in the box.
type PortMapping struct {
	HostIP    string `json:"host_ip,omitempty"`
	HostPort  uint16 `json:"host_port"`
	GuestPort uint16 `json:"guest_port"`
	// Protocol is "tcp" (default) or "udp".
	Protocol string `json:"protocol,omitempty"`
}

// HealthCheck runs Cmd in the box periodically once StartPeriod has passed;
// Retries consecutive failures make the box Unhealthy.
type HealthCheck struct {
	Cmd         []string      `json:"cmd"`
	Interval    time.Duration `json:"interval"`
	Timeout     time.Duration `json:"timeout"`
	Retries     int           `json:"retries"`
	StartPeriod time.Duration `json:"start_period"`
}

// Health is the persisted result of health checks.
type Health struct {
	Status        string    `json:"status,omitempty"` // "starting", "healthy", "unhealthy"
	FailingStreak int       `json:"failing_streak,omitempty"`
	LastOutput    string    `json:"last_output,omitempty"`
	LastCheck     time.Time `json:"last_check,omitempty"`
}

// ImageConfig is the part of an image's configuration that decides how
// commands run in a box.
type ImageConfig struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	StopSignal string   `json:"stop_signal,omitempty"`
}

// Exit records how a VM ended.
type Exit struct {
	// Code is the VM process's exit code; -1 when it was killed by a signal
	// or the exit could not be observed.
	Code   int `json:"code"`
	Signal int `json:"signal,omitempty"`
	// Reason says how the exit was observed, e.g. "stopped", "vm process
	// exited", "host rebooted", "vm process vanished".
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Run is one start of a box: the processes behind it and how to reach and
// control them. It survives the boxctl process that made it.
type Run struct {
	// ID distinguishes runs, so a late update from the monitor of an old
	// run cannot overwrite a newer run's state.
	ID string `json:"id"`
	// Detached runs outlive the process that started them; others are
	// stopped when Owner exits.
	Detached bool       `json:"detached"`
	Owner    proc.Ident `json:"owner"`
	Monitor  proc.Ident `json:"monitor"`
	VM       proc.Ident `json:"vm"`
	// Handle is the VMM plugin's opaque handle for this VM.
	Handle      []byte    `json:"handle,omitempty"`
	VMM         string    `json:"vmm"`
	AgentSocket string    `json:"agent_socket,omitempty"`
	ConsoleLog  string    `json:"console_log,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	Exit        *Exit     `json:"exit,omitempty"`
	// StateFile is the VM run-state file the VMM keeps current (empty
	// when the VMM cannot report one).
	StateFile string `json:"state_file,omitempty"`
	// Pause says why a paused box is paused.
	Pause *Pause `json:"pause,omitempty"`
	// RestoredFrom says what the run's VM was restored from instead of
	// booting ("boot template", "suspended state", `checkpoint "x"`,
	// "fork of web"); empty for a boot.
	RestoredFrom string `json:"restored_from,omitempty"`
	// Accelerator is what the VM ran with ("kvm", "tcg"...), as the VMM
	// planned it; empty when the VMM did not say.
	Accelerator string `json:"accelerator,omitempty"`
}

// Why a box is paused.
const (
	// PauseRequested: someone paused it (boxctl pause, a snapshot).
	PauseRequested = "requested"
	// PauseIOError: the hypervisor stopped the guest because a disk
	// request failed, typically because the host filesystem is full.
	PauseIOError = "io-error"
)

// Pause records why a box is paused.
type Pause struct {
	Cause string `json:"cause"`
	// Reason and Device describe an I/O error ("no space left on device",
	// "vdb").
	Reason string    `json:"reason,omitempty"`
	Device string    `json:"device,omitempty"`
	At     time.Time `json:"at"`
}

// PausedByIOError reports whether the box is paused because a disk
// request failed.
func (b *Box) PausedByIOError() bool {
	return b.Status == StatusPaused && b.Run != nil && b.Run.Pause != nil && b.Run.Pause.Cause == PauseIOError
}

// Box is a box's persisted record.
type Box struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	Config    BoxConfig `json:"config"`
	Status    Status    `json:"status"`
	// Run is the current run, or the last one once stopped.
	Run *Run `json:"run,omitempty"`
	// ImageDigest is the resolved image, once the box has started, and
	// Image its configuration (the defaults execs inherit).
	ImageDigest string       `json:"image_digest,omitempty"`
	Image       *ImageConfig `json:"image,omitempty"`
	// DiskID names the box's writable disk in the storage plugin;
	// DiskCreated says whether the plugin has made it yet (on first start).
	DiskID      string `json:"disk_id,omitempty"`
	DiskCreated bool   `json:"disk_created,omitempty"`
	// ClonedFrom is the ID of the box this one was cloned from.
	ClonedFrom string `json:"cloned_from,omitempty"`
	// ClonedSnapshot is the snapshot of ClonedFrom the clone was made
	// from ("" for the source's state at the time); the clone depends on it.
	ClonedSnapshot string `json:"cloned_snapshot,omitempty"`
	// Error says what failed last (a start that failed, ...); cleared by
	// the next successful start.
	Error  string `json:"error,omitempty"`
	Health Health `json:"health,omitempty"`
	// Pending names an operation in progress that recovery must finish or
	// roll back if the process doing it dies ("removing", "cloning",
	// "snapshot:NAME").
	Pending string `json:"pending,omitempty"`
	// SandboxUID is the unprivileged user (and group) the box's
	// hypervisor runs as, allocated at its first start by a root boxctl;
	// 0 when none was needed.
	SandboxUID uint32 `json:"sandbox_uid,omitempty"`
	// VMM is the VMM plugin the box runs on, fixed at its first start:
	// the configured one, or the one vmm = "auto" chose then. Every later
	// start, stop and control of the box goes through it, whatever the
	// config says by then. Empty for a box never started (and for boxes
	// from before it was recorded: their Run.VMM says).
	VMM string `json:"vmm,omitempty"`
}

// ShortID is the 12-character prefix shown in listings.
func (b *Box) ShortID() string {
	if len(b.ID) > 12 {
		return b.ID[:12]
	}
	return b.ID
}

// NeedsAttention reports whether recovery must look at this box when a
// runtime opens: it may have a VM, awaits auto-removal, has an
// unfinished operation, or is suspended.
func (b *Box) NeedsAttention() bool {
	// Suspended boxes are listed with the active ones (boxctl ls), which
	// read this index.
	return b.Status.Active() || b.Status == StatusSuspended || b.Pending != "" || (b.Config.AutoRemove && b.Status == StatusStopped)
}

// VMState is a VM's memory and device state saved by the VMM to a file
// (sdk.MemorySnapshotter), with what the core checks before handing it
// back: a file that is not the one saved (truncated, corrupt) is refused
// before the VMM reads it, and one whose inputs changed is not restored.
type VMState struct {
	File string `json:"file"`
	Size int64  `json:"size"`
	// CRC32C is the Castagnoli CRC of the whole file.
	CRC32C uint32 `json:"crc32c"`
	// VMM is the plugin that saved it; Inputs are what it depends on
	// (sdk.MemorySnapshotter.StateInputs).
	VMM    string            `json:"vmm"`
	Inputs map[string]string `json:"inputs"`
}

// Checkpoint is a running box's memory and disk at one instant: restoring
// it continues every process from there.
type Checkpoint struct {
	BoxID     string    `json:"box_id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	State     VMState   `json:"state"`
	// DiskID is the storage plugin's disk holding the writable disk as it
	// was (an O(1) clone); empty for a suspended box's state, whose disk
	// is the box's own.
	DiskID string `json:"disk_id,omitempty"`
	CPUs   int    `json:"cpus"`
	// MemoryMiB is the guest's memory size.
	MemoryMiB uint64 `json:"memory_mib"`
	// Paused is how long the box's vCPUs were held for it.
	Paused time.Duration `json:"paused_ns"`
}

// SuspendCheckpoint is the name a suspended box's state is recorded
// under; user checkpoint names start with a letter or digit.
const SuspendCheckpoint = ".suspend"

// Template is a boot template: the state of an image's VM right after its
// guest agent came up, before any user command ran, with the writable
// disk as it was then. New boxes of the image start from it instead of
// booting.
type Template struct {
	// Key identifies the template's inputs (see core's templateKey).
	Key         string    `json:"key"`
	Image       string    `json:"image"`
	ImageDigest string    `json:"image_digest"`
	CreatedAt   time.Time `json:"created_at"`
	State       VMState   `json:"state"`
	DiskID      string    `json:"disk_id"`
	CPUs        int       `json:"cpus"`
	MemoryMiB   uint64    `json:"memory_mib"`
	DiskSize    uint64    `json:"disk_size"`
}
