package krunvmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/plugins/libkrun/internal/krun"
)

// launchConfig is what Plan writes for the launcher.
type launchConfig struct {
	Library      string       `json:"library"`
	VCPUs        uint8        `json:"vcpus"`
	MemoryMiB    uint32       `json:"memory_mib"`
	Disks        []launchDisk `json:"disks"`
	Kernel       string       `json:"kernel"`
	KernelFormat uint32       `json:"kernel_format"`
	Initrd       string       `json:"initrd"`
	Cmdline      string       `json:"cmdline"`
	VsockPort    uint32       `json:"vsock_port"`
	AgentSock    string       `json:"agent_sock"`
	ControlSock  string       `json:"control_sock"`
	ConsoleLog   string       `json:"console_log"`
	StateFile    string       `json:"state_file"`
	// Network: the guest's AF_INET sockets go through the host (TSI);
	// Ports are krun_set_port_map's "host:guest" entries.
	Network bool     `json:"network"`
	Ports   []string `json:"ports"`
}

type launchDisk struct {
	BlockID  string `json:"block_id"`
	Path     string `json:"path"`
	Format   uint32 `json:"format"`
	ReadOnly bool   `json:"read_only"`
}

// Exit codes of the launcher when no VM ran.
const (
	exitSetup  = 125 // the launch config or the library
	exitConfig = 126 // libkrun refused the configuration
)

// Launch configures a libkrun context as the config file says and enters
// the VM; it returns only when the VM could not start (the launcher's exit
// code then: 125 or 126). Once the VM runs, libkrun exits the process with
// the guest's code.
func Launch(cfgFile string, stderr io.Writer) int {
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(stderr, "boxctl-plugin-libkrun launch: "+format+"\n", args...)
		return code
	}
	b, err := os.ReadFile(cfgFile)
	if err != nil {
		return fail(exitSetup, "%v", err)
	}
	var lc launchConfig
	if err := json.Unmarshal(b, &lc); err != nil {
		return fail(exitSetup, "%s: %v", cfgFile, err)
	}
	lib, err := krun.Open(lc.Library)
	if err != nil {
		return fail(exitSetup, "%v", err)
	}
	// Sockets a killed launcher left: libkrun listens on the agent's path.
	for _, s := range []string{lc.AgentSock, lc.ControlSock} {
		_ = os.Remove(s)
	}
	ctx, err := configure(lib, lc)
	if err != nil {
		return fail(exitConfig, "%v", err)
	}
	efd, err := ctx.ShutdownEventFD()
	if err != nil {
		// Linux builds other than libkrun-efi have none: the agent's
		// Shutdown asks the guest instead.
		efd = -1
	}
	srv, err := serveControl(lc.ControlSock, &stopper{efd: efd, agentSock: lc.AgentSock}, stderr)
	if err != nil {
		_ = ctx.Free()
		return fail(exitSetup, "control socket: %v", err)
	}
	if lc.StateFile != "" {
		if err := writeFileAtomic(lc.StateFile, []byte(`{"state":"running"}`)); err != nil {
			fmt.Fprintf(stderr, "boxctl-plugin-libkrun launch: state file: %v\n", err)
		}
	}
	// krun_start_enter runs the VM on the calling thread and exits the
	// process when the guest ends; the Go runtime's other threads go on
	// serving the control socket.
	runtime.LockOSThread()
	err = ctx.StartEnter()
	srv.Close()
	_ = os.Remove(lc.ControlSock)
	return fail(exitConfig, "%v", err)
}

// configure makes the libkrun context of lc. Every call's error names it.
func configure(lib *krun.Lib, lc launchConfig) (*krun.Ctx, error) {
	ctx, err := lib.CreateCtx()
	if err != nil {
		return nil, err
	}
	steps := []func() error{
		func() error { return ctx.SetVMConfig(lc.VCPUs, lc.MemoryMiB) },
	}
	for _, d := range lc.Disks {
		steps = append(steps, func() error { return ctx.AddDisk2(d.BlockID, d.Path, d.Format, d.ReadOnly) })
	}
	steps = append(steps,
		func() error { return ctx.SetKernel(lc.Kernel, lc.KernelFormat, lc.Initrd, lc.Cmdline) },
		func() error { return vsockDevice(lib, ctx, lc.Network) },
		func() error { return ctx.SetPortMap(lc.Ports) },
		func() error { return ctx.AddVsockPort2(lc.VsockPort, lc.AgentSock, true) },
		func() error { return ctx.SetConsoleOutput(lc.ConsoleLog) },
	)
	for _, step := range steps {
		if err := step(); err != nil {
			_ = ctx.Free()
			return nil, err
		}
	}
	return ctx, nil
}

// vsockDevice sets up the vsock device: without a network it carries only
// the agent's port (no TSI); with one, the guest's inet sockets too. A
// library older than 1.17 has only the implicit device, which uses TSI
// (Plan refuses such a library for a box without network).
func vsockDevice(lib *krun.Lib, ctx *krun.Ctx, network bool) error {
	if !network {
		if err := ctx.DisableImplicitVsock(); err != nil {
			return err
		}
		return ctx.AddVsock(0)
	}
	if !lib.Has("krun_disable_implicit_vsock") || !lib.Has("krun_add_vsock") {
		return nil
	}
	if err := ctx.DisableImplicitVsock(); err != nil {
		return err
	}
	return ctx.AddVsock(krun.TSIHijackInet)
}

// stopper asks the guest to shut down.
type stopper struct {
	efd       int
	agentSock string
}

func (s *stopper) shutdown(ctx context.Context) error {
	if s.efd >= 0 {
		var one [8]byte
		one[0] = 1 // a little-endian 1: the host is x86-64 or arm64
		_, err := syscall.Write(s.efd, one[:])
		if err != nil {
			return fmt.Errorf("write the shutdown eventfd: %w", err)
		}
		return nil
	}
	c, err := agentclient.Dial(ctx, s.agentSock)
	if err != nil {
		return fmt.Errorf("the guest agent: %w", err)
	}
	defer c.Close()
	if err := c.Shutdown(ctx, 0); err != nil {
		return fmt.Errorf("the guest agent's shutdown: %w", err)
	}
	return nil
}

// controlServer serves the launcher's control socket: one request line
// per connection ("shutdown"), answered "ok" or "error: REASON". SIGTERM
// and SIGINT to the launcher are a "shutdown" too.
type controlServer struct {
	l    net.Listener
	once sync.Once
}

func serveControl(path string, s *stopper, stderr io.Writer) (*controlServer, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	cs := &controlServer{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handleControl(c, s)
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for range sigs {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := s.shutdown(ctx); err != nil {
				fmt.Fprintf(stderr, "boxctl-plugin-libkrun launch: graceful stop: %v\n", err)
			}
			cancel()
		}
	}()
	return cs, nil
}

func handleControl(c net.Conn, s *stopper) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return
	}
	var ans string
	switch line {
	case "shutdown\n":
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = s.shutdown(ctx)
		cancel()
		ans = "ok"
		if err != nil {
			ans = "error: " + err.Error()
		}
	default:
		ans = fmt.Sprintf("error: unknown request %q", line)
	}
	_, _ = c.Write([]byte(ans + "\n"))
}

func (cs *controlServer) Close() { cs.once.Do(func() { cs.l.Close() }) }

// writeFileAtomic replaces path with data (temp file + rename).
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
