package sdk

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
)

// VMM turns a VM spec into a launch plan and stops the VM it planned. Its
// implementations are stateless: everything needed to control a VM later is
// in the plan's Handle, which the core persists and passes back, possibly
// from another boxctl process and another plugin process. See vmm.proto for
// the call-order contract.
type VMM interface {
	Plugin
	// Plan returns how to launch the VM described by spec. It has no side
	// effects beyond files under spec.RunDir. ErrInvalidArgument (naming
	// the field) when the spec asks for something this VMM cannot do.
	Plan(ctx context.Context, spec VMSpec) (LaunchPlan, error)
	// Stop asks the VM to stop: with force, at once; without, the guest is
	// asked to power off and Stop returns once that request is delivered
	// (the core waits for the process and forces after its timeout). Stop of
	// a VM whose process is gone succeeds.
	Stop(ctx context.Context, vm VM, force bool) error
}

// Pauser is an optional VMM feature: stop and restart a running VM's
// vCPUs. Pause of a paused VM and Resume of a running one succeed; Resume
// also continues a VM the hypervisor stopped after a disk error, once the
// cause is fixed.
type Pauser interface {
	Pause(ctx context.Context, vm VM) error
	Resume(ctx context.Context, vm VM) error
}

// MetricsReporter is an optional VMM feature: resource use of a running VM.
type MetricsReporter interface {
	Metrics(ctx context.Context, vm VM) (Metrics, error)
}

// DiskSwitcher is an optional VMM feature: continue a running (paused)
// VM's disk on a new top file. It is how a running box is snapshotted or
// cloned in constant time: the storage plugin renames the disk's file into
// a frozen base and creates a new empty overlay over it where the file was;
// SwitchDisk then makes the VM write to that overlay. See vmm.proto for the
// contract.
type DiskSwitcher interface {
	// SwitchDisk makes the VM's disk at index (spec order, as in
	// VMSpec.Disks) continue on disk.Path, a new empty overlay whose backing
	// chain is disk.BackingChain; the file the VM had open so far is
	// BackingChain[0] (the storage plugin renamed it). The VM is paused when
	// it is called. On error the VM keeps using its old file and disk.Path
	// is untouched, so the caller can undo the rename. A VM whose disk is
	// on disk.Path already is left as it is, with success: after an error
	// whose outcome it cannot know, the caller retries before it undoes.
	SwitchDisk(ctx context.Context, vm VM, index int, disk DiskSpec) error
}

// MemorySnapshotter is an optional VMM feature: save a paused VM's memory
// and device state to a file, and start a VM from such a file instead of
// booting (VMSpec.Restore). It is what boot templates, checkpoints, suspend
// and fork are made of. See vmm.proto for the contract.
type MemorySnapshotter interface {
	// SaveState writes the complete state of the paused VM — RAM, vCPUs,
	// devices; not the contents of its disks — to path, a new file the
	// VMM creates (it must not exist; its directory does). The VM stays
	// paused; Resume continues it. The caller takes the disks' state at
	// the same instant, while the VM is still paused: a state is only
	// restorable together with disks holding exactly what they held when
	// it was saved. On error nothing is left at path and the VM can be
	// resumed as if SaveState had not been called. The file is complete
	// when SaveState returns but need not be on stable storage yet: the
	// caller syncs it once the VM runs again (a sync of hundreds of MiB
	// would otherwise lengthen the pause).
	SaveState(ctx context.Context, vm VM, path string) (SavedState, error)
	// StateInputs returns what a state saved from a VM planned with spec
	// depends on, each as a name and an opaque value that changes when the
	// input does: the guest kernel and initramfs, the hypervisor and its
	// version, the machine, vCPUs, memory, the device layout (number and
	// kinds of disks, network or none). Box-specific things (paths, kernel
	// arguments, the box ID) are not inputs. It is cheap (no hashing of
	// large files) and has no side effects.
	StateInputs(ctx context.Context, spec VMSpec) (map[string]string, error)
}

