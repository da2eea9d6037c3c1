// Command boxctl-plugin-procvmm is a TEST DOUBLE of a VMM plugin: a real
// plugin binary served over go-plugin whose "VM" is an ordinary host process
// (this same binary in `vm` mode). It boots no kernel and isolates nothing;
// real VMs come from the qemu and libkrun plugins. It lets the lifecycle,
// monitor and recovery paths run fast in tests, the guest side included: the
// "VM" serves the guest agent's protocol on the plan's agent socket with the
// agent double of package test/agentdouble (commands run as host processes
// in a scratch directory, files are copied in and out of it).
//
// Plan takes a spec like a real VMM and checks it as one would (disks that
// exist, in a format it knows; enough vCPUs and memory; a network mode it
// knows), but it only reads the disks' names: the image is never mounted, so
// a box's files are the scratch directory (RunDir/root), which lives as long
// as the box. A user-mode network is accepted and not provided. The "VM"
// writes the kernel command line it was given (the core's rendering of the
// guest boot contract) to its console log.
//
// SwitchDisk (the disk-switch capability) does what a VMM's switch can be
// seen to do from outside: it checks its arguments as a real VMM would (the
// VM paused, a writable disk at that index, a qcow2 file of a regular kind
// as the new top, and BackingChain[0] the very file, by inode, that the
// disk's top was when planned or last switched) and records the switch in
// the VM's disk record, RunDir/disks.json: each disk's current path, format
// and chain, and how many times it was switched. Plan writes that record;
// tests read it to see that the core switched the disk it meant to. A
// switch to the file the disk is on already succeeds and records nothing.
//
// Memory snapshots (the memory-snapshot capability) are what a VMM's can be
// seen to be from outside, not real ones: a host process's memory is not
// saved. SaveState checks that the "VM" is paused and writes a small state
// file (a header line, then JSON: the inputs, the box it came from, the
// disks it had); StateInputs are the vCPUs, memory and disk/network layout.
// A restore plan checks the header and the inputs as a real VMM would, and
// its "VM" reads the file again at start: a truncated or corrupt one makes
// it exit 1 with the reason on its console, and a good one is a fresh
// process (nothing of the source's processes survives) whose console says
// "restored from" the file.
//
// Its config block can make it misbehave on purpose, for the plugin failure
// tests:
//
//	plugin "procvmm" {
//	  config {
//	    crash_on       = "Plan"   # exit(3) in the middle of this call
//	    hang_on        = "Plan"   # never answer this call
//	    fail_on        = "SwitchDisk" # SwitchDisk or SaveState returns an error (after its checks; nothing is recorded or written)
//	    ignore_sigterm = true     # the "VM" ignores graceful stop requests (SIGTERM and the agent's Shutdown)
//	    exit_after     = "1s"     # the "VM" exits by itself after this long
//	    exit_code      = 7        # ... with this code
//	    host_unusable  = "why"    # CheckHost says it cannot run VMs here, for this reason
//	  }
//	}
//
// CheckHost (the host-check capability) says usable, with accelerator
// "process" (what its plans record as the accelerator), unless
// host_unusable is set: that stands in for a VMM that cannot run on this
// host (a libkrun without a usable KVM) in the tests of vmm = "auto".
//
// Its launch plans name a VM state file (vm-state.json in the run
// directory) that the "VM" sets to "running" when it starts; tests write
// other states into it, standing in for a hypervisor that paused the guest.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/internal/filetype"
	"github.com/boxctl/boxctl/internal/proc"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/test/agentdouble"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "vm" {
		os.Exit(runVM(os.Args[2:]))
	}
	logger := sdk.NewLogger("procvmm")
	sdk.Serve(sdk.ServeConfig{VMM: &procVMM{log: logger}, Logger: logger})
}

type settings struct {
	CrashOn       string `hcl:"crash_on,optional"`
	HangOn        string `hcl:"hang_on,optional"`
	FailOn        string `hcl:"fail_on,optional"`
	IgnoreSigterm bool   `hcl:"ignore_sigterm,optional"`
	ExitAfter     string `hcl:"exit_after,optional"`
	ExitCode      int    `hcl:"exit_code,optional"`
	HostUnusable  string `hcl:"host_unusable,optional"`
}

// handle is what the core persists for a procvmm "VM".
type handle struct {
	RunDir string            `json:"run_dir"`
	BoxID  string            `json:"box_id,omitempty"`
	Inputs map[string]string `json:"inputs,omitempty"`
}

