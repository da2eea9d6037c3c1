package sdktest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/guestboot"
)

// NewVMMFunc returns a fresh, configured VMM for one check of the VMM
// conformance suite: a new implementation served in-process (Serve) or a new
// plugin process (StartPlugin). Plans it returns must name a launcher that
// runs outside the test's plugin connection, as the core runs plan.Argv
// from a box monitor.
type NewVMMFunc func(t *testing.T) sdk.VMM

// GuestWaiter waits until the guest agent behind socket (a plan's
// AgentSocket) answers with its root mounted, or ctx ends. AgentReady is
// one.
type GuestWaiter func(ctx context.Context, socket string) error

// VMMOption configures VMMConformance.
type VMMOption func(*vmmSuite)

// WithReconnect sets how the suite gets another client of the same plugin
// for the check that a VM is controlled through its handle alone: ideally a
// new plugin process (StartPlugin), as when a later boxctl command stops a
// box. Default: the NewVMMFunc.
func WithReconnect(f NewVMMFunc) VMMOption { return func(s *vmmSuite) { s.reconnect = f } }

// WithDisks sets the disks of the suite's valid spec, made in dir (which
// holds nothing else the plugin may write). The default is what a box has:
// a read-only ext4 root (raw) and a writable ext4 disk (raw), both empty,
// made with mkfs.ext4 (e2fsprogs); the boxctl guest boots from them.
func WithDisks(f func(t *testing.T, dir string) []sdk.DiskSpec) VMMOption {
	return func(s *vmmSuite) { s.disks = f }
}

// WithGuest says the plans boot the boxctl guest: the checks that need a
// running guest wait for its agent with wait (nil: AgentReady). Without
// it they are skipped, and the running-VM checks see only the process.
func WithGuest(wait GuestWaiter) VMMOption {
	return func(s *vmmSuite) {
		if wait == nil {
			wait = AgentReady
		}
		s.wait = wait
	}
}

// GuestWriter writes data as a new file at path (absolute, inside the box
// root) in the guest behind socket (a plan's AgentSocket) and returns once
// the file is on the VM's writable disk. AgentWriteFile is one.
type GuestWriter func(ctx context.Context, socket, path string, data []byte) error

// WithGuestWrites says that what the guest writes lands on the spec's
// writable disk (a real guest booted from the suite's disks, not a double
// that keeps files elsewhere), and writes with w (nil: AgentWriteFile). The
// DiskSwitch checks then write a file before and after the switch and check
// that the data went into the old file and the new overlay respectively.
// It implies WithGuest(nil) unless WithGuest is given too.
func WithGuestWrites(w GuestWriter) VMMOption {
	return func(s *vmmSuite) {
		if w == nil {
			w = AgentWriteFile
		}
		s.write = w
	}
}

// WithBootTimeout bounds the wait for the guest agent (default 4 minutes:
// a guest under TCG on a busy machine is slow).
func WithBootTimeout(d time.Duration) VMMOption { return func(s *vmmSuite) { s.bootTimeout = d } }

// WithSpec adjusts the suite's valid spec (vCPUs, memory, network) before
// each use; the disks and RunDir are the suite's.
func WithSpec(f func(*sdk.VMSpec)) VMMOption { return func(s *vmmSuite) { s.adjust = f } }

// VMMConformance runs the VMM conformance suite against the VMMs newVMM
// returns: the contract of sdk.VMM, sdk.Pauser, sdk.MetricsReporter,
// sdk.DiskSwitcher, sdk.MemorySnapshotter and sdk.HostChecker, and the
// network-allow capability (see WithGuestDialer), as the core relies on it. Each check is a subtest of its own, with a fresh
// VMM and a fresh directory for its disks and RunDir; a failing check logs
// the spec, the plan, the capabilities and the VM's output. Checks of an
// optional feature the plugin does not declare are skipped, naming the
// capability.
//
// Some checks need a running VM: the suite starts plan.Argv itself, as the
// box monitor does (plan.Env, plan.Dir, output to RunDir/vm.log). Booting
// a guest takes seconds under TCG, so those checks share one VM, started by
// the first of them; each still asks through a VMM of its own.
// HandleFromAFreshPluginProcess stops the VM through a VMM from
// WithReconnect; DiskSwitchAfterStop then looks at the disk files DiskSwitch
// left.
func VMMConformance(t *testing.T, newVMM NewVMMFunc, opts ...VMMOption) {
	s := &vmmSuite{newVMM: newVMM, disks: defaultDisks, bootTimeout: 4 * time.Minute}
	for _, o := range opts {
		o(s)
	}
	if s.reconnect == nil {
		s.reconnect = newVMM
	}
	if (s.write != nil || s.dial != nil) && s.wait == nil {
		s.wait = AgentReady
	}
	t.Cleanup(s.stopShared)
	for _, c := range vmmChecks {
		t.Run(c.name, func(t *testing.T) { s.run(t, c) })
	}
}