// SavedState describes a state file SaveState wrote.
type SavedState struct {
	// Size is the file's size in bytes.
	Size int64
	// Inputs are StateInputs of the VM whose state this is.
	Inputs map[string]string
}

// RestoreSpec says which saved state a VM starts from (VMSpec.Restore).
type RestoreSpec struct {
	// Path is a file SaveState wrote. The VMM only reads it.
	Path string
	// Inputs are the SavedState's; Plan refuses (ErrInvalidState, naming
	// the first input that differs and both values) a state whose inputs
	// differ from StateInputs(spec).
	Inputs map[string]string
}

// HostChecker is an optional VMM feature: say whether this VMM can run VMs
// on this host and with which accelerator, before any VM is planned. The
// core asks it to choose a VMM (vmm = "auto") and for `boxctl info`. A host
// where the VMM cannot run is a HostReport with Usable false, not an error;
// an error means the check itself failed. See vmm.proto for the contract.
type HostChecker interface {
	CheckHost(ctx context.Context) (HostReport, error)
}

// HostReport is a VMM's verdict on this host.
type HostReport struct {
	// Usable: the VMM can run VMs here.
	Usable bool
	// Accelerator is what Plan would use ("kvm", "tcg"...); empty when not
	// usable.
	Accelerator string
	// Reason says why: what is missing when not usable (never empty then),
	// and why this accelerator when usable.
	Reason string
}

// VM names a VM to control: the handle from its launch plan and the
// process the core started from that plan (plan.Argv; for the qemu plugin
// its launcher, whose child is QEMU). The core checks that PID is still
// that process (PID reuse) before it calls; plugins may trust it.
type VM struct {
	Handle []byte
	PID    int
}

// VMSpec is what the core asks a VMM to run.
type VMSpec struct {
	BoxID     string
	VCPUs     int
	MemoryMiB uint64
	// Disks in guest order: the guest sees them as vda, vdb, ... (see
	// package guestboot): the image's read-only root disk first, then the
	// box's writable disk, then data disks.
	Disks   []DiskSpec
	Network NetworkSpec
	// RunDir is a directory owned by this VM for sockets, logs and other
	// runtime files. It exists when Plan is called. Keep socket paths in it
	// short: unix socket paths are limited to 107 bytes.
	RunDir string
	// KernelArgs is the guest boot contract rendered by the core (package
	// guestboot): append it to the guest kernel's command line as it is.
	KernelArgs []string
	// Sandbox says how to confine the hypervisor process.
	Sandbox Sandbox
	// Restore, when set, starts the VM from a saved state instead of
	// booting it (MemorySnapshotter; ErrUnsupported without it). The disks
	// must hold what they held when the state was saved; KernelArgs are
	// ignored, the kernel being already up. The VM runs by itself once the
	// state is loaded, and the guest agent answers on the plan's agent
	// socket as after a boot; a state that cannot be loaded (truncated,
	// corrupt) makes the plan's process exit non-zero, the reason in its
	// log.
	Restore *RestoreSpec
	// Shares are host directories the guest mounts (package guestboot
	// names them by Tag). A VMM without directory sharing refuses a spec
	// with shares (ErrInvalidArgument).
	Shares []ShareSpec
}

// ShareSpec is a host directory exposed to the guest as a filesystem. The
// VMM enforces ReadOnly on the host side and never follows a symlink out of
// HostPath (a symlink inside the share resolves in the guest, against the
// guest's own tree).
type ShareSpec struct {
	// Tag is the guest's name for the share (a mount tag, at most 31 bytes).
	Tag string
	// HostPath is an absolute, symlink-free path of an existing directory,
	// resolved by the core.
	HostPath string
	ReadOnly bool
}

// DiskRole says what a disk is to the guest.
type DiskRole int

