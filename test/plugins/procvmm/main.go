// Command boxctl-plugin-procvmm is a TEST DOUBLE of a VMM plugin: a real
// plugin binary served over go-plugin whose "VM" is an ordinary host process
// (this same binary in `vm` mode). It lets the lifecycle, monitor and
// recovery paths run fast in tests. It boots no kernel and isolates nothing;
// real VMs come from the qemu and libkrun plugins.
//
// Its config block can make it misbehave on purpose, for the plugin failure
// tests:
//
//	plugin "procvmm" {
//	  config {
//	    crash_on       = "Plan"   # exit(3) in the middle of this call
//	    hang_on        = "Plan"   # never answer this call
//	    ignore_sigterm = true     # the "VM" ignores graceful stop requests
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
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/boxctl/boxctl/sdk"
	pluginv1 "github.com/boxctl/boxctl/sdk/proto/v1"
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

func (p *procVMM) Info(context.Context) (*pluginv1.InfoResponse, error) {
	return &pluginv1.InfoResponse{
		Name:         "procvmm",
		Version:      "0.1.0",
		Description:  "test double: the VM is a host process",
		Capabilities: []string{"pause", "graceful-stop", "metrics", "no-guest", "state-file"},
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

// misbehave crashes or hangs when the config asks for it in call.
func (p *procVMM) misbehave(ctx context.Context, call string) {
	p.mu.Lock()
	cfg := p.cfg
	p.mu.Unlock()
	if strings.EqualFold(cfg.CrashOn, call) {
		p.log.Error("crashing on purpose", "call", call)
		time.Sleep(50 * time.Millisecond) // let the log line reach the host
		os.Exit(3)
	}
	if strings.EqualFold(cfg.HangOn, call) {
		p.log.Warn("hanging on purpose", "call", call)
		<-make(chan struct{})
	}
	_ = ctx
}

func (p *procVMM) Plan(ctx context.Context, spec *pluginv1.VMSpec) (*pluginv1.LaunchPlan, error) {
	p.misbehave(ctx, "Plan")
	if spec.GetRunDir() == "" {
		return nil, fmt.Errorf("spec.run_dir is empty: %w", sdk.ErrInvalidArgument)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	cfg := p.cfg
	p.mu.Unlock()
	stateFile := filepath.Join(spec.GetRunDir(), "vm-state.json")
	args := []string{exe, "vm", "--console", filepath.Join(spec.GetRunDir(), "console.log"), "--state-file", stateFile}
	if cfg.IgnoreSigterm {
		args = append(args, "--ignore-sigterm")
	}
	if cfg.ExitAfter != "" {
		args = append(args, "--exit-after", cfg.ExitAfter, "--exit-code", strconv.Itoa(cfg.ExitCode))
	}
	h, _ := json.Marshal(handle{RunDir: spec.GetRunDir()})
	return &pluginv1.LaunchPlan{
		Argv:       args,
		Env:        []string{"PATH=/usr/bin:/bin"},
		Dir:        spec.GetRunDir(),
		Handle:     h,
		ConsoleLog: filepath.Join(spec.GetRunDir(), "console.log"),
		StateFile:  stateFile,
		Notice:     "procvmm is a test double: the box runs as a host process",
	}, nil
}

func (p *procVMM) signal(pid int64, sig syscall.Signal) error {
	if pid <= 0 {
		return fmt.Errorf("no pid: %w", sdk.ErrInvalidArgument)
	}
	err := syscall.Kill(int(pid), sig)
	if err == syscall.ESRCH {
		return nil // already gone: stop is idempotent
	}
	return err
}

func (p *procVMM) Stop(ctx context.Context, req *pluginv1.StopRequest) error {
	p.misbehave(ctx, "Stop")
	if req.GetForce() {
		return p.signal(req.GetPid(), syscall.SIGKILL)
	}
	return p.signal(req.GetPid(), syscall.SIGTERM)
}

func (p *procVMM) Pause(ctx context.Context, req *pluginv1.ControlRequest) error {
	p.misbehave(ctx, "Pause")
	return p.signal(req.GetPid(), syscall.SIGSTOP)
}

func (p *procVMM) Resume(ctx context.Context, req *pluginv1.ControlRequest) error {
	p.misbehave(ctx, "Resume")
	return p.signal(req.GetPid(), syscall.SIGCONT)
}

func (p *procVMM) Metrics(ctx context.Context, req *pluginv1.ControlRequest) (*pluginv1.MetricsResponse, error) {
	p.misbehave(ctx, "Metrics")
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", req.GetPid()))
	if err != nil {
		return nil, fmt.Errorf("vm process %d: %w", req.GetPid(), sdk.ErrNotFound)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseUint(fields[11], 10, 64)
	stime, _ := strconv.ParseUint(fields[12], 10, 64)
	rssPages, _ := strconv.ParseUint(fields[21], 10, 64)
	const tick = uint64(time.Second / 100)
	return &pluginv1.MetricsResponse{
		CpuUserNs:   utime * tick,
		CpuSystemNs: stime * tick,
		RssBytes:    rssPages * uint64(os.Getpagesize()),
	}, nil
}

// runVM is the "VM": it writes a console line, then waits for a signal.
func runVM(args []string) int {
	var console, stateFile string
	var ignoreTerm bool
	var exitAfter time.Duration
	exitCode := 0
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--console":
			i++
			console = args[i]
		case "--state-file":
			i++
			stateFile = args[i]
		case "--ignore-sigterm":
			ignoreTerm = true
		case "--exit-after":
			i++
			exitAfter, _ = time.ParseDuration(args[i])
		case "--exit-code":
			i++
			exitCode, _ = strconv.Atoi(args[i])
		}
	}
	out := os.Stdout
	if console != "" {
		f, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err == nil {
			out = f
		}
	}
	fmt.Fprintf(out, "procvmm: booted pid %d\n", os.Getpid())
	if stateFile != "" {
		tmp := stateFile + ".tmp"
		if os.WriteFile(tmp, []byte(`{"state":"running"}`), 0o600) == nil {
			_ = os.Rename(tmp, stateFile)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var timeout <-chan time.Time
	if exitAfter > 0 {
		timeout = time.After(exitAfter)
	}
	for {
		select {
		case s := <-sigs:
			if ignoreTerm {
				fmt.Fprintf(out, "procvmm: ignoring %v\n", s)
				continue
			}
			fmt.Fprintf(out, "procvmm: powering off on %v\n", s)
			return 0
		case <-timeout:
			fmt.Fprintf(out, "procvmm: exiting by itself with %d\n", exitCode)
			return exitCode
		}
	}
}