type vmmSuite struct {
	newVMM, reconnect NewVMMFunc
	disks             func(t *testing.T, dir string) []sdk.DiskSpec
	wait              GuestWaiter
	write             GuestWriter
	dial              GuestDialer
	bootTimeout       time.Duration
	adjust            func(*sdk.VMSpec)

	mu        sync.Mutex
	shared    *vmmEnv // the running VM the running checks share
	sharedErr error
	// switched is what DiskSwitch did to the shared VM's writable disk,
	// for DiskSwitchAfterStop.
	switched *diskSwitched
}

// vmmCheck is one named check.
type vmmCheck struct {
	name string
	// capability the check needs, by its wire name ("" for none).
	capability string
	// running: the check uses the shared running VM; guest: and needs the
	// guest (WithGuest).
	running, guest bool
	fn             func(e *vmmEnv)
}

var vmmChecks = []vmmCheck{
	{name: "Info", fn: checkVMMInfo},
	{name: "PlanOfAValidSpec", fn: checkValidPlan},
	{name: "PlanHasNoSideEffectsOutsideRunDir", fn: checkNoSideEffects},
	{name: "PlanRefusesInvalidSpecs", fn: checkInvalidSpecs},
	{name: "CheckHost", capability: "host-check", fn: checkHost},
	{name: "NetworkAllow", capability: "network-allow", fn: checkNetworkAllow},
	{name: "StopOfAGoneProcess", fn: checkStopGone},
	{name: "RestartInTheSameRunDir", fn: checkRestart},
	{name: "BootsToTheAgent", running: true, guest: true, fn: checkBoots},
	{name: "StateFileSaysRunning", capability: "state-file", running: true, fn: checkStateFile},
	{name: "Metrics", capability: "metrics", running: true, fn: checkMetrics},
	{name: "PauseResumeIdempotent", capability: "pause", running: true, fn: checkPauseResume},
	{name: "MemorySnapshot", capability: "memory-snapshot", running: true, fn: checkMemorySnapshot},
	{name: "DiskSwitch", capability: "disk-switch", running: true, fn: checkDiskSwitch},
	// It stops the shared VM.
	{name: "HandleFromAFreshPluginProcess", running: true, fn: checkReconnect},
	// After the shared VM stopped.
	{name: "DiskSwitchAfterStop", capability: "disk-switch", running: true, fn: checkDiskSwitchAfterStop},
}

// vmmEnv is one check's VMM, spec and, for running checks, VM.
type vmmEnv struct {
	t     *testing.T
	ctx   context.Context
	s     *vmmSuite
	vmm   sdk.VMM
	info  sdk.Info
	dir   string // holds disks/ and run/
	spec  sdk.VMSpec
	plan  *sdk.LaunchPlan
	vm    *vmProcess
	boot  time.Duration // from the VM's start to its guest agent's answer
	extra []string      // more to dump on failure
}

func (s *vmmSuite) run(t *testing.T, c vmmCheck) {
	if c.guest && s.wait == nil {
		t.Skip("no guest: the plans boot none (pass WithGuest when they boot the boxctl guest)")
	}
	e := s.env(t, !c.running)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(e.dump())
		}
	})
	if c.capability != "" && !slices.Contains(e.info.Capabilities.Strings(), c.capability) {
		t.Skipf("the plugin does not declare %q", c.capability)
	}
	if c.running {
		vm, err := s.runningVM(t)
		if err != nil {
			t.Fatalf("the shared running VM: %v", err)
		}
		// Dump and control the shared VM, asking through this check's VMM.
		e.spec, e.plan, e.vm, e.boot = vm.spec, vm.plan, vm.vm, vm.boot
	}
	c.fn(e)
}

// env makes a fresh VMM and, withSpec, a fresh directory and valid spec.
func (s *vmmSuite) env(t *testing.T, withSpec bool) *vmmEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.bootTimeout+5*time.Minute)
	t.Cleanup(cancel)
	e := &vmmEnv{t: t, ctx: ctx, s: s}
	e.vmm = s.newVMM(t)
	if e.vmm == nil {
		t.Fatal("NewVMMFunc returned nil")
	}
	info, err := e.vmm.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	e.info = info
	if withSpec {
		e.dir = shortTempDir(t)
		e.spec = s.validSpec(t, e.dir)
	}
	return e
}