const (
	DiskRoleUnspecified DiskRole = iota
	// DiskRoleImage is the image's read-only root filesystem.
	DiskRoleImage
	// DiskRoleWritable is the box's writable disk.
	DiskRoleWritable
	// DiskRoleData is a further disk: a named volume, which the guest
	// mounts where package guestboot's mount keys say.
	DiskRoleData
)

func (r DiskRole) String() string {
	switch r {
	case DiskRoleImage:
		return "image"
	case DiskRoleWritable:
		return "writable"
	case DiskRoleData:
		return "data"
	}
	return "unspecified"
}

// DiskSpec is one disk of a VM.
type DiskSpec struct {
	Path string
	// Format is "raw" or "qcow2".
	Format   string
	Role     DiskRole
	ReadOnly bool
	// BackingChain lists the backing files below Path, nearest first, as
	// validated by the core (each lies inside its plugin's store). Open
	// exactly these, read-only, with these formats; a qcow2 file's own
	// backing-file name must be ignored: it could name /etc/shadow.
	BackingChain []ChainFile
}

// ChainFile is one backing file of a disk.
type ChainFile struct {
	Path   string
	Format string
}

// NetworkMode is how a VM is networked.
type NetworkMode int

const (
	// NetworkNone: no network device; the agent channel still works.
	NetworkNone NetworkMode = iota
	// NetworkUser: user-mode networking (NAT through the host), with the
	// guest addresses of package guestboot; package usernet implements it.
	NetworkUser
)

// NetworkSpec is a VM's network.
type NetworkSpec struct {
	Mode  NetworkMode
	Ports []PortForward
	// AllowHostLoopback: the host's loopback (through the gateway address)
	// and the host's own addresses are reachable from the guest. Off by
	// default: a service listening only on 127.0.0.1 must not be exposed to
	// a box.
	AllowHostLoopback bool
	// Allow, when not empty, is the guest's egress allow-list: only these
	// destinations are reachable and only their names resolve; the host
	// side enforces it, so the guest cannot get around it.
	Allow []NetworkAllow
}

// PortForward publishes a guest port on the host.
type PortForward struct {
	// Protocol is "tcp" (the default when empty) or "udp".
	Protocol string
	// HostIP is the host address to listen on; "" means all.
	HostIP    string
	HostPort  uint16
	GuestPort uint16
}

// Sandbox says how the hypervisor process is confined. The core sets UID
// and GID only when it runs as root: then run the hypervisor as that
// unprivileged user and hand it disk files as open descriptors. Unless
// Disabled, also apply a syscall filter and no-new-privileges.
type Sandbox struct {
	Disabled bool
	UID, GID uint32
	// Cgroup is a cgroup v2 directory the core made with the box's memory
	// and CPU limits; move the hypervisor into it. Empty when the host has
	// no usable cgroup v2.
	Cgroup string
}

// LaunchPlan is how to start a VM: the core starts Argv as a child of the
// box's monitor.
type LaunchPlan struct {
	// Argv is the process to start; Argv[0] is an absolute path.
	Argv []string
	// Env is its complete environment (KEY=VALUE) and Dir its working
	// directory.
	Env []string
	Dir string
	// Handle is opaque to the core, which persists it and passes it back
	// in VM. It must hold everything the plugin needs to find the VM again.
	Handle []byte
	// AgentSocket is a unix socket through which the guest agent is reached;
	// it must accept several connections at once. It may appear after the
	// process starts: the core polls it.
	AgentSocket string
	// ConsoleLog is the file the guest console is written to.
	ConsoleLog string
	// Notice is a one-line notice for the user (say, that KVM is not usable
	// and TCG is used); may be empty.
	Notice string
	// StateFile, when set, is a file the plan's process keeps current with
	// the VM's run state (see vmm.proto); the box monitor watches it.
	StateFile string
	// Accelerator is what the VM runs with ("kvm", "tcg"...), recorded
	// with the box; empty when the VMM has no such choice.
	Accelerator string
}

