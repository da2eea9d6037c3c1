// Package krunvmm is boxctl's libkrun VMM plugin: it turns a VM spec into a
// launch plan that runs one libkrun VM in a launcher process of its own
// (`boxctl-plugin-libkrun launch FILE`), and stops VMs through the
// launcher's control socket or by signal.
//
// libkrun's krun_start_enter takes over the process that calls it and exits
// it when the guest ends, so every VM is its own launcher process: the
// launcher configures a libkrun context from the plan, starts a small
// control server (graceful stop) on another thread, and enters the VM on a
// locked OS thread. The VM's exit code is the launcher's.
//
// The guest is boxctl's own kernel and initramfs (krun_set_kernel), so the
// same agent runs as under QEMU; libkrun maps its vsock port to the plan's
// agent socket (krun_add_vsock_port2, listen=true), which the agent's
// protocol is spoken on directly (sdk.AgentVsock).
package krunvmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/internal/kvmprobe"
	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/plugins/libkrun/internal/krun"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/sdk/usernet"
)

// Version is the plugin's version.
const Version = "0.1.0"

// settings is the plugin's effective configuration.
type settings struct {
	// Library is the libkrun shared library; searched for when empty.
	Library string
	// Kernel and Initrd are the guest kernel and initramfs; found next to
	// the plugin when unset.
	Kernel, Initrd string
	// KernelArgs are appended to the guest kernel command line.
	KernelArgs []string
	// PassEnv names variables of the plugin's environment that the
	// launcher gets too (libkrun's own RUST_LOG, say).
	PassEnv []string
	// NoKVMProbe turns the KVM probe of CheckHost off (kvm_probe = false):
	// for a host whose KVM is slower than the probe's bound but good
	// enough for its owner; libkrun then fails at start if KVM cannot run
	// the guest at all.
	NoKVMProbe bool
}

// block is the plugin's HCL config block.
type block struct {
	Library    hcl.Expression `hcl:"library,optional"`
	Kernel     hcl.Expression `hcl:"kernel,optional"`
	Initrd     hcl.Expression `hcl:"initrd,optional"`
	KernelArgs hcl.Expression `hcl:"kernel_args,optional"`
	PassEnv    hcl.Expression `hcl:"pass_env,optional"`
	KVMProbe   hcl.Expression `hcl:"kvm_probe,optional"`
}

// VMM implements sdk.VMM.
type VMM struct {
	log hclog.Logger
	exe string

	mu  sync.Mutex
	cfg settings

	// kvm is the KVM probe, run once for the plugin process's life.
	kvm *kvmprobe.Once
}

// Option configures New.
type Option func(*VMM)

// WithKVMProbe replaces the KVM probe (kvmprobe.Probe on /dev/kvm) that
// CheckHost consults.
func WithKVMProbe(p func(context.Context) kvmprobe.Result) Option {
	return func(v *VMM) { v.kvm = kvmprobe.NewOnce(p) }
}

// New returns the plugin. exe is the plugin binary (the launcher).
func New(log hclog.Logger, exe string, opts ...Option) *VMM {
	v := &VMM{log: log, exe: exe, kvm: kvmprobe.NewOnce(nil)}
	for _, o := range opts {
		o(v)
	}
	return v
}

var (
	_ sdk.VMM             = (*VMM)(nil)
	_ sdk.MetricsReporter = (*VMM)(nil)
	_ sdk.HostChecker     = (*VMM)(nil)
)

// Info describes the plugin. There is no pause (libkrun offers none on
// Linux), no memory snapshot and no disk switch; libkrun opens a qcow2
// disk's backing files by the names in the files, so explicit-chain is not
// declared either (Plan only accepts chains whose names are the spec's).
func (v *VMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "libkrun",
		Version:     Version,
		Description: "libkrun VMM: a KVM (or macOS Hypervisor.framework) micro-VM per launcher process",
		Capabilities: sdk.Capabilities{
			GracefulStop:   true,
			StateFile:      true,
			NetworkAllow:   true,
			AgentTransport: sdk.AgentVsock,
		},
	}, nil
}