// shortTempDir is a temporary directory with a short path: a socket path
// in a RunDir must fit in 107 bytes, which a nested subtest's TempDir does
// not leave room for.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// validSpec is a spec every VMM must plan: the suite's disks, a RunDir that
// exists, and the guest boot contract rendered as the core renders it.
func (s *vmmSuite) validSpec(t *testing.T, dir string) sdk.VMSpec {
	t.Helper()
	disks, run := filepath.Join(dir, "disks"), filepath.Join(dir, "run")
	for _, d := range []string{disks, run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	spec := sdk.VMSpec{
		BoxID: "conformance", VCPUs: 1, MemoryMiB: 256, RunDir: run,
		Disks:   s.disks(t, disks),
		Network: sdk.NetworkSpec{Mode: sdk.NetworkUser},
	}
	if s.adjust != nil {
		s.adjust(&spec)
		spec.RunDir = run
	}
	spec.KernelArgs = bootArgs(spec)
	return spec
}

// bootArgs renders the guest boot contract for spec as the core does.
func bootArgs(spec sdk.VMSpec) []string {
	c := guestboot.Default()
	for i, d := range spec.Disks {
		dev, err := guestboot.DeviceName(i)
		if err != nil {
			break
		}
		switch d.Role {
		case sdk.DiskRoleImage:
			c.RootDev = dev
		case sdk.DiskRoleWritable:
			c.DataDev = dev
		}
	}
	if spec.Network.Mode == sdk.NetworkUser {
		c.UserNetwork()
	}
	return c.Args()
}

// defaultDisks makes an empty ext4 root and writable disk, or zero-filled
// files when mkfs.ext4 is missing (enough for Plan; a guest does not boot
// from them, and WithGuest then fails at the first running check).
func defaultDisks(t *testing.T, dir string) []sdk.DiskSpec {
	t.Helper()
	root, data := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "data.ext4")
	for _, d := range []struct {
		path  string
		size  int64
		label string
	}{{root, 16 << 20, "image"}, {data, 64 << 20, "data"}} {
		if err := os.WriteFile(d.path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(d.path, d.size); err != nil {
			t.Fatal(err)
		}
		if mkfs, err := exec.LookPath("mkfs.ext4"); err == nil {
			if out, err := exec.Command(mkfs, "-q", "-F", "-L", d.label, d.path).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.ext4 %s: %v: %s", d.path, err, out)
			}
		}
	}
	return []sdk.DiskSpec{
		{Path: root, Format: "raw", Role: sdk.DiskRoleImage, ReadOnly: true},
		{Path: data, Format: "raw", Role: sdk.DiskRoleWritable},
	}
}

