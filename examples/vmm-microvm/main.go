// Command boxctl-plugin-microvm is an example boxctl VMM plugin: QEMU's
// microvm machine, with virtio-mmio devices and no PCI, firmware or ACPI
// tables beyond what the guest needs. It imports only the boxctl sdk.
//
// Run by boxctl it serves the VMM role. Run as `boxctl-plugin-microvm launch
// FILE` (by the box monitor, from a launch plan) it is the VM process: it
// starts QEMU and serves the agent socket (sdk/agentmux) and, with a
// user-mode network, the guest's NIC (sdk/usernet).
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/agentmux"
	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/sdk/usernet"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "launch" {
		os.Exit(launch(os.Args[2]))
	}
	sdk.Serve(sdk.ServeConfig{VMM: &microVMM{}})
}

// settings is the plugin's config block.
type settings struct {
	Kernel     string   `hcl:"kernel,optional"`      // guest kernel; default: $BOXCTL_GUEST_DIR/vmlinuz
	Initrd     string   `hcl:"initrd,optional"`      // guest initramfs; default: $BOXCTL_GUEST_DIR/initramfs
	QEMU       string   `hcl:"qemu_binary,optional"` // default: qemu-system-x86_64 on $PATH
	KernelArgs []string `hcl:"kernel_args,optional"` // appended to the guest's command line
}

type microVMM struct{ cfg settings }

// Optional features are optional interfaces; the sdk declares their
// capabilities (here Metrics) from them.
var _ sdk.MetricsReporter = (*microVMM)(nil)

func (m *microVMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{Name: "microvm", Version: "0.1.0", Description: "example: QEMU's microvm machine with virtio-mmio devices",
		Capabilities: sdk.Capabilities{ExplicitChain: true, NetworkAllow: true, AgentTransport: sdk.AgentSerial}}, nil
}

// Configure is called once, before any other call.
func (m *microVMM) Configure(_ context.Context, cfg *sdk.Config) error {
	s := settings{QEMU: "qemu-system-x86_64"}
	if err := cfg.Decode(&s); err != nil {
		return err
	}
	dir := cmp.Or(os.Getenv("BOXCTL_GUEST_DIR"), "/usr/lib/boxctl/guest")
	s.Kernel, s.Initrd = cmp.Or(s.Kernel, filepath.Join(dir, "vmlinuz")), cmp.Or(s.Initrd, filepath.Join(dir, "initramfs"))
	for _, f := range []string{s.Kernel, s.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return sdk.ConfigError(cfg.BodyRange(), "Guest not found", fmt.Sprintf("%v: set kernel and initrd, or BOXCTL_GUEST_DIR.", err))
		}
	}
	m.cfg = s
	return nil
}

// launchConfig is what Plan hands the launcher.
type launchConfig struct {
	QEMU       string           `json:"qemu"`
	Args       []string         `json:"args"`
	SerialSock string           `json:"serial_sock"`
	AgentSock  string           `json:"agent_sock"`
	Network    *sdk.NetworkSpec `json:"network,omitempty"`
}

func invalid(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, sdk.ErrInvalidArgument)...)
}