// Configure validates the plugin's config block.
func (v *VMM) Configure(_ context.Context, cfg *sdk.Config) error {
	var b block
	if err := cfg.Decode(&b); err != nil {
		return err
	}
	var s settings
	rng, set, err := sdk.DecodeOptional(b.Library, &s.Library)
	if err != nil {
		return err
	}
	if set {
		if _, err := os.Stat(s.Library); err != nil {
			return sdk.ConfigError(rng, "libkrun not found", fmt.Sprintf("library = %q: %v. %s.", s.Library, err, krun.InstallHint))
		}
	}
	for _, f := range []struct {
		name string
		expr hcl.Expression
		dst  *string
	}{{"kernel", b.Kernel, &s.Kernel}, {"initrd", b.Initrd, &s.Initrd}} {
		rng, set, err := sdk.DecodeOptional(f.expr, f.dst)
		if err != nil {
			return err
		}
		if set {
			if _, err := os.Stat(*f.dst); err != nil {
				return sdk.ConfigError(rng, "Guest "+f.name+" not found", fmt.Sprintf("%s = %q: %v. Build the guest with `make guest` or correct the path.", f.name, *f.dst, err))
			}
		}
	}
	if _, _, err := sdk.DecodeOptional(b.KernelArgs, &s.KernelArgs); err != nil {
		return err
	}
	if _, _, err := sdk.DecodeOptional(b.PassEnv, &s.PassEnv); err != nil {
		return err
	}
	probe := true
	if _, _, err := sdk.DecodeOptional(b.KVMProbe, &probe); err != nil {
		return err
	}
	s.NoKVMProbe = !probe
	v.mu.Lock()
	v.cfg = s
	v.mu.Unlock()
	return nil
}

func (v *VMM) settings() settings {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.cfg
}

// checkLibrary says whether libkrun loads here with every symbol a VM
// needs (CheckHost adds the KVM probe).
func (v *VMM) checkLibrary() (usable bool, reason string) {
	lib, err := krun.Open(v.settings().Library)
	if err != nil {
		return false, err.Error()
	}
	if err := lib.CheckSymbols("a VM without network", krun.Isolation()); err != nil {
		return true, "libkrun " + lib.Path() + " loads, but boxes without network need a newer one: " + err.Error()
	}
	if u := krun.UserNetwork(); !lib.Has(u.Name) {
		return true, fmt.Sprintf("libkrun %s loads, but lacks %s (added in %s): boxes get libkrun's TSI network, which boxctl's guest kernel does not support", lib.Path(), u.Name, u.Since)
	}
	return true, "libkrun " + lib.Path() + " loads with every symbol boxctl uses"
}

// CheckHost says whether libkrun VMs can run here: the library loads with
// the symbols boxctl needs, and KVM really runs a guest (kvmprobe; libkrun
// has no software fallback, so vmm = "auto" then moves on to QEMU). On
// macOS the library alone decides: Hypervisor.framework has no probe here.
func (v *VMM) CheckHost(ctx context.Context) (sdk.HostReport, error) {
	usable, reason := v.checkLibrary()
	if !usable {
		return sdk.HostReport{Reason: reason}, nil
	}
	accel := accelerator()
	if runtime.GOOS != "linux" {
		return sdk.HostReport{Usable: true, Accelerator: accel, Reason: reason}, nil
	}
	if v.settings().NoKVMProbe {
		return sdk.HostReport{Usable: true, Accelerator: accel, Reason: reason + "; KVM not probed (kvm_probe = false)"}, nil
	}
	r := v.kvmVerdict(ctx)
	if !r.Usable {
		return sdk.HostReport{Reason: "KVM not usable (" + r.Reason + "); " + reason}, nil
	}
	return sdk.HostReport{Usable: true, Accelerator: accel, Reason: reason + "; " + r.Reason}, nil
}

// kvmVerdict is the KVM probe's answer, probed once per plugin process.
func (v *VMM) kvmVerdict(ctx context.Context) kvmprobe.Result {
	r := v.kvm.Result(ctx)
	v.log.Debug("KVM probe", "usable", r.Usable, "reason", r.Reason, "took", r.Took)
	return r
}

// accelerator is what libkrun runs VMs with on this OS.
func accelerator() string {
	if runtime.GOOS == "darwin" {
		return "hvf"
	}
	return "kvm"
}

