// Package vmtest boots the boxctl guest (build/guest: kernel + initramfs with the agent) in
// a real QEMU VM for tests and benchmarks: it builds the guest if needed, makes the disks a
// box has (a read-only ext4 image root and a qcow2 writable disk over blank ext4), starts
// QEMU with the agent's virtio-serial port, and connects through agentmux and agentclient.
//
// It is test support, not product code: the QEMU VMM plugin owns the real command line.
// QEMUArgs documents the one measured fastest under TCG here. The guest boot contract
// (kernel arguments, the agent's port name) is sdk/guestboot's, as for every VMM.
package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/sdk/agentmux"
	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/test/images/busybox"
)

// ErrMissingTool means a program the VM tests need is not installed.
var ErrMissingTool = errors.New("required tool not installed")

// RepoRoot finds the module root (the directory with go.mod) from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Guest is a built guest kernel and initramfs.
type Guest struct {
	Kernel, Initramfs string
	// Cmdline is the kernel command line guest/build.sh recommends.
	Cmdline string
	// Agent is the agent binary and ModulesDir the kernel modules the initramfs was made of.
	Agent, ModulesDir string
}

// BuildGuest runs guest/build.sh (incremental: fast when nothing changed) and returns the
// result. Its error says how to fix a failed build.
func BuildGuest(ctx context.Context) (*Guest, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(root, "guest", "build.sh")
	cmd := exec.CommandContext(ctx, script)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building the guest failed (run guest/build.sh and fix what it says): %v\n%s", err, out.String())
	}
	dir := filepath.Join(root, "build", "guest")
	g := &Guest{Kernel: filepath.Join(dir, "vmlinuz"), Initramfs: filepath.Join(dir, "initramfs"), Agent: filepath.Join(dir, "boxctl-agent")}
	for _, f := range []string{g.Kernel, g.Initramfs} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("guest build output missing (run guest/build.sh): %w", err)
		}
	}
	env, err := os.ReadFile(filepath.Join(dir, "guest.env"))
	if err != nil {
		return nil, fmt.Errorf("guest build output missing (run guest/build.sh): %w", err)
	}
	for _, line := range strings.Split(string(env), "\n") {
		if v, ok := strings.CutPrefix(line, "CMDLINE="); ok {
			g.Cmdline = strings.Trim(v, `"`)
		}
		if v, ok := strings.CutPrefix(line, "MODULES_DIR="); ok {
			g.ModulesDir = v
		}
	}
	return g, nil
}

func need(tools ...string) error {
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%w: %s (apt-get install qemu-system-x86 qemu-utils e2fsprogs)", ErrMissingTool, t)
		}
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// MakeRootDisk writes the busybox test image's filesystem as a raw ext4 image at path.
func MakeRootDisk(ctx context.Context, path string) error {
	if err := need("mkfs.ext4"); err != nil {
		return err
	}
	tree := path + ".tree"
	_ = os.RemoveAll(tree)
	defer os.RemoveAll(tree)
	if err := busybox.WriteRootfs(tree, busybox.Options{}); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	_ = os.Remove(path)
	return run(ctx, "mkfs.ext4", "-q", "-F", "-L", "image", "-d", tree, path, "32M")
}

// MakeDataDisk writes a qcow2 over a blank ext4 filesystem of sizeMB at path (what a new
// box's writable disk is).
func MakeDataDisk(ctx context.Context, path string, sizeMB int) error {
	if err := need("mkfs.ext4", "qemu-img"); err != nil {
		return err
	}
	raw := path + ".raw"
	defer os.Remove(raw)
	_ = os.Remove(raw)
	if err := run(ctx, "truncate", "-s", strconv.Itoa(sizeMB)+"M", raw); err != nil {
		return err
	}
	if err := run(ctx, "mkfs.ext4", "-q", "-F", "-L", "data", raw); err != nil {
		return err
	}
	_ = os.Remove(path)
	return run(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path)
}

// Config describes a VM.
type Config struct {
	Guest *Guest
	// RootDisk is a raw ext4 image (attached read-only as vda); DataDisk a qcow2 (vdb).
	RootDisk, DataDisk string
	// Dir holds the sockets and the console log.
	Dir string
	// Machine is "q35" (default), "pc" or "microvm".
	Machine string
	// CPU is QEMU's -cpu model; "max" if empty.
	CPU      string
	MemoryMB int // 256 if zero
	CPUs     int // 1 if zero
	// Cmdline is the kernel command line before the guest boot contract (console, quiet...:
	// Guest.Cmdline).
	Cmdline string
	// Boot is the guest boot contract appended to Cmdline; guestboot.Default() (root vda,
	// writable disk vdb, no network) if nil.
	Boot      *guestboot.Config
	ExtraArgs []string
}

// KernelCmdline is the guest's whole kernel command line for cfg.
func (cfg Config) KernelCmdline() string {
	boot := guestboot.Default()
	if cfg.Boot != nil {
		boot = *cfg.Boot
	}
	return strings.TrimSpace(cfg.Cmdline + " " + strings.Join(boot.Args(), " "))
}