// Metrics is a running VM's resource use.
type Metrics struct {
	// CPUUser and CPUSystem are the CPU time the VM process used.
	CPUUser, CPUSystem time.Duration
	// RSS is the VM process's resident memory in bytes.
	RSS uint64
	// Extra holds further plugin-specific numbers, e.g. "vcpus_halted".
	Extra map[string]float64
}

type vmmPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl VMM
	life *lifecycles
}

func (p *vmmPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginv1.RegisterVMMServer(s, &vmmServer{baseServer: newBaseServer(p.impl, p.life, vmmCapabilities), impl: p.impl})
	return nil
}

func (p *vmmPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewVMMClient(conn), nil
}

// vmmCapabilities marks what impl proves by its optional interfaces.
func vmmCapabilities(impl Plugin, c *Capabilities) {
	if _, ok := impl.(Pauser); ok {
		c.Pause = true
	}
	if _, ok := impl.(MetricsReporter); ok {
		c.Metrics = true
	}
	if _, ok := impl.(DiskSwitcher); ok {
		c.DiskSwitch = true
	}
	if _, ok := impl.(MemorySnapshotter); ok {
		c.MemorySnapshot = true
	}
	if _, ok := impl.(HostChecker); ok {
		c.HostCheck = true
	}
}

// VMMClient is a VMM served by a plugin process. It has every optional
// method; those the plugin lacks return ErrUnsupported (check the
// plugin's Capabilities first).
type VMMClient interface {
	VMM
	Pauser
	MetricsReporter
	DiskSwitcher
	MemorySnapshotter
	HostChecker
}

// NewVMMClient returns a VMM that calls a plugin over conn.
func NewVMMClient(conn grpc.ClientConnInterface) VMMClient {
	c := pluginv1.NewVMMClient(conn)
	return &vmmClient{baseClient: baseClient{c}, c: c}
}

type vmmClient struct {
	baseClient
	c pluginv1.VMMClient
}

func (v *vmmClient) Plan(ctx context.Context, spec VMSpec) (LaunchPlan, error) {
	if err := checkRestore(spec.Restore); err != nil {
		return LaunchPlan{}, err
	}
	resp, err := call(ctx, v.c.Plan, &pluginv1.PlanRequest{Spec: specToProto(spec)})
	if err != nil {
		return LaunchPlan{}, err
	}
	return planFromProto(resp.GetPlan()), nil
}

func (v *vmmClient) Stop(ctx context.Context, vm VM, force bool) error {
	_, err := call(ctx, v.c.Stop, &pluginv1.StopRequest{Handle: vm.Handle, Pid: int64(vm.PID), Force: force})
	return err
}

func (v *vmmClient) Pause(ctx context.Context, vm VM) error {
	_, err := call(ctx, v.c.Pause, controlToProto(vm))
	return err
}

func (v *vmmClient) Resume(ctx context.Context, vm VM) error {
	_, err := call(ctx, v.c.Resume, controlToProto(vm))
	return err
}

func (v *vmmClient) Metrics(ctx context.Context, vm VM) (Metrics, error) {
	resp, err := call(ctx, v.c.Metrics, controlToProto(vm))
	if err != nil {
		return Metrics{}, err
	}
	return Metrics{
		CPUUser:   time.Duration(resp.GetCpuUserNs()),
		CPUSystem: time.Duration(resp.GetCpuSystemNs()),
		RSS:       resp.GetRssBytes(),
		Extra:     resp.GetExtra(),
	}, nil
}

func (v *vmmClient) SwitchDisk(ctx context.Context, vm VM, index int, disk DiskSpec) error {
	if err := checkSwitch(index, disk); err != nil {
		return err
	}
	_, err := call(ctx, v.c.SwitchDisk, &pluginv1.SwitchDiskRequest{Handle: vm.Handle, Pid: int64(vm.PID), Index: int32(index), Disk: diskSpecToProto(disk)})
	return err
}