// handle is what the core persists to control a VM later.
type handle struct {
	RunDir      string `json:"run_dir"`
	ControlSock string `json:"control_sock"`
}

// Limits of a spec.
const (
	minMemoryMiB = 64
	// maxVCPUs is what krun_set_vm_config's uint8 carries.
	maxVCPUs = 255
	// maxDisks keeps a VM within libkrun's interrupt lines on x86-64: its
	// virtio-mmio devices share IRQs 5..23 (19 lines), and the console,
	// vsock, balloon and rng devices take four of them; one more is kept
	// for a network device. (arm64 has far more; the lower limit holds
	// everywhere.)
	maxDisks = 14
)

// Plan builds the launch plan for spec.
func (v *VMM) Plan(_ context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	s := v.settings()
	if err := checkSpec(spec); err != nil {
		return sdk.LaunchPlan{}, err
	}
	if spec.Restore != nil {
		return sdk.LaunchPlan{}, fmt.Errorf("spec.Restore: libkrun cannot restore a saved VM state: %w", sdk.ErrUnsupported)
	}
	lib, err := krun.Open(s.Library)
	if err != nil {
		return sdk.LaunchPlan{}, fmt.Errorf("vmm \"libkrun\": %w: %w", err, sdk.ErrInvalidState)
	}
	if spec.Network.Mode == sdk.NetworkNone {
		if err := lib.CheckSymbols("a box without network (its vsock device must not carry the guest's sockets)", krun.Isolation()); err != nil {
			return sdk.LaunchPlan{}, fmt.Errorf("%w: %w", err, sdk.ErrInvalidState)
		}
	}
	if err := checkShareSymbols(lib, spec.Shares); err != nil {
		return sdk.LaunchPlan{}, err
	}
	kernel, format, initrd, err := v.guestFiles(s)
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	run := spec.RunDir
	lc := launchConfig{
		Library:      lib.Path(),
		VCPUs:        uint8(spec.VCPUs),
		MemoryMiB:    uint32(spec.MemoryMiB),
		Kernel:       kernel,
		KernelFormat: format,
		Initrd:       initrd,
		Cmdline:      strings.Join(cmdline(spec, s), " "),
		VsockPort:    vsockPort(spec.KernelArgs),
		AgentSock:    filepath.Join(run, "agent.sock"),
		ControlSock:  filepath.Join(run, "krun-ctl.sock"),
		ConsoleLog:   filepath.Join(run, "console.log"),
		StateFile:    filepath.Join(run, "vm-state.json"),
		Ports:        []string{},
	}
	if spec.Network.Mode == sdk.NetworkUser {
		if lib.Has(krun.UserNetwork().Name) {
			lc.Network = netUser
			lc.UserNet = &netSettings{AllowHostLoopback: spec.Network.AllowHostLoopback, Ports: spec.Network.Ports, Allow: spec.Network.Allow,
				StatsFile: filepath.Join(run, usernet.StatsFileName)}
		} else {
			if len(spec.Network.Allow) > 0 {
				// TSI makes the guest's sockets in libkrun itself: nothing
				// on the host side would see them to apply the list.
				return sdk.LaunchPlan{}, fmt.Errorf("spec.Network.Allow: libkrun %s lacks %s (added in %s), so the network would be TSI, which cannot enforce an allow-list; use a newer libkrun or vmm \"qemu\": %w",
					lib.Path(), krun.UserNetwork().Name, krun.UserNetwork().Since, sdk.ErrUnsupported)
			}
			if err := checkTSIPorts(spec.Network.Ports); err != nil {
				return sdk.LaunchPlan{}, fmt.Errorf("%w (libkrun %s lacks %s, added in %s, so the network is TSI)", err, lib.Path(), krun.UserNetwork().Name, krun.UserNetwork().Since)
			}
			lc.Network = netTSI
			for _, p := range spec.Network.Ports {
				lc.Ports = append(lc.Ports, fmt.Sprintf("%d:%d", p.HostPort, p.GuestPort))
			}
		}
	}
	for i, d := range spec.Disks {
		dev, _ := guestboot.DeviceName(i)
		f := krun.DiskFormatRaw
		if d.Format == "qcow2" {
			f = krun.DiskFormatQcow2
		}
		lc.Disks = append(lc.Disks, launchDisk{BlockID: dev, Path: d.Path, Format: f, ReadOnly: d.ReadOnly})
	}
	for _, sh := range spec.Shares {
		lc.Shares = append(lc.Shares, launchShare(sh))
	}
	b, err := json.MarshalIndent(lc, "", "  ")
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	cfgFile := filepath.Join(run, launchConfigName)
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		return sdk.LaunchPlan{}, fmt.Errorf("write launch config: %w", err)
	}
	h, _ := json.Marshal(handle{RunDir: run, ControlSock: lc.ControlSock})
	env := []string{"PATH=" + os.Getenv("PATH"), "BOXCTL_LOG=" + os.Getenv("BOXCTL_LOG")}
	// The launcher loads the library as this process found it: by the
	// same search path when it was found by name.
	passEnv := s.PassEnv
	if !filepath.IsAbs(lc.Library) {
		passEnv = append([]string{"LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"}, passEnv...)
	}
	for _, k := range passEnv {
		if val, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+val)
		}
	}
	return sdk.LaunchPlan{
		Argv:        []string{v.exe, "launch", cfgFile},
		Env:         env,
		Dir:         run,
		Handle:      h,
		AgentSocket: lc.AgentSock,
		ConsoleLog:  lc.ConsoleLog,
		StateFile:   lc.StateFile,
		Accelerator: accelerator(),
	}, nil
}