type procVMM struct {
	log hclog.Logger
	mu  sync.Mutex
	cfg settings
}

var (
	_ sdk.VMM               = (*procVMM)(nil)
	_ sdk.Pauser            = (*procVMM)(nil)
	_ sdk.MetricsReporter   = (*procVMM)(nil)
	_ sdk.DiskSwitcher      = (*procVMM)(nil)
	_ sdk.MemorySnapshotter = (*procVMM)(nil)
	_ sdk.HostChecker       = (*procVMM)(nil)
)

// accelerator is what the double's "VMs" run with: nothing but the host.
const accelerator = "process"

func (p *procVMM) CheckHost(context.Context) (sdk.HostReport, error) {
	if why := p.settings().HostUnusable; why != "" {
		return sdk.HostReport{Reason: why}, nil
	}
	return sdk.HostReport{Usable: true, Accelerator: accelerator, Reason: "test double: a VM is a host process"}, nil
}

func (p *procVMM) Info(context.Context) (sdk.Info, error) {
	return sdk.Info{
		Name:        "procvmm",
		Version:     "0.1.0",
		Description: "test double: the VM is a host process",
		Capabilities: sdk.Capabilities{
			GracefulStop: true,
			StateFile:    true,
			// It opens no disk file at all, and checks that each file of
			// a disk's chain exists.
			ExplicitChain: true,
			// The agent socket speaks the agent's gRPC directly, as a VMM's
			// vsock-mapped socket does.
			AgentTransport: sdk.AgentVsock,
		},
	}, nil
}

func (p *procVMM) Configure(_ context.Context, cfg *sdk.Config) error {
	var s settings
	if err := cfg.Decode(&s); err != nil {
		return err
	}
	if s.ExitAfter != "" {
		if _, err := time.ParseDuration(s.ExitAfter); err != nil {
			return sdk.ConfigError(cfg.BodyRange(), "Invalid exit_after", fmt.Sprintf("exit_after = %q is not a duration like \"1s\".", s.ExitAfter))
		}
	}
	p.mu.Lock()
	p.cfg = s
	p.mu.Unlock()
	return nil
}

func (p *procVMM) settings() settings {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

// misbehave crashes or hangs when the config asks for it in call.
func (p *procVMM) misbehave(call string) {
	cfg := p.settings()
	if strings.EqualFold(cfg.CrashOn, call) {
		p.log.Error("crashing on purpose", "call", call)
		time.Sleep(50 * time.Millisecond) // let the log line reach the host
		os.Exit(3)
	}
	if strings.EqualFold(cfg.HangOn, call) {
		p.log.Warn("hanging on purpose", "call", call)
		<-make(chan struct{})
	}
}

// minMemoryMiB is what the real guest needs; the double asks as much.
const minMemoryMiB = 64

// checkSpec refuses what a real VMM would refuse, naming the field.
func checkSpec(spec sdk.VMSpec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, sdk.ErrInvalidArgument)...)
	}
	switch {
	case spec.RunDir == "" || !filepath.IsAbs(spec.RunDir):
		return bad("spec.RunDir %q: want the absolute path of the VM's run directory", spec.RunDir)
	case spec.VCPUs < 1:
		return bad("spec.VCPUs = %d: a VM needs at least 1 vCPU", spec.VCPUs)
	case spec.MemoryMiB < minMemoryMiB:
		return bad("spec.MemoryMiB = %d: the guest needs at least %d MiB", spec.MemoryMiB, minMemoryMiB)
	case spec.Network.Mode != sdk.NetworkNone && spec.Network.Mode != sdk.NetworkUser:
		return bad("spec.Network.Mode %d: procvmm knows NetworkNone and NetworkUser", spec.Network.Mode)
	}
	for i, d := range spec.Disks {
		if _, err := guestboot.DeviceName(i); err != nil {
			return bad("spec.Disks[%d]: %v", i, err)
		}
		files := append([]sdk.ChainFile{{Path: d.Path, Format: d.Format}}, d.BackingChain...)
		for j, f := range files {
			what := fmt.Sprintf("spec.Disks[%d] (%s)", i, f.Path)
			if j > 0 {
				what = fmt.Sprintf("spec.Disks[%d].BackingChain[%d] (%s)", i, j-1, f.Path)
			}
			if f.Format != "raw" && f.Format != "qcow2" {
				return bad("%s: format %q is not raw or qcow2", what, f.Format)
			}
			if st, err := os.Stat(f.Path); err != nil || !st.Mode().IsRegular() {
				return bad("%s: not a disk file: %v", what, err)
			}
		}
	}
	return nil
}