func (m *microVMM) Plan(_ context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	run := spec.RunDir
	switch {
	case !filepath.IsAbs(run):
		return sdk.LaunchPlan{}, invalid("spec.RunDir %q is not an absolute path", run)
	case spec.VCPUs < 1:
		return sdk.LaunchPlan{}, invalid("spec.VCPUs = %d: at least 1", spec.VCPUs)
	case spec.MemoryMiB < 64:
		return sdk.LaunchPlan{}, invalid("spec.MemoryMiB = %d: the guest needs 64 MiB", spec.MemoryMiB)
	case spec.Network.Mode != sdk.NetworkNone && spec.Network.Mode != sdk.NetworkUser:
		return sdk.LaunchPlan{}, invalid("spec.Network.Mode %d is not supported", spec.Network.Mode)
	case len(spec.Network.Allow) > 0 && spec.Network.Mode != sdk.NetworkUser:
		// An allow-list this VMM dropped would leave the box unconfined.
		return sdk.LaunchPlan{}, invalid("spec.Network.Allow: an allow-list needs the user-mode network")
	case len(spec.Shares) > 0:
		return sdk.LaunchPlan{}, invalid("spec.Shares: this example does not share host directories")
	}
	for i, a := range spec.Network.Allow {
		// A rule that does not hold would fail only in the launcher, after
		// the box was reported started.
		if err := a.Validate(); err != nil {
			return sdk.LaunchPlan{}, invalid("spec.Network.Allow[%d]: %v", i, err)
		}
	}
	qemu, err := exec.LookPath(m.cfg.QEMU)
	if err != nil {
		return sdk.LaunchPlan{}, fmt.Errorf("%s: %v: %w", m.cfg.QEMU, err, sdk.ErrInvalidState)
	}
	exe, err := os.Executable()
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	// Under TCG the guest cannot always measure its TSC on microvm (no HPET or PM timer; the
	// PIT loop fails when preempted) and then hangs: it is given the host's rate, which TCG's
	// TSC runs at, and a preset lpj (loops per jiffy) for its delay loop.
	accel, cpu, guestArgs := "tcg", "max", []string{"lpj=10000000", "tsc_early_khz=" + hostTSCkHz()}
	if kvmUsable() {
		accel, cpu, guestArgs = "kvm", "host", nil
	}
	lc := launchConfig{QEMU: qemu, SerialSock: filepath.Join(run, "serial.sock"), AgentSock: filepath.Join(run, "agent.sock")}
	console := filepath.Join(run, "console.log")
	// The guest's own arguments (guest/README.md), then the boot contract the core rendered
	// in spec.KernelArgs, then the user's.
	cmdline := append([]string{"console=ttyS0", "quiet", "panic=-1", "reboot=t", "tsc=reliable", "no_timer_check"}, guestArgs...)
	cmdline = append(append(cmdline, spec.KernelArgs...), m.cfg.KernelArgs...)
	lc.Args = []string{
		// The PIT, PIC and RTC stay on: without them the kernel cannot calibrate its clock.
		"-M", "microvm,x-option-roms=off,isa-serial=on", "-accel", accel, "-cpu", cpu,
		"-m", strconv.FormatUint(spec.MemoryMiB, 10), "-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-kernel", m.cfg.Kernel, "-initrd", m.cfg.Initrd, "-append", strings.Join(cmdline, " "),
		"-chardev", "file,id=con,path=" + console, "-serial", "chardev:con",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + lc.SerialSock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + guestboot.SerialPort,
	}
	for i, d := range spec.Disks {
		dev, err := guestboot.DeviceName(i) // the core's KernelArgs name the disks so
		if err != nil {
			return sdk.LaunchPlan{}, invalid("spec.Disks[%d]: %v", i, err)
		}
		args, err := blockdevs(dev, i, d)
		if err != nil {
			return sdk.LaunchPlan{}, err
		}
		lc.Args = append(lc.Args, args...)
	}
	if spec.Network.Mode == sdk.NetworkUser {
		// fd 3 is the launcher's socket pair to its user-mode network.
		lc.Args = append(lc.Args, "-netdev", "socket,id=n0,fd=3", "-device", "virtio-net-device,netdev=n0")
		lc.Network = &spec.Network
	}
	b, _ := json.Marshal(lc)
	file := filepath.Join(run, "microvm.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return sdk.LaunchPlan{}, err
	}
	// The handle is what the core keeps to control the VM later, from any process; this
	// plugin needs only the VM process, which the core names in sdk.VM.
	h, _ := json.Marshal(map[string]string{"run_dir": run})
	return sdk.LaunchPlan{Argv: []string{exe, "launch", file}, Env: []string{"PATH=" + os.Getenv("PATH")}, Dir: run, Handle: h,
		AgentSocket: lc.AgentSock, ConsoleLog: console}, nil
}

// blockdevs opens disk d as guest device dev with its backing chain named
// explicitly: QEMU must not follow a backing-file name found in a file.
func blockdevs(dev string, i int, d sdk.DiskSpec) ([]string, error) {
	files := append([]sdk.ChainFile{{Path: d.Path, Format: d.Format}}, d.BackingChain...)
	var args []string
	for j := len(files) - 1; j >= 0; j-- {
		f, node := files[j], fmt.Sprintf("%s-%d", dev, j)
		if st, err := os.Stat(f.Path); err != nil || !st.Mode().IsRegular() {
			return nil, invalid("spec.Disks[%d]: %s is not a disk file", i, f.Path)
		}
		if f.Format != "raw" && f.Format != "qcow2" || (f.Format == "raw" && j < len(files)-1) {
			return nil, invalid("spec.Disks[%d]: %s: format %q (raw or qcow2; raw has no backing file)", i, f.Path, f.Format)
		}
		if j == 0 {
			node = dev
		}
		ro := j > 0 || d.ReadOnly
		n := map[string]any{"driver": f.Format, "node-name": node, "read-only": ro,
			"file": map[string]any{"driver": "file", "filename": f.Path, "read-only": ro}}
		if f.Format == "qcow2" {
			n["backing"] = nil
			if j < len(files)-1 {
				n["backing"] = fmt.Sprintf("%s-%d", dev, j+1)
			}
		}
		b, _ := json.Marshal(n)
		args = append(args, "-blockdev", string(b))
	}
	return append(args, "-device", "virtio-blk-device,drive="+dev), nil
}