func (v *vmmClient) SaveState(ctx context.Context, vm VM, path string) (SavedState, error) {
	if err := checkSavePath(path); err != nil {
		return SavedState{}, err
	}
	resp, err := call(ctx, v.c.SaveState, &pluginv1.SaveStateRequest{Handle: vm.Handle, Pid: int64(vm.PID), Path: path})
	if err != nil {
		return SavedState{}, err
	}
	return SavedState{Size: resp.GetSize(), Inputs: resp.GetInputs()}, nil
}

func (v *vmmClient) StateInputs(ctx context.Context, spec VMSpec) (map[string]string, error) {
	resp, err := call(ctx, v.c.StateInputs, &pluginv1.StateInputsRequest{Spec: specToProto(spec)})
	if err != nil {
		return nil, err
	}
	return resp.GetInputs(), nil
}

func (v *vmmClient) CheckHost(ctx context.Context) (HostReport, error) {
	resp, err := call(ctx, v.c.CheckHost, &pluginv1.CheckHostRequest{})
	if err != nil {
		return HostReport{}, err
	}
	r := HostReport{Usable: resp.GetUsable(), Accelerator: resp.GetAccelerator(), Reason: resp.GetReason()}
	if !r.Usable && r.Reason == "" {
		r.Reason = "the VMM plugin says it cannot run VMs here, without a reason"
	}
	return r, nil
}

// checkSavePath refuses a SaveState path no VMM could write, on both sides
// of the wire.
func checkSavePath(path string) error {
	if path == "" || !filepath.IsAbs(path) {
		return fmt.Errorf("SaveState: path %q: want the absolute path of a new file: %w", path, ErrInvalidArgument)
	}
	return nil
}

// checkRestore refuses a VMSpec.Restore no VMM could start from, on both
// sides of the wire.
func checkRestore(r *RestoreSpec) error {
	switch {
	case r == nil:
		return nil
	case r.Path == "" || !filepath.IsAbs(r.Path):
		return fmt.Errorf("Plan: Restore.Path %q: want the absolute path of a file SaveState wrote: %w", r.Path, ErrInvalidArgument)
	case len(r.Inputs) == 0:
		return fmt.Errorf("Plan: Restore.Inputs is empty: pass the inputs SaveState returned with %s: %w", r.Path, ErrInvalidArgument)
	}
	return nil
}

// checkSwitch refuses a SwitchDisk request no VMM could carry out, on both
// sides of the wire: a plugin need not check these itself.
func checkSwitch(index int, d DiskSpec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("SwitchDisk: "+format+": %w", append(args, ErrInvalidArgument)...)
	}
	switch {
	case index < 0 || index > math.MaxInt32:
		return bad("index %d: want a disk's position in VMSpec.Disks", index)
	case d.Path == "" || !filepath.IsAbs(d.Path):
		return bad("disk.Path %q: want the absolute path of the new overlay", d.Path)
	case d.Format != "qcow2":
		return bad("disk.Format %q: the new top file must be a qcow2 overlay (a raw file has no backing file)", d.Format)
	case d.ReadOnly:
		return bad("disk.ReadOnly: only a writable disk is switched (a read-only one never changes)")
	case len(d.BackingChain) == 0:
		return bad("disk.BackingChain is empty: its first file must be the one the VM has open so far")
	}
	for i, c := range d.BackingChain {
		if c.Path == "" || !filepath.IsAbs(c.Path) {
			return bad("disk.BackingChain[%d].Path %q: want an absolute path", i, c.Path)
		}
		if c.Path == d.Path {
			return bad("disk.BackingChain[%d] is disk.Path %s itself", i, c.Path)
		}
	}
	return nil
}

type vmmServer struct {
	pluginv1.UnimplementedVMMServer
	baseServer
	impl VMM
}

func (s *vmmServer) Info(ctx context.Context, req *pluginv1.InfoRequest) (*pluginv1.InfoResponse, error) {
	return s.baseServer.Info(ctx, req)
}