func (p *procVMM) Plan(_ context.Context, spec sdk.VMSpec) (sdk.LaunchPlan, error) {
	p.misbehave("Plan")
	if err := checkSpec(spec); err != nil {
		return sdk.LaunchPlan{}, err
	}
	exe, err := os.Executable()
	if err != nil {
		return sdk.LaunchPlan{}, err
	}
	cfg := p.settings()
	if spec.Restore != nil {
		if err := checkRestore(spec); err != nil {
			return sdk.LaunchPlan{}, err
		}
	}
	run := spec.RunDir
	console, stateFile, agentSock := filepath.Join(run, "console.log"), filepath.Join(run, "vm-state.json"), filepath.Join(run, "agent.sock")
	args := []string{exe, "vm", "--console", console, "--state-file", stateFile, "--agent-socket", agentSock,
		"--root", filepath.Join(run, "root"), "--cmdline", strings.Join(spec.KernelArgs, " ")}
	if cfg.IgnoreSigterm {
		args = append(args, "--ignore-sigterm")
	}
	if spec.Restore != nil {
		args = append(args, "--restore", spec.Restore.Path)
	}
	if cfg.ExitAfter != "" {
		args = append(args, "--exit-after", cfg.ExitAfter, "--exit-code", strconv.Itoa(cfg.ExitCode))
	}
	if err := writeDiskRecord(run, spec.Disks); err != nil {
		return sdk.LaunchPlan{}, err
	}
	h, _ := json.Marshal(handle{RunDir: run, BoxID: spec.BoxID, Inputs: stateInputs(spec)})
	return sdk.LaunchPlan{
		Argv:        args,
		Env:         []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
		Dir:         run,
		Handle:      h,
		AgentSocket: agentSock,
		ConsoleLog:  console,
		StateFile:   stateFile,
		Notice:      "procvmm is a test double: the box runs as a host process",
		Accelerator: accelerator,
	}, nil
}