// QEMUArgs returns QEMU's arguments for cfg (TCG; serial console to a file; the agent's
// virtio-serial port on a unix socket chardev).
func QEMUArgs(cfg Config) []string {
	machine := cfg.Machine
	if machine == "" {
		machine = "q35"
	}
	mem, cpus := cfg.MemoryMB, cfg.CPUs
	if mem == 0 {
		mem = 256
	}
	if cpus == 0 {
		cpus = 1
	}
	bus := "pci"
	machineOpt := machine
	switch machine {
	case "microvm":
		// The PIT, PIC and RTC stay: without them the kernel cannot calibrate its clock.
		bus = "device"
		machineOpt = "microvm,x-option-roms=off,isa-serial=on"
	}
	cpu := cfg.CPU
	if cpu == "" {
		cpu = "max"
	}
	// Without -nodefaults a "pc" machine still gets a VGA card and a NIC to probe.
	args := []string{
		"-M", machineOpt, "-accel", "tcg,thread=single", "-cpu", cpu,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-kernel", cfg.Guest.Kernel, "-initrd", cfg.Guest.Initramfs,
		"-append", cfg.KernelCmdline(),
		"-chardev", "file,id=console,path=" + filepath.Join(cfg.Dir, "console.log"),
		"-serial", "chardev:console",
		"-drive", "file=" + cfg.RootDisk + ",if=none,id=root,format=raw,readonly=on,cache=unsafe",
		"-device", "virtio-blk-" + bus + ",drive=root",
		"-drive", "file=" + cfg.DataDisk + ",if=none,id=data,format=qcow2,cache=writeback,discard=unmap",
		"-device", "virtio-blk-" + bus + ",drive=data",
		"-device", "virtio-serial-" + bus + ",max_ports=2",
		"-chardev", "socket,id=agent,path=" + filepath.Join(cfg.Dir, "serial.sock") + ",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=" + guestboot.SerialPort,
	}
	return append(args, cfg.ExtraArgs...)
}

// VM is a running QEMU with a agentmux in front of the agent.
type VM struct {
	Config
	Started time.Time
	// AgentSocket is agentmux's socket; Client is connected to it.
	AgentSocket string
	Client      *agentclient.Client

	cmd       *exec.Cmd
	exited    chan struct{}
	exitErr   error
	stderr    bytes.Buffer
	muxCancel context.CancelFunc
	muxDone   chan struct{}
	stopOnce  sync.Once
}

// Boot starts QEMU and the agentmux for cfg; it does not wait for the agent (see
// Client.WaitReady).
func Boot(cfg Config) (*VM, error) {
	if err := need("qemu-system-x86_64"); err != nil {
		return nil, err
	}
	vm := &VM{Config: cfg, exited: make(chan struct{}), AgentSocket: filepath.Join(cfg.Dir, "agent.sock")}
	vm.cmd = exec.Command("qemu-system-x86_64", QEMUArgs(cfg)...)
	vm.cmd.Stderr = &vm.stderr
	vm.Started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() {
		vm.exitErr = vm.cmd.Wait()
		close(vm.exited)
	}()
	if err := vm.startMux(); err != nil {
		vm.Kill()
		return nil, err
	}
	return vm, nil
}

// startMux (re)starts the agentmux and the client, as the monitor would after a restart.
func (vm *VM) startMux() error {
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mux := agentmux.New(agentmux.UnixDialer(filepath.Join(vm.Dir, "serial.sock")), vm.AgentSocket, agentmux.Options{Logger: log})
	l, err := listenUnix(vm.AgentSocket)
	if err != nil {
		cancel()
		return err
	}
	vm.muxCancel = cancel
	vm.muxDone = make(chan struct{})
	go func() {
		defer close(vm.muxDone)
		_ = mux.Serve(ctx, l)
	}()
	c, err := agentclient.Dial(ctx, vm.AgentSocket)
	if err != nil {
		cancel()
		return err
	}
	vm.Client = c
	return nil
}

// RestartMux stops the agentmux and the client and starts new ones on the same VM (a host
// reconnecting to a running guest).
func (vm *VM) RestartMux() error {
	vm.stopMux()
	return vm.startMux()
}

func (vm *VM) stopMux() {
	if vm.Client != nil {
		vm.Client.Close()
	}
	if vm.muxCancel != nil {
		vm.muxCancel()
		<-vm.muxDone
	}
}

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Wait waits for QEMU to exit and returns its error (nil for a clean power-off).
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		return vm.exitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill stops QEMU (if still running) and the agentmux.
func (vm *VM) Kill() {
	vm.stopOnce.Do(func() {
		if vm.cmd.Process != nil {
			_ = vm.cmd.Process.Kill()
		}
		<-vm.exited
		vm.stopMux()
	})
}

// Console returns the guest's serial console output so far.
func (vm *VM) Console() string {
	b, _ := os.ReadFile(filepath.Join(vm.Dir, "console.log"))
	return string(b)
}

// QEMUStderr returns what QEMU printed, once it has exited ("" before).
func (vm *VM) QEMUStderr() string {
	select {
	case <-vm.exited:
		return vm.stderr.String()
	default:
		return ""
	}
}

func listenUnix(path string) (net.Listener, error) {
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}