// cmdline is the guest's kernel command line: the core's boot arguments,
// and for a VM with shares the boot contract's word that they are
// virtio-fs, then the plugin's own kernel_args.
func cmdline(spec sdk.VMSpec, s settings) []string {
	args := append(append([]string{}, baseKernelArgs...), spec.KernelArgs...)
	if len(spec.Shares) > 0 {
		args = append(args, guestboot.ShareFSArg(guestboot.ShareFSVirtioFS))
	}
	return append(args, s.KernelArgs...)
}

// checkShareSymbols refuses shares the library cannot serve as asked. A
// read-only share needs krun_add_virtiofs3, whose server refuses writes on
// the host side: an older libkrun could only make the guest's mount
// read-only, which the guest's root can undo, so such a share is refused
// rather than served writable.
func checkShareSymbols(lib *krun.Lib, shares []sdk.ShareSpec) error {
	for i, sh := range shares {
		if !lib.Has(krun.Shares().Name) {
			return fmt.Errorf("spec.Shares[%d]: libkrun %s lacks %s (added in %s), which host directory shares need: install a newer libkrun or use vmm \"qemu\": %w",
				i, lib.Path(), krun.Shares().Name, krun.Shares().Since, sdk.ErrUnsupported)
		}
		if sh.ReadOnly && !lib.Has(krun.ReadOnlyShares().Name) {
			return fmt.Errorf("spec.Shares[%d] (%s, read-only): libkrun %s lacks %s (added in %s), without which libkrun cannot refuse the guest's writes on the host side, only in the guest's mount: use libkrun %s or newer, share it read-write, or use vmm \"qemu\": %w",
				i, sh.HostPath, lib.Path(), krun.ReadOnlyShares().Name, krun.ReadOnlyShares().Since, krun.ReadOnlyShares().Since, sdk.ErrUnsupported)
		}
	}
	return nil
}

// launchConfigName is the launch config's file in the run directory.
const launchConfigName = "krun-launch.json"

// baseKernelArgs start the guest's command line: libkrun's console is the
// implicit virtio console hvc0.
var baseKernelArgs = []string{"console=hvc0", "quiet", "panic=-1", "reboot=k"}

// vsockPort is the agent's vsock port in the boot contract the core
// rendered (the guest listens where its command line says).
func vsockPort(args []string) uint32 {
	c, _ := guestboot.Parse(strings.Join(args, " "))
	return c.VsockPort
}