func signalVM(vm sdk.VM, sig syscall.Signal) error {
	if vm.PID <= 0 {
		return fmt.Errorf("VM.PID %d: %w", vm.PID, sdk.ErrInvalidArgument)
	}
	if err := syscall.Kill(vm.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil // a VM that is gone is stopped: Stop is idempotent
}

func (p *procVMM) Stop(_ context.Context, vm sdk.VM, force bool) error {
	p.misbehave("Stop")
	if force {
		return signalVM(vm, syscall.SIGKILL)
	}
	return signalVM(vm, syscall.SIGTERM)
}

// Pause stops the "VM" and returns once it is stopped, as a hypervisor's
// pause returns once the vCPUs are.
func (p *procVMM) Pause(ctx context.Context, vm sdk.VM) error {
	p.misbehave("Pause")
	if err := signalVM(vm, syscall.SIGSTOP); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		st, err := proc.ReadStat(vm.PID)
		if err != nil || st.State == 'T' {
			return nil // stopped, or gone (which Stop handles)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the VM process %d did not stop after SIGSTOP (state %c): %w", vm.PID, st.State, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

func (p *procVMM) Resume(_ context.Context, vm sdk.VM) error {
	p.misbehave("Resume")
	return signalVM(vm, syscall.SIGCONT)
}

func (p *procVMM) Metrics(_ context.Context, vm sdk.VM) (sdk.Metrics, error) {
	p.misbehave("Metrics")
	st, err := proc.ReadStat(vm.PID)
	if errors.Is(err, fs.ErrNotExist) {
		return sdk.Metrics{}, fmt.Errorf("VM process %d: %w", vm.PID, sdk.ErrNotFound)
	}
	if err != nil {
		return sdk.Metrics{}, err
	}
	return sdk.Metrics{CPUUser: st.CPUUser(), CPUSystem: st.CPUSystem(), RSS: st.RSS()}, nil
}

// diskRecord is RunDir/disks.json: the "VM"'s disks as they are now.
type diskRecord struct {
	Disks []recordedDisk `json:"disks"`
}

// recordedDisk is one disk of the "VM": its current top file, which inode
// that is (the storage plugin renames files, SwitchDisk compares inodes),
// and how often it was switched.
type recordedDisk struct {
	sdk.DiskSpec
	Dev      uint64 `json:"dev"`
	Ino      uint64 `json:"ino"`
	Switches int    `json:"switches"`
}

const diskRecordFile = "disks.json"

func fileID(path string) (dev, ino uint64, err error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Dev), st.Ino, nil
}

func writeDiskRecord(run string, disks []sdk.DiskSpec) error {
	var r diskRecord
	for _, d := range disks {
		dev, ino, err := fileID(d.Path)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
		r.Disks = append(r.Disks, recordedDisk{DiskSpec: d, Dev: dev, Ino: ino})
	}
	return saveDiskRecord(run, r)
}

func saveDiskRecord(run string, r diskRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(run, diskRecordFile+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(run, diskRecordFile))
}

// SwitchDisk checks the switch as a VMM would and records it in
// RunDir/disks.json.
func (p *procVMM) SwitchDisk(_ context.Context, vm sdk.VM, index int, disk sdk.DiskSpec) error {
	p.misbehave("SwitchDisk")
	var h handle
	if err := json.Unmarshal(vm.Handle, &h); err != nil || h.RunDir == "" {
		return fmt.Errorf("bad VM handle: %w", sdk.ErrInvalidArgument)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("SwitchDisk "+format+": %w", append(args, sdk.ErrInvalidArgument)...)
	}
	st, err := proc.ReadStat(vm.PID)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("the VM process %d is gone: %w", vm.PID, sdk.ErrInvalidState)
	case err != nil:
		return err
	case st.State != 'T':
		return fmt.Errorf("SwitchDisk: the VM runs (process state %c): pause it first: %w", st.State, sdk.ErrInvalidState)
	}
	b, err := os.ReadFile(filepath.Join(h.RunDir, diskRecordFile))
	if err != nil {
		return fmt.Errorf("the VM's disk record: %w", err)
	}
	var r diskRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("the VM's disk record %s: %w", filepath.Join(h.RunDir, diskRecordFile), err)
	}
	if index >= len(r.Disks) {
		return bad("index %d: the VM has %d disks", index, len(r.Disks))
	}
	cur := r.Disks[index]
	if cur.ReadOnly {
		return bad("index %d: the VM's disk %s is read-only: only a writable disk is switched", index, cur.Path)
	}
	if err := checkQcow2(disk.Path); err != nil {
		return bad("disk.Path: %v", err)
	}
	if dev, ino, err := fileID(disk.Path); err == nil && dev == cur.Dev && ino == cur.Ino {
		return nil // on disk.Path already: a retry
	}
	old := disk.BackingChain[0]
	dev, ino, err := fileID(old.Path)
	if err != nil {
		return bad("disk.BackingChain[0]: %v", err)
	}
	if dev != cur.Dev || ino != cur.Ino {
		return bad("disk.BackingChain[0] %s is not the file the VM's disk %d has open (%s when it was opened)", old.Path, index, cur.Path)
	}
	if old.Format != cur.Format {
		return bad("disk.BackingChain[0] (%s): format %q, but the VM's disk %d is %s", old.Path, old.Format, index, cur.Format)
	}
	for i, c := range disk.BackingChain {
		if st, err := os.Stat(c.Path); err != nil || !st.Mode().IsRegular() {
			return bad("disk.BackingChain[%d] (%s): not a disk file: %v", i, c.Path, err)
		}
	}
	if strings.EqualFold(p.settings().FailOn, "SwitchDisk") {
		return errors.New("SwitchDisk failing on purpose (fail_on)")
	}
	dev, ino, err = fileID(disk.Path)
	if err != nil {
		return bad("disk.Path: %v", err)
	}
	disk.Role = cur.Role
	r.Disks[index] = recordedDisk{DiskSpec: disk, Dev: dev, Ino: ino, Switches: cur.Switches + 1}
	return saveDiskRecord(h.RunDir, r)
}

// checkQcow2 refuses what is not a regular qcow2 file.
func checkQcow2(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is %s, not a disk file", path, filetype.Name(st.Mode()))
	}
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0); err != nil || string(magic) != "QFI\xfb" {
		return fmt.Errorf("%s is not a qcow2 file", path)
	}
	return nil
}

