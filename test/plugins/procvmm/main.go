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
// Its config block can make it misbehave on purpose, for the plugin failure
// tests:
//
//	plugin "procvmm" {
//	  config {
//	    crash_on       = "Plan"   # exit(3) in the middle of this call
//	    hang_on        = "Plan"   # never answer this call
//	    ignore_sigterm = true     # the "VM" ignores graceful stop requests (SIGTERM and the agent's Shutdown)
//	    exit_after     = "1s"     # the "VM" exits by itself after this long
//	    exit_code      = 7        # ... with this code
//	  }
//	}
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
	IgnoreSigterm bool   `hcl:"ignore_sigterm,optional"`
	ExitAfter     string `hcl:"exit_after,optional"`
	ExitCode      int    `hcl:"exit_code,optional"`
}

// handle is what the core persists for a procvmm "VM".
type handle struct {
	RunDir string `json:"run_dir"`
}

type procVMM struct {
	log hclog.Logger
	mu  sync.Mutex
	cfg settings
}

var (
	_ sdk.VMM             = (*procVMM)(nil)
	_ sdk.Pauser          = (*procVMM)(nil)
	_ sdk.MetricsReporter = (*procVMM)(nil)
)

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
	run := spec.RunDir
	console, stateFile, agentSock := filepath.Join(run, "console.log"), filepath.Join(run, "vm-state.json"), filepath.Join(run, "agent.sock")
	args := []string{exe, "vm", "--console", console, "--state-file", stateFile, "--agent-socket", agentSock,
		"--root", filepath.Join(run, "root"), "--cmdline", strings.Join(spec.KernelArgs, " ")}
	if cfg.IgnoreSigterm {
		args = append(args, "--ignore-sigterm")
	}
	if cfg.ExitAfter != "" {
		args = append(args, "--exit-after", cfg.ExitAfter, "--exit-code", strconv.Itoa(cfg.ExitCode))
	}
	h, _ := json.Marshal(handle{RunDir: run})
	return sdk.LaunchPlan{
		Argv:        args,
		Env:         []string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
		Dir:         run,
		Handle:      h,
		AgentSocket: agentSock,
		ConsoleLog:  console,
		StateFile:   stateFile,
		Notice:      "procvmm is a test double: the box runs as a host process",
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

func (p *procVMM) Pause(_ context.Context, vm sdk.VM) error {
	p.misbehave("Pause")
	return signalVM(vm, syscall.SIGSTOP)
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

// vmOptions are the "VM"'s command-line flags, written by Plan.
type vmOptions struct {
	console, stateFile, agentSocket, root, cmdline string
	ignoreTerm                                     bool
	exitAfter                                      time.Duration
	exitCode                                       int
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