func (e *vmmEnv) dump() string {
	var b strings.Builder
	fmt.Fprintf(&b, "VMM conformance failure dump:\n  capabilities: %v\n  spec: %+v\n", e.info.Capabilities.Strings(), e.spec)
	if e.plan != nil {
		fmt.Fprintf(&b, "  plan: %+v\n  handle: %s\n", *e.plan, e.plan.Handle)
	}
	if e.vm != nil {
		fmt.Fprintf(&b, "  VM process %d, exited: %v\n", e.vm.cmd.Process.Pid, e.vm.exited())
		if out, _ := os.ReadFile(e.vm.log); len(out) > 0 {
			fmt.Fprintf(&b, "  VM output (%s):\n%s\n", e.vm.log, tail(string(out), 3000))
		}
	}
	if e.plan != nil && e.plan.ConsoleLog != "" {
		if out, _ := os.ReadFile(e.plan.ConsoleLog); len(out) > 0 {
			fmt.Fprintf(&b, "  console (%s):\n%s\n", e.plan.ConsoleLog, tail(string(out), 3000))
		}
	}
	for _, x := range e.extra {
		b.WriteString("  " + x + "\n")
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// planValid plans e.spec and fails the check unless that works.
func (e *vmmEnv) planValid() sdk.LaunchPlan {
	e.t.Helper()
	plan, err := e.vmm.Plan(e.ctx, e.spec)
	if err != nil {
		e.t.Fatalf("Plan of a valid spec: %v", err)
	}
	e.plan = &plan
	return plan
}

// vmProcess is a plan's process, started as the box monitor starts it.
type vmProcess struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startVM(plan sdk.LaunchPlan, runDir string) (*vmProcess, error) {
	if len(plan.Argv) == 0 {
		return nil, errors.New("the plan has no argv")
	}
	log := filepath.Join(runDir, "vm.log")
	out, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.Command(plan.Argv[0], plan.Argv[1:]...)
	cmd.Env, cmd.Dir = plan.Env, plan.Dir
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own, so that cleanup ends whatever it started too;
	// and it dies with the test, should the test binary die (a timeout)
	// before its cleanups run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", plan.Argv[0], err)
	}
	v := &vmProcess{cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		v.err = cmd.Wait()
		close(v.done)
	}()
	return v, nil
}

func (v *vmProcess) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to d for the process to exit.
func (v *vmProcess) waitExit(d time.Duration) bool {
	select {
	case <-v.done:
		return true
	case <-time.After(d):
		return false
	}
}

// kill ends the process and its group (the group is this suite's: its
// leader is a child not yet reaped until done).
func (v *vmProcess) kill() {
	if !v.exited() {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
		_ = v.cmd.Process.Kill()
	}
	<-v.done
}

func (e *vmmEnv) ref() sdk.VM { return sdk.VM{Handle: e.plan.Handle, PID: e.vm.cmd.Process.Pid} }

// launch plans e.spec and starts the plan's process, killed when the check ends.
func (e *vmmEnv) launch() {
	e.t.Helper()
	plan := e.planValid()
	vm, err := startVM(plan, e.spec.RunDir)
	if err != nil {
		e.t.Fatal(err)
	}
	e.vm = vm
	e.t.Cleanup(vm.kill)
}

// sharedVM is the running VM the running checks share.
type sharedVM struct {
	spec sdk.VMSpec
	plan *sdk.LaunchPlan
	vm   *vmProcess
	boot time.Duration
}

// runningVM starts the shared VM on first use (with t's VMM, and t's
// reporting) and waits for its guest when there is one; later calls return it.
func (s *vmmSuite) runningVM(t *testing.T) (*sharedVM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shared != nil || s.sharedErr != nil {
		return s.sharedVM(), s.sharedErr
	}
	// Its directory outlives the check that starts it.
	dir, err := os.MkdirTemp("", "vmm")
	if err != nil {
		return nil, err
	}
	e := &vmmEnv{t: t, s: s, dir: dir, ctx: context.Background(), vmm: s.newVMM(t)}
	s.shared = e
	e.spec = s.validSpec(t, dir)
	plan, err := e.vmm.Plan(e.ctx, e.spec)
	if err != nil {
		s.sharedErr = fmt.Errorf("plan of a valid spec: %w", err)
		return nil, s.sharedErr
	}
	e.plan = &plan
	started := time.Now()
	if e.vm, err = startVM(plan, e.spec.RunDir); err != nil {
		s.sharedErr = err
		return nil, err
	}
	if s.wait != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.bootTimeout)
		defer cancel()
		if err := waitGuest(ctx, s.wait, plan.AgentSocket, e.vm); err != nil {
			s.sharedErr = fmt.Errorf("the guest agent did not answer on %s: %w", plan.AgentSocket, err)
			return nil, s.sharedErr
		}
		e.boot = time.Since(started)
	}
	return s.sharedVM(), nil
}

func (s *vmmSuite) sharedVM() *sharedVM {
	if s.shared == nil {
		return nil
	}
	return &sharedVM{spec: s.shared.spec, plan: s.shared.plan, vm: s.shared.vm, boot: s.shared.boot}
}

func (s *vmmSuite) stopShared() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shared == nil {
		return
	}
	if s.shared.vm != nil {
		s.shared.vm.kill()
	}
	_ = os.RemoveAll(s.shared.dir)
}

// waitGuest waits for the guest agent, or for the VM process to exit.
func waitGuest(ctx context.Context, wait GuestWaiter, socket string, vm *vmProcess) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-vm.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := wait(ctx, socket)
	if vm.exited() {
		return fmt.Errorf("the VM process exited (%v) before its guest agent answered", vm.err)
	}
	return err
}

// inside reports whether path lies inside dir.
func inside(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && filepath.IsAbs(path) && rel != "." && !strings.HasPrefix(rel, "..")
}

var pluginName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