func (s *vmmServer) Configure(ctx context.Context, req *pluginv1.ConfigureRequest) (*pluginv1.ConfigureResponse, error) {
	return s.baseServer.Configure(ctx, req)
}

func (s *vmmServer) Plan(ctx context.Context, req *pluginv1.PlanRequest) (*pluginv1.PlanResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	spec := specFromProto(req.GetSpec())
	if spec.Restore != nil {
		if _, ok := s.impl.(MemorySnapshotter); !ok {
			return nil, unsupported("Plan with Restore (memory snapshots)")
		}
		if err := checkRestore(spec.Restore); err != nil {
			return nil, toStatus(err)
		}
	}
	plan, err := s.impl.Plan(ctx, spec)
	return handle(&pluginv1.PlanResponse{Plan: planToProto(plan)}, err)
}

func (s *vmmServer) Stop(ctx context.Context, req *pluginv1.StopRequest) (*pluginv1.StopResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	return handle(&pluginv1.StopResponse{}, s.impl.Stop(ctx, VM{Handle: req.GetHandle(), PID: int(req.GetPid())}, req.GetForce()))
}

func (s *vmmServer) Pause(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.ControlResponse, error) {
	p, err := s.pauser()
	if err != nil {
		return nil, err
	}
	return handle(&pluginv1.ControlResponse{}, p.Pause(ctx, controlFromProto(req)))
}

func (s *vmmServer) Resume(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.ControlResponse, error) {
	p, err := s.pauser()
	if err != nil {
		return nil, err
	}
	return handle(&pluginv1.ControlResponse{}, p.Resume(ctx, controlFromProto(req)))
}

func (s *vmmServer) pauser() (Pauser, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	p, ok := s.impl.(Pauser)
	if !ok {
		return nil, unsupported("Pause/Resume")
	}
	return p, nil
}

func (s *vmmServer) Metrics(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.MetricsResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	m, ok := s.impl.(MetricsReporter)
	if !ok {
		return nil, unsupported("Metrics")
	}
	res, err := m.Metrics(ctx, controlFromProto(req))
	return handle(&pluginv1.MetricsResponse{
		CpuUserNs: uint64(res.CPUUser), CpuSystemNs: uint64(res.CPUSystem), RssBytes: res.RSS, Extra: res.Extra,
	}, err)
}

func (s *vmmServer) SwitchDisk(ctx context.Context, req *pluginv1.SwitchDiskRequest) (*pluginv1.SwitchDiskResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	d, ok := s.impl.(DiskSwitcher)
	if !ok {
		return nil, unsupported("SwitchDisk")
	}
	disk := diskSpecFromProto(req.GetDisk())
	if err := checkSwitch(int(req.GetIndex()), disk); err != nil {
		return nil, toStatus(err)
	}
	vm := VM{Handle: req.GetHandle(), PID: int(req.GetPid())}
	return handle(&pluginv1.SwitchDiskResponse{}, d.SwitchDisk(ctx, vm, int(req.GetIndex()), disk))
}

func (s *vmmServer) SaveState(ctx context.Context, req *pluginv1.SaveStateRequest) (*pluginv1.SaveStateResponse, error) {
	m, err := s.snapshotter("SaveState")
	if err != nil {
		return nil, err
	}
	if err := checkSavePath(req.GetPath()); err != nil {
		return nil, toStatus(err)
	}
	st, err := m.SaveState(ctx, VM{Handle: req.GetHandle(), PID: int(req.GetPid())}, req.GetPath())
	return handle(&pluginv1.SaveStateResponse{Size: st.Size, Inputs: st.Inputs}, err)
}

func (s *vmmServer) StateInputs(ctx context.Context, req *pluginv1.StateInputsRequest) (*pluginv1.StateInputsResponse, error) {
	m, err := s.snapshotter("StateInputs")
	if err != nil {
		return nil, err
	}
	in, err := m.StateInputs(ctx, specFromProto(req.GetSpec()))
	return handle(&pluginv1.StateInputsResponse{Inputs: in}, err)
}