// vmOptions are the "VM"'s command-line flags, written by Plan.
type vmOptions struct {
	console, stateFile, agentSocket, root, cmdline string
	ignoreTerm                                     bool
	exitAfter                                      time.Duration
	exitCode                                       int
	restore                                        string
}

func parseVMArgs(args []string) vmOptions {
	var o vmOptions
	next := func(i *int) string {
		*i++
		if *i < len(args) {
			return args[*i]
		}
		return ""
	}
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--console":
			o.console = next(&i)
		case "--state-file":
			o.stateFile = next(&i)
		case "--agent-socket":
			o.agentSocket = next(&i)
		case "--root":
			o.root = next(&i)
		case "--cmdline":
			o.cmdline = next(&i)
		case "--ignore-sigterm":
			o.ignoreTerm = true
		case "--exit-after":
			o.exitAfter, _ = time.ParseDuration(next(&i))
		case "--exit-code":
			o.exitCode, _ = strconv.Atoi(next(&i))
		case "--restore":
			o.restore = next(&i)
		}
	}
	return o
}

// runVM is the "VM": it writes its console lines, serves the agent double
// on the agent socket, and powers off on SIGTERM or the agent's Shutdown.
func runVM(args []string) int {
	o := parseVMArgs(args)
	out := os.Stdout
	if o.console != "" {
		if f, err := os.OpenFile(o.console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			out = f
		}
	}
	if o.restore != "" {
		st, err := readState(o.restore)
		if err != nil {
			fmt.Fprintf(out, "procvmm: cannot restore: %v\n", err)
			fmt.Fprintf(os.Stderr, "procvmm: cannot restore: %v\n", err)
			return 1
		}
		fmt.Fprintf(out, "procvmm: restored from %s (saved from box %s)\n", o.restore, st.BoxID)
	}
	fmt.Fprintf(out, "procvmm: booted pid %d\n", os.Getpid())
	fmt.Fprintf(out, "procvmm: kernel command line: %s\n", o.cmdline)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	powerOff := make(chan struct{}, 1)
	if o.agentSocket != "" {
		stop, err := serveAgent(o, out, powerOff)
		if err != nil {
			fmt.Fprintf(out, "procvmm: no agent: %v\n", err)
			return 1
		}
		defer stop()
	}
	if o.stateFile != "" {
		tmp := o.stateFile + ".tmp"
		if os.WriteFile(tmp, []byte(`{"state":"running"}`), 0o600) == nil {
			_ = os.Rename(tmp, o.stateFile)
		}
	}
	var timeout <-chan time.Time
	if o.exitAfter > 0 {
		timeout = time.After(o.exitAfter)
	}
	for {
		select {
		case s := <-sigs:
			if o.ignoreTerm {
				fmt.Fprintf(out, "procvmm: ignoring %v\n", s)
				continue
			}
			fmt.Fprintf(out, "procvmm: powering off on %v\n", s)
			return 0
		case <-powerOff:
			if o.ignoreTerm {
				fmt.Fprintf(out, "procvmm: ignoring the agent's shutdown\n")
				continue
			}
			fmt.Fprintf(out, "procvmm: powering off on the agent's shutdown\n")
			return 0
		case <-timeout:
			fmt.Fprintf(out, "procvmm: exiting by itself with %d\n", o.exitCode)
			return o.exitCode
		}
	}
}

// serveAgent serves the agent double on the agent socket; stop ends it and
// the commands it started, and removes the socket.
func serveAgent(o vmOptions, console *os.File, powerOff chan<- struct{}) (stop func(), err error) {
	_ = os.Remove(o.agentSocket) // a stale socket from a previous run
	l, err := net.Listen("unix", o.agentSocket)
	if err != nil {
		return nil, err
	}
	level := slog.LevelWarn
	if v := os.Getenv("BOXCTL_LOG"); v == "debug" || v == "trace" {
		level = slog.LevelDebug
	}
	boot, _ := guestboot.Parse(o.cmdline)
	d, err := agentdouble.New(agentdouble.Config{
		Root:    o.root,
		Console: o.console,
		PowerOff: func() {
			select {
			case powerOff <- struct{}{}:
			default:
			}
		},
		Logger: slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: level})),
		// The box ID a guest reads from its kernel command line.
		BoxID: boot.BoxID,
	})
	if err != nil {
		l.Close()
		return nil, err
	}
	go func() { _ = d.Serve(l) }()
	return func() {
		d.Close()
		_ = os.Remove(o.agentSocket)
	}, nil
}
