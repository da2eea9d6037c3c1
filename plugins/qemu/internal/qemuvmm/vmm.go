// Package qemuvmm is boxctl's QEMU VMM plugin: it turns a VM spec into a
// launch plan that runs QEMU (KVM where usable, TCG otherwise) under this
// plugin's own launcher, and controls running VMs over QMP.
//
// The launcher (`boxctl-plugin-qemu launch FILE`) is the process the box
// monitor starts. It starts QEMU as its child and runs the agent channel
// multiplexer (sdk/agentmux): QEMU exposes the guest agent's virtio-serial
// port as a single byte pipe, and the launcher turns it into agent.sock,
// which accepts any number of connections.
//
// Control operations (Stop, Pause, Resume, SwitchDisk) connect to the QMP
// socket in the VM's run directory, from whichever plugin process is asked:
// everything they need is in the handle and the run directory.
package qemuvmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/boxctl/boxctl/internal/kvmprobe"
	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/plugins/qemu/internal/qmp"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/usernet"
)

// Version is the plugin's version.
const Version = "0.1.0"

// settings is the plugin's effective configuration.
type settings struct {
	// Accel is "auto" (KVM when usable, else TCG), "kvm" or "tcg".
	Accel string
	// Machine is the QEMU machine type.
	Machine string
	// Kernel and Initrd are the guest kernel and initramfs (from
	// `make guest`); found next to the plugin when unset.
	Kernel string
	Initrd string
	// QEMUBinary is qemu-system-x86_64 by default, looked up on $PATH.
	QEMUBinary string
	// KernelArgs are appended to the guest kernel command line.
	KernelArgs []string
	// ShareTransport is how host directory shares reach the guest:
	// "auto" (virtio-fs when virtiofsd is found, else 9p), "virtio-fs" or
	// "9p". Plan resolves it for a VM with shares.
	ShareTransport string
	// Virtiofsd is the virtiofsd binary; found in the usual places when
	// unset (findVirtiofsd).
	Virtiofsd string
	// ResolvConf is the file the launcher's user-mode network reads the
	// host's nameservers from (/etc/resolv.conf when empty).
	ResolvConf string
}

// block is the plugin's HCL config block. Fields are expressions so a value
// the plugin rejects is reported at its position in the file.
type block struct {
	Accel      hcl.Expression `hcl:"accel,optional"`
	Machine    hcl.Expression `hcl:"machine,optional"`
	Kernel     hcl.Expression `hcl:"kernel,optional"`
	Initrd     hcl.Expression `hcl:"initrd,optional"`
	QEMUBinary hcl.Expression `hcl:"qemu_binary,optional"`
	KernelArgs hcl.Expression `hcl:"kernel_args,optional"`
	// ShareTransport and Virtiofsd: see settings.
	ShareTransport hcl.Expression `hcl:"share_transport,optional"`
	Virtiofsd      hcl.Expression `hcl:"virtiofsd,optional"`
	ResolvConf     hcl.Expression `hcl:"resolv_conf,optional"`
}

// VMM implements sdk.VMM.
type VMM struct {
	log hclog.Logger
	exe string

	mu  sync.Mutex
	cfg settings
	// versions caches `qemu --version` by the binary's identity.
	versions map[string]string

	// kvm is the KVM probe, run once for the plugin process's life.
	kvm *kvmprobe.Once
}

// Option changes a VMM.
type Option func(*VMM)

// WithKVMProbe replaces the KVM probe (kvmprobe.Probe on /dev/kvm) that
// accel = "auto" consults.
func WithKVMProbe(p func(context.Context) kvmprobe.Result) Option {
	return func(v *VMM) { v.kvm = kvmprobe.NewOnce(p) }
}

// New returns the plugin. exe is the plugin binary (the launcher).
func New(log hclog.Logger, exe string, opts ...Option) *VMM {
	v := &VMM{log: log, exe: exe, cfg: settings{Accel: "auto", Machine: "q35"}, kvm: kvmprobe.NewOnce(nil)}
	for _, o := range opts {
		o(v)
	}
	return v
}

// kvmVerdict is the KVM probe's answer, probed once per plugin process: the
// host does not change under it, and the probe costs up to its bound.
func (v *VMM) kvmVerdict(ctx context.Context) kvmprobe.Result {
	r := v.kvm.Result(ctx)
	v.log.Debug("KVM probe", "usable", r.Usable, "reason", r.Reason, "took", r.Took)
	return r
}