func checkVMMInfo(e *vmmEnv) {
	t := e.t
	i := e.info
	if !pluginName.MatchString(i.Name) {
		t.Errorf("Info.Name %q: want lower case [a-z0-9-]", i.Name)
	}
	if i.Version == "" {
		t.Error("Info.Version is empty")
	}
	if !slices.Contains(i.ProtocolVersions, sdk.ProtocolVersion) {
		t.Errorf("Info.ProtocolVersions %v lacks %d", i.ProtocolVersions, sdk.ProtocolVersion)
	}
	if c := i.Capabilities.AgentTransport; c != sdk.AgentSerial && c != sdk.AgentVsock {
		t.Errorf("Info.Capabilities.AgentTransport %q: declare how the agent socket reaches the guest (sdk.AgentSerial or sdk.AgentVsock)", c)
	}
	// An optional call the plugin does not declare is refused as
	// unsupported; it must not reach a VM. The VM named is a process that
	// is gone.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	vm := sdk.VM{Handle: []byte("{}"), PID: gone.Process.Pid}
	if !i.Capabilities.Pause {
		if p, ok := e.vmm.(sdk.Pauser); ok {
			if err := p.Pause(e.ctx, vm); !errors.Is(err, sdk.ErrUnsupported) {
				t.Errorf("Pause without the pause capability: %v, want sdk.ErrUnsupported", err)
			}
		}
	} else if _, ok := e.vmm.(sdk.Pauser); !ok {
		t.Error("the plugin declares pause, but its client is no sdk.Pauser")
	}
	if !i.Capabilities.DiskSwitch {
		if d, ok := e.vmm.(sdk.DiskSwitcher); ok {
			disk := sdk.DiskSpec{Path: "/nonexistent/overlay.qcow2", Format: "qcow2", Role: sdk.DiskRoleWritable,
				BackingChain: []sdk.ChainFile{{Path: "/nonexistent/disk.raw", Format: "raw"}}}
			if err := d.SwitchDisk(e.ctx, vm, 1, disk); !errors.Is(err, sdk.ErrUnsupported) {
				t.Errorf("SwitchDisk without the disk-switch capability: %v, want sdk.ErrUnsupported", err)
			}
		}
	} else if _, ok := e.vmm.(sdk.DiskSwitcher); !ok {
		t.Error("the plugin declares disk-switch, but its client is no sdk.DiskSwitcher")
	}
	if !i.Capabilities.MemorySnapshot {
		if m, ok := e.vmm.(sdk.MemorySnapshotter); ok {
			if _, err := m.SaveState(e.ctx, vm, "/nonexistent/state"); !errors.Is(err, sdk.ErrUnsupported) {
				t.Errorf("SaveState without the memory-snapshot capability: %v, want sdk.ErrUnsupported", err)
			}
			if _, err := m.StateInputs(e.ctx, sdk.VMSpec{}); !errors.Is(err, sdk.ErrUnsupported) {
				t.Errorf("StateInputs without the memory-snapshot capability: %v, want sdk.ErrUnsupported", err)
			}
		}
	} else if _, ok := e.vmm.(sdk.MemorySnapshotter); !ok {
		t.Error("the plugin declares memory-snapshot, but its client is no sdk.MemorySnapshotter")
	}
	if !i.Capabilities.HostCheck {
		if c, ok := e.vmm.(sdk.HostChecker); ok {
			if _, err := c.CheckHost(e.ctx); !errors.Is(err, sdk.ErrUnsupported) {
				t.Errorf("CheckHost without the host-check capability: %v, want sdk.ErrUnsupported", err)
			}
		}
	} else if _, ok := e.vmm.(sdk.HostChecker); !ok {
		t.Error("the plugin declares host-check, but its client is no sdk.HostChecker")
	}
	if !i.Capabilities.Metrics {
		if m, ok := e.vmm.(sdk.MetricsReporter); ok {
			if _, err := m.Metrics(e.ctx, vm); !errors.Is(err, sdk.ErrUnsupported) {
				t.Errorf("Metrics without the metrics capability: %v, want sdk.ErrUnsupported", err)
			}
		}
	} else if _, ok := e.vmm.(sdk.MetricsReporter); !ok {
		t.Error("the plugin declares metrics, but its client is no sdk.MetricsReporter")
	}
}

// checkHost: CheckHost answers, twice alike (a plugin may cache), and a
// host it cannot run on comes with a reason the user can act on.
func checkHost(e *vmmEnv) {
	t := e.t
	c, ok := e.vmm.(sdk.HostChecker)
	if !ok {
		t.Fatal("the plugin declares host-check, but its client is no sdk.HostChecker")
	}
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	r, err := c.CheckHost(ctx)
	if err != nil {
		t.Fatalf("CheckHost: %v", err)
	}
	t.Logf("CheckHost: %+v", r)
	if !r.Usable && r.Reason == "" {
		t.Error("CheckHost says not usable without a reason")
	}
	if r.Usable && r.Accelerator == "" {
		t.Error("CheckHost says usable without naming the accelerator Plan would use")
	}
	again, err := c.CheckHost(ctx)
	if err != nil || again.Usable != r.Usable || again.Accelerator != r.Accelerator {
		t.Errorf("a second CheckHost: %+v, %v; the first said %+v", again, err, r)
	}
}