// kvmUsable: /dev/kvm opens and the CPU has hardware virtualisation.
func kvmUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Contains(string(b), " vmx") || strings.Contains(string(b), " svm")
}

// hostTSCkHz is the host CPU's rate from /proc/cpuinfo ("0", the kernel's default, if none).
func hostTSCkHz() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	_, after, _ := strings.Cut(string(b), "cpu MHz")
	v, _, _ := strings.Cut(strings.TrimLeft(after, " \t:"), "\n")
	mhz, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
	return strconv.Itoa(int(mhz * 1000))
}

// Stop ends QEMU through the launcher (vm.PID); a gone process is stopped.
func (m *microVMM) Stop(_ context.Context, vm sdk.VM, force bool) error {
	sig := map[bool]syscall.Signal{false: syscall.SIGTERM, true: syscall.SIGKILL}[force]
	if err := syscall.Kill(vm.PID, sig); err != syscall.ESRCH {
		return err // nil when delivered
	}
	return nil
}

// Metrics reports the launcher's child, QEMU.
func (m *microVMM) Metrics(_ context.Context, vm sdk.VM) (sdk.Metrics, error) {
	pid := 0 // QEMU is the child of whichever launcher thread started it
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", vm.PID))
	for _, t := range tasks {
		if b, _ := os.ReadFile(t); len(strings.Fields(string(b))) > 0 {
			pid, _ = strconv.Atoi(strings.Fields(string(b))[0])
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || pid == 0 {
		return sdk.Metrics{}, fmt.Errorf("QEMU of VM process %d: %w", vm.PID, sdk.ErrNotFound)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:])) // utime, stime, rss: fields 14, 15, 24
	n := func(i int) uint64 { v, _ := strconv.ParseUint(f[i-3], 10, 64); return v }
	return sdk.Metrics{CPUUser: time.Duration(n(14)) * 10 * time.Millisecond, CPUSystem: time.Duration(n(15)) * 10 * time.Millisecond,
		RSS: n(24) * uint64(os.Getpagesize())}, nil
}

// launch is the VM process: QEMU as its child, the agent socket and the
// user-mode network served next to it, until QEMU exits.
func launch(file string) int {
	fail := func(code int, what string, err error) int {
		fmt.Fprintf(os.Stderr, "boxctl-plugin-microvm launch: %s: %v\n", what, err)
		return code
	}
	var lc launchConfig
	if b, err := os.ReadFile(file); err != nil {
		return fail(125, file, err)
	} else if err := json.Unmarshal(b, &lc); err != nil {
		return fail(125, file, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.Command(lc.QEMU, lc.Args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // QEMU dies with the launcher
	if lc.Network != nil {
		// The published ports are bound before QEMU starts: one in use fails the start.
		network, err := usernet.New(usernet.Config{AllowHostLoopback: lc.Network.AllowHostLoopback, Ports: lc.Network.Ports, Allow: lc.Network.Allow})
		if err != nil {
			return fail(125, "network", err)
		}
		defer network.Close()
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(125, "network", err)
		}
		mine, theirs := os.NewFile(uintptr(fds[0]), "net"), os.NewFile(uintptr(fds[1]), "net-qemu")
		defer theirs.Close()
		conn, err := net.FileConn(mine)
		mine.Close()
		if err != nil {
			return fail(125, "network", err)
		}
		cmd.ExtraFiles = []*os.File{theirs} // fd 3
		go func() { _ = network.Serve(ctx, conn) }()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		return fail(126, "start QEMU", err)
	}
	go func() {
		_ = agentmux.New(agentmux.UnixDialer(lc.SerialSock), lc.AgentSock, agentmux.Options{}).Run(ctx)
	}()
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 0
}