// checkSpec refuses what libkrun cannot run, naming the field.
func checkSpec(spec sdk.VMSpec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, sdk.ErrInvalidArgument)...)
	}
	switch {
	case spec.RunDir == "" || !filepath.IsAbs(spec.RunDir):
		return bad("spec.RunDir %q: want the absolute path of the VM's run directory", spec.RunDir)
	case spec.VCPUs < 1 || spec.VCPUs > maxVCPUs:
		return bad("spec.VCPUs = %d: libkrun runs 1 to %d vCPUs", spec.VCPUs, maxVCPUs)
	case spec.MemoryMiB < minMemoryMiB:
		return bad("spec.MemoryMiB = %d: the guest needs at least %d MiB", spec.MemoryMiB, minMemoryMiB)
	case spec.MemoryMiB > 1<<31:
		return bad("spec.MemoryMiB = %d: too large for libkrun", spec.MemoryMiB)
	case spec.Network.Mode != sdk.NetworkNone && spec.Network.Mode != sdk.NetworkUser:
		return bad("spec.Network.Mode %d: libkrun knows NetworkNone and NetworkUser", spec.Network.Mode)
	case len(spec.Disks) > maxDisks:
		if _, err := guestboot.DeviceName(len(spec.Disks) - 1); err != nil {
			return bad("spec.Disks[%d]: %v", len(spec.Disks)-1, err)
		}
		return bad("spec.Disks: %d disks, but libkrun's virtio devices share a few interrupt lines: at most %d disks fit (spec.Disks[%d] is one too many)",
			len(spec.Disks), maxDisks, maxDisks)
	case len(spec.Disks)+len(spec.Shares) > maxDisks:
		// A virtio-fs device takes an interrupt line as a disk does.
		return bad("spec.Shares: %d disks and %d shares, but libkrun's virtio devices share a few interrupt lines: at most %d disks and shares together fit",
			len(spec.Disks), len(spec.Shares), maxDisks)
	}
	for i, sh := range spec.Shares {
		switch {
		case sh.Tag == "" || len(sh.Tag) > 36 || strings.ContainsAny(sh.Tag, " \t\x00"):
			return bad("spec.Shares[%d].Tag %q: want 1-36 bytes without spaces", i, sh.Tag)
		case !filepath.IsAbs(sh.HostPath):
			return bad("spec.Shares[%d].HostPath %q is not absolute", i, sh.HostPath)
		}
	}
	if len(spec.Network.Allow) > 0 && spec.Network.Mode != sdk.NetworkUser {
		return bad("spec.Network.Allow: an allow-list needs the user-mode network (NetworkUser)")
	}
	for i, a := range spec.Network.Allow {
		if err := a.Validate(); err != nil {
			return bad("spec.Network.Allow[%d]: %v", i, err)
		}
	}
	for i, p := range spec.Network.Ports {
		switch {
		case spec.Network.Mode != sdk.NetworkUser:
			return bad("spec.Network.Ports[%d]: a published port needs a network", i)
		case p.Protocol != "" && p.Protocol != "tcp" && p.Protocol != "udp":
			return bad("spec.Network.Ports[%d]: protocol %q: want tcp or udp", i, p.Protocol)
		case p.HostPort == 0 || p.GuestPort == 0:
			return bad("spec.Network.Ports[%d]: ports must be 1-65535", i)
		}
	}
	for i, d := range spec.Disks {
		if err := checkDisk(i, d); err != nil {
			return err
		}
	}
	return nil
}

// checkTSIPorts refuses published ports libkrun's TSI port map cannot
// carry.
func checkTSIPorts(ports []sdk.PortForward) error {
	for i, p := range ports {
		switch {
		case p.Protocol != "" && p.Protocol != "tcp":
			return fmt.Errorf("spec.Network.Ports[%d]: protocol %q: libkrun's port map (TSI) publishes tcp ports only: %w", i, p.Protocol, sdk.ErrInvalidArgument)
		case p.HostIP != "" && p.HostIP != "0.0.0.0":
			return fmt.Errorf("spec.Network.Ports[%d]: host address %q: libkrun's port map (TSI) listens on every host address; publish without one: %w", i, p.HostIP, sdk.ErrInvalidArgument)
		}
	}
	return nil
}