func checkValidPlan(e *vmmEnv) {
	t := e.t
	plan := e.planValid()
	run := e.spec.RunDir
	if len(plan.Argv) == 0 || !filepath.IsAbs(plan.Argv[0]) {
		t.Errorf("plan.Argv %q: want an absolute argv[0]", plan.Argv)
	} else if st, err := os.Stat(plan.Argv[0]); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("plan.Argv[0] %s is not an executable file: %v", plan.Argv[0], err)
	}
	if plan.Dir != "" && !filepath.IsAbs(plan.Dir) {
		t.Errorf("plan.Dir %q is not absolute", plan.Dir)
	}
	for _, kv := range plan.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			t.Errorf("plan.Env entry %q is not KEY=VALUE", kv)
		}
	}
	if len(plan.Handle) == 0 {
		t.Error("plan.Handle is empty: the core could not control the VM later")
	}
	if !inside(plan.AgentSocket, run) {
		t.Errorf("plan.AgentSocket %q: want a socket inside RunDir %s", plan.AgentSocket, run)
	}
	if len(plan.AgentSocket) > 107 {
		t.Errorf("plan.AgentSocket %q is longer than a unix socket path may be (107 bytes)", plan.AgentSocket)
	}
	if !inside(plan.ConsoleLog, run) {
		t.Errorf("plan.ConsoleLog %q: want a file inside RunDir %s", plan.ConsoleLog, run)
	}
	switch {
	case e.info.Capabilities.StateFile && !inside(plan.StateFile, run):
		t.Errorf("plan.StateFile %q: the plugin declares state-file; want a file inside RunDir %s", plan.StateFile, run)
	case !e.info.Capabilities.StateFile && plan.StateFile != "":
		t.Errorf("plan.StateFile %q without the state-file capability", plan.StateFile)
	}
}

// fileState is what Plan must not change about a file outside RunDir.
type fileState struct {
	mode    fs.FileMode
	size    int64
	modTime time.Time
}