// Info describes the plugin. Pause, Metrics, DiskSwitch and
// MemorySnapshot are set by the sdk, which sees that VMM implements
// sdk.Pauser, sdk.MetricsReporter, sdk.DiskSwitcher and
// sdk.MemorySnapshotter.
func (v *VMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "qemu",
		Version:     Version,
		Description: "QEMU VMM: KVM where usable, TCG software emulation otherwise",
		Capabilities: sdk.Capabilities{
			GracefulStop:   true,
			StateFile:      true,
			Sandbox:        true,
			ExplicitChain:  true,
			NetworkAllow:   true,
			AgentTransport: sdk.AgentSerial,
		},
	}, nil
}

var (
	_ sdk.VMM               = (*VMM)(nil)
	_ sdk.Pauser            = (*VMM)(nil)
	_ sdk.MetricsReporter   = (*VMM)(nil)
	_ sdk.DiskSwitcher      = (*VMM)(nil)
	_ sdk.MemorySnapshotter = (*VMM)(nil)
	_ sdk.HostChecker       = (*VMM)(nil)
)

// CheckHost says whether this host can run the plugin's VMs: QEMU must be
// found; the accelerator is what Plan would choose (an unconfined QEMU's
// view: a confined one may still fall back to TCG, which Plan reports).
func (v *VMM) CheckHost(ctx context.Context) (sdk.HostReport, error) {
	s := v.settings()
	qemu, err := v.qemuPath(s)
	if err != nil {
		bin := s.QEMUBinary
		if bin == "" {
			bin = "qemu-system-x86_64"
		}
		return sdk.HostReport{Reason: qemuMissing(bin)}, nil
	}
	accel, why := v.chooseAccel(ctx, s.Accel)
	return sdk.HostReport{Usable: true, Accelerator: accel, Reason: qemu + ": " + why}, nil
}