// guestFiles finds the guest kernel and initramfs. On x86-64 libkrun loads
// an ELF kernel (vmlinux; build/guest has it); a bzImage is not a format
// it takes. On arm64 it takes the raw Image.
func (v *VMM) guestFiles(s settings) (kernel string, format uint32, initrd string, err error) {
	name, format := "vmlinux", krun.KernelFormatELF
	if runtime.GOARCH == "arm64" {
		name, format = "Image", krun.KernelFormatRaw
	}
	if s.Kernel != "" && s.Initrd != "" {
		return s.Kernel, format, s.Initrd, nil
	}
	var dirs []string
	if d := os.Getenv("BOXCTL_GUEST_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	exeDir := filepath.Dir(v.exe)
	dirs = append(dirs, filepath.Join(exeDir, "guest"), filepath.Join(exeDir, "..", "build", "guest"), "/usr/lib/boxctl/guest")
	for _, d := range dirs {
		k, i := filepath.Join(d, name), filepath.Join(d, "initramfs")
		if fileExists(k) && fileExists(i) {
			if s.Kernel != "" {
				k = s.Kernel
			}
			if s.Initrd != "" {
				i = s.Initrd
			}
			return k, format, i, nil
		}
	}
	return "", 0, "", fmt.Errorf("guest kernel (%s) and initramfs not found in %s: build them with `make guest`, or set kernel and initrd in plugin \"libkrun\" { config { ... } }: %w",
		name, strings.Join(dirs, ", "), sdk.ErrInvalidState)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func decodeHandle(b []byte) (handle, error) {
	var h handle
	if err := json.Unmarshal(b, &h); err != nil || h.ControlSock == "" {
		return h, fmt.Errorf("bad VM handle: %w", sdk.ErrInvalidArgument)
	}
	return h, nil
}

// Stop asks the launcher, over its control socket, to shut the guest down
// (the shutdown eventfd, or the agent's Shutdown where the library has no
// eventfd); with force, or when the control socket does not answer, it
// kills the launcher, which is the VM.
func (v *VMM) Stop(ctx context.Context, vm sdk.VM, force bool) error {
	h, err := decodeHandle(vm.Handle)
	if err != nil {
		return err
	}
	if force {
		return kill(vm.PID, syscall.SIGKILL)
	}
	err = control(ctx, h.ControlSock, "shutdown")
	switch {
	case err == nil, gone(vm.PID):
		return nil
	case errors.Is(err, errRefused):
		return err
	}
	v.log.Debug("control socket unreachable; asking the launcher by SIGTERM", "err", err)
	return kill(vm.PID, syscall.SIGTERM)
}

func kill(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return fmt.Errorf("VM.PID %d: %w", pid, sdk.ErrInvalidArgument)
	}
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

func gone(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH }

// errRefused: the launcher answered a control request with an error.
var errRefused = errors.New("the launcher refused")

// control sends one request line to the launcher's control socket and
// reads its answer: "ok" or "error: REASON".
func control(ctx context.Context, sock, req string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte(req + "\n")); err != nil {
		return err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("the launcher's control socket: %w", err)
	}
	ans := strings.TrimSpace(string(buf[:n]))
	if ans == "ok" {
		return nil
	}
	return fmt.Errorf("%w %q: %s", errRefused, req, strings.TrimPrefix(ans, "error: "))
}

// Metrics reports CPU time and memory of the launcher, which is the VM.
func (v *VMM) Metrics(_ context.Context, vm sdk.VM) (sdk.Metrics, error) {
	if _, err := decodeHandle(vm.Handle); err != nil {
		return sdk.Metrics{}, err
	}
	st, err := proc.ReadStat(vm.PID)
	if errors.Is(err, fs.ErrNotExist) {
		return sdk.Metrics{}, fmt.Errorf("VM process %d: %w", vm.PID, sdk.ErrNotFound)
	}
	if err != nil {
		return sdk.Metrics{}, fmt.Errorf("VM metrics: %w", err)
	}
	m := sdk.Metrics{CPUUser: st.CPUUser(), CPUSystem: st.CPUSystem(), RSS: st.RSS()}
	// The launcher's user-mode network counters; none without one.
	if h, err := decodeHandle(vm.Handle); err == nil {
		if ns, err := usernet.ReadStatsFile(filepath.Join(h.RunDir, usernet.StatsFileName)); err == nil {
			m.Extra = ns.Metrics()
		}
	}
	return m, nil
}

// knownFormat says whether libkrun is told format explicitly by this
// plugin.
func knownFormat(f string) bool { return slices.Contains([]string{"raw", "qcow2"}, f) }