func (s *vmmServer) CheckHost(ctx context.Context, _ *pluginv1.CheckHostRequest) (*pluginv1.CheckHostResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	c, ok := s.impl.(HostChecker)
	if !ok {
		return nil, unsupported("CheckHost")
	}
	r, err := c.CheckHost(ctx)
	return handle(&pluginv1.CheckHostResponse{Usable: r.Usable, Accelerator: r.Accelerator, Reason: r.Reason}, err)
}

func (s *vmmServer) snapshotter(what string) (MemorySnapshotter, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	m, ok := s.impl.(MemorySnapshotter)
	if !ok {
		return nil, unsupported(what)
	}
	return m, nil
}

func controlToProto(vm VM) *pluginv1.ControlRequest {
	return &pluginv1.ControlRequest{Handle: vm.Handle, Pid: int64(vm.PID)}
}

func controlFromProto(r *pluginv1.ControlRequest) VM {
	return VM{Handle: r.GetHandle(), PID: int(r.GetPid())}
}

func specToProto(s VMSpec) *pluginv1.VMSpec {
	out := &pluginv1.VMSpec{
		BoxId: s.BoxID, Vcpus: uint32(s.VCPUs), MemoryMib: s.MemoryMiB, RunDir: s.RunDir, KernelArgs: s.KernelArgs,
		Network: &pluginv1.NetworkSpec{Mode: networkModeToProto(s.Network.Mode), AllowHostLoopback: s.Network.AllowHostLoopback},
		Sandbox: &pluginv1.Sandbox{Disabled: s.Sandbox.Disabled, Uid: s.Sandbox.UID, Gid: s.Sandbox.GID, Cgroup: s.Sandbox.Cgroup},
	}
	for _, p := range s.Network.Ports {
		out.Network.Ports = append(out.Network.Ports, &pluginv1.PortForward{Protocol: p.Protocol, HostIp: p.HostIP, HostPort: uint32(p.HostPort), GuestPort: uint32(p.GuestPort)})
	}
	for _, a := range s.Network.Allow {
		pa := &pluginv1.NetworkAllow{Host: a.Host, Port: uint32(a.Port)}
		if a.Prefix.IsValid() {
			pa.Cidr = a.Prefix.String()
		}
		out.Network.Allow = append(out.Network.Allow, pa)
	}
	for _, d := range s.Disks {
		out.Disks = append(out.Disks, diskSpecToProto(d))
	}
	if r := s.Restore; r != nil {
		out.Restore = &pluginv1.RestoreSpec{Path: r.Path, Inputs: r.Inputs}
	}
	for _, sh := range s.Shares {
		out.Shares = append(out.Shares, &pluginv1.ShareSpec{Tag: sh.Tag, HostPath: sh.HostPath, ReadOnly: sh.ReadOnly})
	}
	return out
}

func diskSpecToProto(d DiskSpec) *pluginv1.DiskSpec {
	pd := &pluginv1.DiskSpec{Path: d.Path, Format: d.Format, Role: pluginv1.DiskRole(d.Role), ReadOnly: d.ReadOnly}
	for _, c := range d.BackingChain {
		pd.BackingChain = append(pd.BackingChain, &pluginv1.ChainFile{Path: c.Path, Format: c.Format})
	}
	return pd
}

func diskSpecFromProto(d *pluginv1.DiskSpec) DiskSpec {
	ds := DiskSpec{Path: d.GetPath(), Format: d.GetFormat(), Role: DiskRole(d.GetRole()), ReadOnly: d.GetReadOnly()}
	for _, c := range d.GetBackingChain() {
		ds.BackingChain = append(ds.BackingChain, ChainFile{Path: c.GetPath(), Format: c.GetFormat()})
	}
	return ds
}