func snapshotTree(t *testing.T, root, skip string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[p] = fileState{fi.Mode(), fi.Size(), fi.ModTime()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkNoSideEffects(e *vmmEnv) {
	t := e.t
	before := snapshotTree(t, e.dir, e.spec.RunDir)
	e.planValid()
	after := snapshotTree(t, e.dir, e.spec.RunDir)
	for p, st := range after {
		if was, ok := before[p]; !ok {
			t.Errorf("Plan created %s outside RunDir", p)
		} else if was != st {
			t.Errorf("Plan changed %s outside RunDir: %+v -> %+v", p, was, st)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("Plan removed %s outside RunDir", p)
		}
	}
	// Nothing runs yet: nobody answers on the agent socket.
	if c, err := net.DialTimeout("unix", e.plan.AgentSocket, time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on %s right after Plan: Plan must not start the VM", e.plan.AgentSocket)
	}
}

// invalidSpec is a spec every VMM must refuse with sdk.ErrInvalidArgument
// and a message naming one of names (compared ignoring case, spaces, dots
// and underscores).
type invalidSpec struct {
	name       string
	capability string
	change     func(s *sdk.VMSpec, dir string) (names []string)
}

var invalidSpecs = []invalidSpec{
	{name: "NoVCPUs", change: func(s *sdk.VMSpec, _ string) []string { s.VCPUs = 0; return []string{"vcpu"} }},
	{name: "TinyMemory", change: func(s *sdk.VMSpec, _ string) []string { s.MemoryMiB = 1; return []string{"memory"} }},
	{name: "EmptyRunDir", change: func(s *sdk.VMSpec, _ string) []string { s.RunDir = ""; return []string{"rundir"} }},
	{name: "RelativeRunDir", change: func(s *sdk.VMSpec, _ string) []string { s.RunDir = "run"; return []string{"rundir"} }},
	{name: "MissingDisk", change: func(s *sdk.VMSpec, dir string) []string {
		p := filepath.Join(dir, "disks", "missing.raw")
		s.Disks[0].Path = p
		return []string{p}
	}},
	{name: "UnknownDiskFormat", change: func(s *sdk.VMSpec, _ string) []string {
		s.Disks[0].Format = "vmdk"
		return []string{"vmdk", "format"}
	}},
	{name: "TooManyDisks", change: func(s *sdk.VMSpec, _ string) []string {
		for len(s.Disks) < 27 {
			s.Disks = append(s.Disks, sdk.DiskSpec{Path: s.Disks[0].Path, Format: s.Disks[0].Format, Role: sdk.DiskRoleData, ReadOnly: true})
		}
		return []string{"disks[26]", "26disks"}
	}},
	{name: "UnknownNetworkMode", change: func(s *sdk.VMSpec, _ string) []string {
		s.Network.Mode = 99
		return []string{"network"}
	}},
	{name: "MissingBackingFile", capability: "explicit-chain", change: func(s *sdk.VMSpec, dir string) []string {
		p := filepath.Join(dir, "disks", "missing-base.raw")
		s.Disks[len(s.Disks)-1].BackingChain = []sdk.ChainFile{{Path: p, Format: "raw"}}
		return []string{p}
	}},
	{name: "SandboxUIDWithoutGID", capability: "sandbox", change: func(s *sdk.VMSpec, _ string) []string {
		s.Sandbox = sdk.Sandbox{UID: 0x7ffffff0}
		return []string{"sandbox"}
	}},
}

func normalize(s string) string {
	return strings.NewReplacer(" ", "", "_", "", ".", "", "-", "").Replace(strings.ToLower(s))
}

func checkInvalidSpecs(e *vmmEnv) {
	for _, c := range invalidSpecs {
		e.t.Run(c.name, func(t *testing.T) {
			if c.capability != "" && !slices.Contains(e.info.Capabilities.Strings(), c.capability) {
				t.Skipf("the plugin does not declare %q", c.capability)
			}
			spec := e.spec
			spec.Disks = slices.Clone(e.spec.Disks)
			names := c.change(&spec, e.dir)
			spec.KernelArgs = bootArgs(spec)
			_, err := e.vmm.Plan(e.ctx, spec)
			msg := ""
			if err != nil {
				msg = normalize(err.Error())
			}
			named := slices.ContainsFunc(names, func(n string) bool { return strings.Contains(msg, normalize(n)) })
			if !errors.Is(err, sdk.ErrInvalidArgument) || !named {
				t.Errorf("Plan of %+v: %v; want sdk.ErrInvalidArgument with a message naming one of %q", spec, err, names)
			}
		})
	}
}

// launchAndKill starts a VM, lets it make its sockets (not waiting for a
// guest) and kills it, leaving what a crashed VM leaves in RunDir.
func (e *vmmEnv) launchAndKill() {
	e.t.Helper()
	e.launch()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !e.vm.exited(); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(e.plan.AgentSocket); err == nil {
			break
		}
	}
	e.vm.kill()
}

func checkStopGone(e *vmmEnv) {
	t := e.t
	e.launchAndKill()
	for _, force := range []bool{false, true} {
		if err := e.vmm.Stop(e.ctx, e.ref(), force); err != nil {
			t.Errorf("Stop(force=%v) of a VM whose process is gone: %v; want success", force, err)
		}
	}
}

// checkRestart starts a box again after its VM died: the same spec and
// RunDir, with whatever the first VM left there, plan and run again.
func checkRestart(e *vmmEnv) {
	t := e.t
	e.launchAndKill()
	e.launch()
	if e.s.wait != nil {
		ctx, cancel := context.WithTimeout(e.ctx, e.s.bootTimeout)
		defer cancel()
		if err := waitGuest(ctx, e.s.wait, e.plan.AgentSocket, e.vm); err != nil {
			t.Fatalf("the restarted VM's guest agent: %v", err)
		}
	} else if e.vm.waitExit(2 * time.Second) {
		t.Fatalf("the restarted VM exited at once: %v", e.vm.err)
	}
	if err := e.vmm.Stop(e.ctx, e.ref(), true); err != nil {
		t.Errorf("Stop(force=true) of the restarted VM: %v", err)
	}
	if !e.vm.waitExit(time.Minute) {
		t.Error("the restarted VM still runs a minute after Stop(force=true)")
	}
}

func checkBoots(e *vmmEnv) {
	t := e.t
	t.Logf("the guest agent answered %s after the VM process started", e.boot.Round(time.Millisecond))
	// The agent socket takes several connections at once.
	ctx, cancel := context.WithTimeout(e.ctx, e.s.bootTimeout)
	defer cancel()
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- waitGuest(ctx, e.s.wait, e.plan.AgentSocket, e.vm) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("two connections to the agent socket at once: %v", err)
		}
	}
}