// Configure validates the plugin's config block.
func (v *VMM) Configure(_ context.Context, cfg *sdk.Config) error {
	var b block
	if err := cfg.Decode(&b); err != nil {
		return err
	}
	s := settings{Accel: "auto", Machine: "q35"}
	rng, set, err := sdk.DecodeOptional(b.Accel, &s.Accel)
	if err != nil {
		return err
	}
	if set && s.Accel != "auto" && s.Accel != "kvm" && s.Accel != "tcg" {
		return sdk.ConfigError(rng, "Invalid accel", fmt.Sprintf("accel = %q: use \"auto\" (KVM when usable, else TCG), \"kvm\" or \"tcg\".", s.Accel))
	}
	if _, _, err := sdk.DecodeOptional(b.Machine, &s.Machine); err != nil {
		return err
	}
	if _, _, err := sdk.DecodeOptional(b.KernelArgs, &s.KernelArgs); err != nil {
		return err
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
	rng, set, err = sdk.DecodeOptional(b.ShareTransport, &s.ShareTransport)
	if err != nil {
		return err
	}
	if set && s.ShareTransport != transportAuto && s.ShareTransport != transport9p && s.ShareTransport != transportVirtioFS {
		return sdk.ConfigError(rng, "Invalid share_transport", fmt.Sprintf("share_transport = %q: use \"auto\" (virtio-fs when virtiofsd is installed, else 9p), \"virtio-fs\" or \"9p\".", s.ShareTransport))
	}
	rng, set, err = sdk.DecodeOptional(b.Virtiofsd, &s.Virtiofsd)
	if err != nil {
		return err
	}
	if set && findVirtiofsd(s.Virtiofsd) == "" {
		return sdk.ConfigError(rng, "virtiofsd not found", fmt.Sprintf("virtiofsd = %q: not found or not executable. Install virtiofsd or correct the path.", s.Virtiofsd))
	}
	rng, set, err = sdk.DecodeOptional(b.ResolvConf, &s.ResolvConf)
	if err != nil {
		return err
	}
	if set {
		if !filepath.IsAbs(s.ResolvConf) {
			return sdk.ConfigError(rng, "resolv_conf is not absolute", fmt.Sprintf("resolv_conf = %q: give the absolute path of a resolv.conf file.", s.ResolvConf))
		}
		if _, err := os.Stat(s.ResolvConf); err != nil {
			return sdk.ConfigError(rng, "resolv_conf not found", fmt.Sprintf("resolv_conf = %q: %v.", s.ResolvConf, err))
		}
	}
	rng, set, err = sdk.DecodeOptional(b.QEMUBinary, &s.QEMUBinary)
	if err != nil {
		return err
	}
	if set {
		if _, err := exec.LookPath(s.QEMUBinary); err != nil {
			return sdk.ConfigError(rng, "QEMU not found", fmt.Sprintf("qemu_binary = %q: %v. Install qemu-system-x86 or correct the path.", s.QEMUBinary, err))
		}
	}
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

// handle is what the core persists to control a VM later.
type handle struct {
	QMP    string `json:"qmp"`
	RunDir string `json:"run_dir"`
	// QEMUPIDFile holds the PID of QEMU itself (the launcher's child),
	// written by the launcher.
	QEMUPIDFile string `json:"qemu_pid_file"`
	// Inputs are the VM's StateInputs as planned: what SaveState reports.
	Inputs map[string]string `json:"inputs,omitempty"`
}

// minMemoryMiB is the least memory the boxctl guest boots in.
const minMemoryMiB = 64

// Plan builds the launch plan for spec.
func (v *VMM) Plan(ctx context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	s := v.settings()
	run := spec.RunDir
	if run == "" || !filepath.IsAbs(run) {
		return sdk.LaunchPlan{}, fmt.Errorf("spec.RunDir %q: want the absolute path of the VM's run directory: %w", run, sdk.ErrInvalidArgument)
	}
	if spec.VCPUs < 1 {
		return sdk.LaunchPlan{}, fmt.Errorf("spec.VCPUs = %d: a VM needs at least 1 vCPU: %w", spec.VCPUs, sdk.ErrInvalidArgument)
	}
	if spec.MemoryMiB < minMemoryMiB {
		return sdk.LaunchPlan{}, fmt.Errorf("spec.MemoryMiB = %d: the guest needs at least %d MiB: %w", spec.MemoryMiB, minMemoryMiB, sdk.ErrInvalidArgument)
	}
	qemuPath, err := v.qemuPath(s)
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	kernel, initrd, err := v.guestFiles(s)
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	jail, err := confinement(spec.Sandbox)
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	if len(spec.Shares) > 0 {
		userNS := jail.UID != 0 || os.Geteuid() != 0
		if s.ShareTransport, s.Virtiofsd, err = shareTransport(s, userNS); err != nil {
			return sdk.LaunchPlan{}, err
		}
	}
	accel, notice, err := v.pickAccel(ctx, s, &jail)
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	if jail.UID != 0 {
		for _, f := range []struct{ what, path string }{{"kernel", kernel}, {"initramfs", initrd}} {
			if err := readableBy(f.path, jail.UID, jail.GID, jail.Groups); err != nil {
				return sdk.LaunchPlan{}, fmt.Errorf("guest %s: %w; make it readable by others (chmod o+r, and o+x on its directories), or set kernel and initrd in the plugin's config to readable copies: %w", f.what, err, sdk.ErrInvalidState)
			}
		}
		// QEMU (9p), or virtiofsd in a user namespace whose root is the
		// sandbox user (virtio-fs), opens a share's directory itself.
		for _, sh := range spec.Shares {
			if err := readableBy(sh.HostPath, jail.UID, jail.GID, jail.Groups); err != nil {
				return sdk.LaunchPlan{}, fmt.Errorf("shared directory %s: %w; the share is served as uid %d: give that user access (for example chmod o+rx, or o+rwx for a writable share), or run boxctl as that directory's owner: %w", sh.HostPath, err, jail.UID, sdk.ErrInvalidState)
			}
		}
	}
	lc := launchConfig{
		QEMU:       qemuPath,
		RunDir:     run,
		SerialSock: filepath.Join(run, "agent-serial.sock"),
		AgentSock:  filepath.Join(run, "agent.sock"),
		QMPSock:    filepath.Join(run, "qmp.sock"),
		ConsoleLog: filepath.Join(run, "console.log"),
		PIDFile:    filepath.Join(run, "qemu.pid"),
		StateFile:  filepath.Join(run, "vm-state.json"),
		Jail:       jail,
	}
	inputs, err := v.inputs(spec, s, qemuPath, kernel, initrd, accel)
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	if spec.Restore != nil {
		if err := checkRestore(spec.Restore, inputs); err != nil {
			return sdk.LaunchPlan{}, err
		}
		lc.Restore = spec.Restore.Path
	}
	if err := qemuArgs(&lc, spec, s, accel, kernel, initrd); err != nil {
		return sdk.LaunchPlan{}, err
	}
	b, err := json.MarshalIndent(lc, "", "  ")
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	cfgFile := filepath.Join(run, launchConfigName)
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		return sdk.LaunchPlan{}, fmt.Errorf("write launch config: %w", err)
	}
	h, _ := json.Marshal(handle{QMP: lc.QMPSock, RunDir: run, QEMUPIDFile: lc.PIDFile, Inputs: inputs})
	return sdk.LaunchPlan{
		Argv:        []string{v.exe, "launch", cfgFile},
		Env:         []string{"PATH=" + os.Getenv("PATH"), "BOXCTL_LOG=" + os.Getenv("BOXCTL_LOG")},
		Dir:         run,
		Handle:      h,
		AgentSocket: lc.AgentSock,
		ConsoleLog:  lc.ConsoleLog,
		Notice:      notice,
		StateFile:   lc.StateFile,
		Accelerator: accel,
	}, nil
}

// launchConfigName is the launch config's file in the run directory.
const launchConfigName = "qemu-launch.json"

// qemuPath finds the QEMU binary.
func (v *VMM) qemuPath(s settings) (string, error) {
	qemuBin := s.QEMUBinary
	if qemuBin == "" {
		qemuBin = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(qemuBin)
	if err != nil {
		return "", fmt.Errorf("%s: %w", qemuMissing(qemuBin), sdk.ErrInvalidState)
	}
	return p, nil
}

func qemuMissing(qemuBin string) string {
	return qemuBin + " not found: install it (apt-get install qemu-system-x86) or set qemu_binary in the plugin's config"
}

// pickAccel chooses the accelerator as configured, falling back to TCG
// when the confined QEMU cannot use KVM, and gives the confined QEMU the
// group that can.
func (v *VMM) pickAccel(ctx context.Context, s settings, jail *jail) (accel, notice string, err error) {
	accel, why := v.chooseAccel(ctx, s.Accel)
	if accel == "tcg" && s.Accel == "auto" {
		notice = why + ", which is much slower"
	}
	if accel == "kvm" && jail.UID != 0 {
		gid, ok, why := kvmAccess(kvmDevice, jail.UID, jail.GID)
		switch {
		case ok && gid >= 0:
			jail.Groups = []uint32{uint32(gid)}
		case !ok && s.Accel == "kvm":
			return "", "", fmt.Errorf("accel = \"kvm\", but the confined QEMU (uid %d) cannot use KVM: %s; give %s to a kvm group with mode 0660 (Debian's udev rules do), or turn confinement off with sandbox { enabled = false }: %w",
				jail.UID, why, kvmDevice, sdk.ErrInvalidState)
		case !ok:
			accel, notice = "tcg", "KVM is not usable by the confined QEMU ("+why+"): running the VM under TCG software emulation, which is much slower"
		}
	}
	return accel, notice, nil
}

// guestFiles finds the guest kernel and initramfs. In a guest directory the
// uncompressed ELF kernel (vmlinux, which guest/build.sh extracts from the
// bzImage only when it has a PVH entry point) is preferred to the bzImage
// (vmlinuz): QEMU loads it through PVH, which skips the kernel's
// decompressor: 0.2-0.5 s of a cold boot under TCG here (bench/coldboot). It
// also skips KASLR, which the decompressor does; see docs/security.md.
func (v *VMM) guestFiles(s settings) (string, string, error) {
	if s.Kernel != "" && s.Initrd != "" {
		return s.Kernel, s.Initrd, nil
	}
	var dirs []string
	if d := os.Getenv("BOXCTL_GUEST_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	exeDir := filepath.Dir(v.exe)
	dirs = append(dirs, filepath.Join(exeDir, "guest"), filepath.Join(exeDir, "..", "build", "guest"), "/usr/lib/boxctl/guest")
	for _, d := range dirs {
		k, i := guestKernel(d), filepath.Join(d, "initramfs")
		if k != "" && fileExists(i) {
			if s.Kernel != "" {
				k = s.Kernel
			}
			if s.Initrd != "" {
				i = s.Initrd
			}
			return k, i, nil
		}
	}
	return "", "", fmt.Errorf("guest kernel and initramfs not found in %s: build them with `make guest`, or set kernel and initrd in plugin \"qemu\" { config { ... } }: %w",
		strings.Join(dirs, ", "), sdk.ErrInvalidState)
}

// guestKernel returns the kernel of guest directory d: vmlinux when it is
// there, else vmlinuz, else "".
func guestKernel(d string) string {
	for _, name := range []string{"vmlinux", "vmlinuz"} {
		if k := filepath.Join(d, name); fileExists(k) {
			return k
		}
	}
	return ""
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// kvmDevice is the KVM device node.
const kvmDevice = "/dev/kvm"

// chooseAccel picks the accelerator for want ("auto", "kvm" or "tcg") and
// says why. With "auto", KVM only when the KVM probe ran a guest at
// hardware speed: /dev/kvm can exist and still emulate guest code at a
// crawl (a paravirtual or nested KVM).
func (v *VMM) chooseAccel(ctx context.Context, want string) (accel, why string) {
	switch want {
	case "kvm":
		return "kvm", `accel = "kvm" in the plugin's config`
	case "tcg":
		return "tcg", `accel = "tcg" in the plugin's config: TCG software emulation`
	}
	r := v.kvmVerdict(ctx)
	if !r.Usable {
		return "tcg", "KVM not usable (" + r.Reason + "): TCG software emulation"
	}
	return "kvm", r.Reason
}

func decodeHandle(b []byte) (handle, error) {
	var h handle
	if err := json.Unmarshal(b, &h); err != nil || h.QMP == "" {
		return h, fmt.Errorf("bad VM handle: %w", sdk.ErrInvalidArgument)
	}
	return h, nil
}

// Stop asks the guest to power off (ACPI) or, with force, ends QEMU.
// vm.PID is the launcher; QEMU is its child and dies with it.
func (v *VMM) Stop(ctx context.Context, vm sdk.VM, force bool) error {
	h, err := decodeHandle(vm.Handle)
	if err != nil {
		return err
	}
	if !force {
		if _, err := qmp.Run(ctx, h.QMP, "system_powerdown", nil); err != nil && !gone(vm.PID) {
			return fmt.Errorf("ask the guest to power off: %w", err)
		}
		return nil
	}
	if _, err := qmp.Run(ctx, h.QMP, "quit", nil); err == nil || gone(vm.PID) {
		return nil
	}
	// QMP does not answer: kill the launcher; QEMU dies with it.
	if vm.PID > 0 {
		if err := syscall.Kill(vm.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
	}
	return nil
}

func gone(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH
}

// Pause stops the vCPUs.
func (v *VMM) Pause(ctx context.Context, vm sdk.VM) error {
	return v.qmpCommand(ctx, vm, "stop")
}

// Resume restarts the vCPUs.
func (v *VMM) Resume(ctx context.Context, vm sdk.VM) error {
	return v.qmpCommand(ctx, vm, "cont")
}

func (v *VMM) qmpCommand(ctx context.Context, vm sdk.VM, cmd string) error {
	h, err := decodeHandle(vm.Handle)
	if err != nil {
		return err
	}
	if _, err := qmp.Run(ctx, h.QMP, cmd, nil); err != nil {
		if gone(vm.PID) {
			return fmt.Errorf("the VM is not running: %w", sdk.ErrInvalidState)
		}
		return err
	}
	return nil
}

// Metrics reports CPU time and memory of the QEMU process.
func (v *VMM) Metrics(_ context.Context, vm sdk.VM) (sdk.Metrics, error) {
	h, err := decodeHandle(vm.Handle)
	if err != nil {
		return sdk.Metrics{}, err
	}
	pid := vm.PID
	if p, err := qemuPID(vm, h); err == nil {
		pid = p
	}
	m, err := procMetrics(pid)
	if err != nil {
		return m, err
	}
	// The launcher's user-mode network counters; none without a network.
	if st, err := usernet.ReadStatsFile(filepath.Join(h.RunDir, usernet.StatsFileName)); err == nil {
		m.Extra = st.Metrics()
	}
	return m, nil
}

func procMetrics(pid int) (sdk.Metrics, error) {
	st, err := proc.ReadStat(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return sdk.Metrics{}, fmt.Errorf("VM process %d: %w", pid, sdk.ErrNotFound)
	}
	if err != nil {
		return sdk.Metrics{}, fmt.Errorf("VM metrics: %w", err)
	}
	return sdk.Metrics{CPUUser: st.CPUUser(), CPUSystem: st.CPUSystem(), RSS: st.RSS()}, nil
}