func specFromProto(p *pluginv1.VMSpec) VMSpec {
	s := VMSpec{
		BoxID: p.GetBoxId(), VCPUs: int(p.GetVcpus()), MemoryMiB: p.GetMemoryMib(), RunDir: p.GetRunDir(), KernelArgs: p.GetKernelArgs(),
		Network: NetworkSpec{Mode: networkModeFromProto(p.GetNetwork().GetMode()), AllowHostLoopback: p.GetNetwork().GetAllowHostLoopback()},
	}
	if sb := p.GetSandbox(); sb != nil {
		s.Sandbox = Sandbox{Disabled: sb.GetDisabled(), UID: sb.GetUid(), GID: sb.GetGid(), Cgroup: sb.GetCgroup()}
	}
	for _, pf := range p.GetNetwork().GetPorts() {
		s.Network.Ports = append(s.Network.Ports, PortForward{Protocol: pf.GetProtocol(), HostIP: pf.GetHostIp(), HostPort: uint16(pf.GetHostPort()), GuestPort: uint16(pf.GetGuestPort())})
	}
	for _, pa := range p.GetNetwork().GetAllow() {
		a := NetworkAllow{Host: pa.GetHost(), Port: uint16(pa.GetPort())}
		if pa.GetCidr() != "" {
			// A CIDR that does not parse stays invalid here; the plugin's
			// validation refuses the rule then (it must not allow anything).
			a.Prefix, _ = netip.ParsePrefix(pa.GetCidr())
			if !a.Prefix.IsValid() {
				a.Host = "invalid CIDR " + pa.GetCidr()
			}
		}
		s.Network.Allow = append(s.Network.Allow, a)
	}
	for _, d := range p.GetDisks() {
		s.Disks = append(s.Disks, diskSpecFromProto(d))
	}
	if r := p.GetRestore(); r != nil {
		s.Restore = &RestoreSpec{Path: r.GetPath(), Inputs: r.GetInputs()}
	}
	for _, sh := range p.GetShares() {
		s.Shares = append(s.Shares, ShareSpec{Tag: sh.GetTag(), HostPath: sh.GetHostPath(), ReadOnly: sh.GetReadOnly()})
	}
	return s
}

// The wire's network modes are the Go ones shifted by one (0 is the
// protobuf's unspecified, read as NetworkNone). A mode this sdk does not
// know, from a newer core, crosses unchanged so that the plugin refuses it
// (ErrInvalidArgument) instead of running the VM without a network.
func networkModeToProto(m NetworkMode) pluginv1.NetworkSpec_Mode {
	if m < 0 {
		return pluginv1.NetworkSpec_Mode(m)
	}
	return pluginv1.NetworkSpec_Mode(m + 1)
}

func networkModeFromProto(m pluginv1.NetworkSpec_Mode) NetworkMode {
	switch {
	case m == pluginv1.NetworkSpec_MODE_UNSPECIFIED:
		return NetworkNone
	case m < 0:
		return NetworkMode(m)
	}
	return NetworkMode(m - 1)
}

func planToProto(p LaunchPlan) *pluginv1.LaunchPlan {
	return &pluginv1.LaunchPlan{
		Argv: p.Argv, Env: p.Env, Dir: p.Dir, Handle: p.Handle, AgentSocket: p.AgentSocket,
		ConsoleLog: p.ConsoleLog, Notice: p.Notice, StateFile: p.StateFile, Accelerator: p.Accelerator,
	}
}

func planFromProto(p *pluginv1.LaunchPlan) LaunchPlan {
	return LaunchPlan{
		Argv: p.GetArgv(), Env: p.GetEnv(), Dir: p.GetDir(), Handle: p.GetHandle(), AgentSocket: p.GetAgentSocket(),
		ConsoleLog: p.GetConsoleLog(), Notice: p.GetNotice(), StateFile: p.GetStateFile(), Accelerator: p.GetAccelerator(),
	}
}