func checkStateFile(e *vmmEnv) {
	var last string
	for deadline := time.Now().Add(e.s.bootTimeout); time.Now().Before(deadline) && !e.vm.exited(); time.Sleep(100 * time.Millisecond) {
		b, err := os.ReadFile(e.plan.StateFile)
		if err == nil {
			last = string(b)
			if state, ok := parseState(b); ok && state == "running" {
				return
			}
		}
	}
	e.t.Errorf("the state file %s never said running (last: %q)", e.plan.StateFile, strings.TrimSpace(last))
}

// parseState reads the state file's "state" field without a JSON schema of
// its own: {"state": "running", ...} padded with spaces.
func parseState(b []byte) (string, bool) {
	m := regexp.MustCompile(`"state"\s*:\s*"([a-z-]+)"`).FindSubmatch(b)
	if m == nil {
		return "", false
	}
	return string(m[1]), true
}

func checkMetrics(e *vmmEnv) {
	m, ok := e.vmm.(sdk.MetricsReporter)
	if !ok {
		e.t.Fatal("the plugin declares metrics, but its client is no sdk.MetricsReporter")
	}
	got, err := m.Metrics(e.ctx, e.ref())
	if err != nil {
		e.t.Fatalf("Metrics of a running VM: %v", err)
	}
	if got.RSS == 0 || got.CPUUser < 0 || got.CPUSystem < 0 {
		e.t.Errorf("Metrics of a running VM: %+v; want its resident memory and CPU time", got)
	}
}

func checkPauseResume(e *vmmEnv) {
	t := e.t
	p, ok := e.vmm.(sdk.Pauser)
	if !ok {
		t.Fatal("the plugin declares pause, but its client is no sdk.Pauser")
	}
	for i := range 2 {
		if err := p.Pause(e.ctx, e.ref()); err != nil {
			t.Fatalf("Pause #%d: %v", i+1, err)
		}
	}
	if e.s.wait != nil {
		// A paused guest does not answer.
		ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		err := e.s.wait(ctx, e.plan.AgentSocket)
		cancel()
		if err == nil {
			t.Error("the guest agent answered while the VM was paused")
		}
	}
	for i := range 2 {
		if err := p.Resume(e.ctx, e.ref()); err != nil {
			t.Fatalf("Resume #%d: %v", i+1, err)
		}
	}
	if e.s.wait != nil {
		ctx, cancel := context.WithTimeout(e.ctx, e.s.bootTimeout)
		defer cancel()
		if err := waitGuest(ctx, e.s.wait, e.plan.AgentSocket, e.vm); err != nil {
			t.Errorf("the guest agent after Resume: %v", err)
		}
	}
	if e.vm.exited() {
		t.Errorf("the VM process exited during Pause/Resume: %v", e.vm.err)
	}
}

// checkReconnect controls the shared VM through a VMM that did not plan it
// (WithReconnect: ideally a new plugin process), with nothing but the
// plan's handle and the process: Metrics and Pause/Resume where offered,
// then Stop, and Stop again once the process is gone.
func checkReconnect(e *vmmEnv) {
	t := e.t
	fresh := e.s.reconnect(t)
	caps := e.info.Capabilities
	if m, ok := fresh.(sdk.MetricsReporter); ok && caps.Metrics {
		if _, err := m.Metrics(e.ctx, e.ref()); err != nil {
			t.Errorf("Metrics from a fresh plugin: %v", err)
		}
	}
	if p, ok := fresh.(sdk.Pauser); ok && caps.Pause {
		if err := p.Pause(e.ctx, e.ref()); err != nil {
			t.Errorf("Pause from a fresh plugin: %v", err)
		}
		if err := p.Resume(e.ctx, e.ref()); err != nil {
			t.Errorf("Resume from a fresh plugin: %v", err)
		}
	}
	// Without force the guest is asked to power off; the core then waits
	// and forces, as here.
	if err := fresh.Stop(e.ctx, e.ref(), false); err != nil {
		t.Errorf("Stop(force=false) from a fresh plugin: %v", err)
	}
	if !e.vm.waitExit(10 * time.Second) {
		if err := fresh.Stop(e.ctx, e.ref(), true); err != nil {
			t.Errorf("Stop(force=true) from a fresh plugin: %v", err)
		}
		if !e.vm.waitExit(time.Minute) {
			t.Fatal("the VM process still runs a minute after Stop(force=true)")
		}
	}
	if err := fresh.Stop(e.ctx, e.ref(), true); err != nil {
		t.Errorf("Stop of the stopped VM from a fresh plugin: %v; want success", err)
	}
}
