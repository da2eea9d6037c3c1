package krunvmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/guest/agentclient"
	"github.com/boxctl/boxctl/internal/atomicfile"
	"github.com/boxctl/boxctl/plugins/libkrun/internal/krun"
	"github.com/boxctl/boxctl/sdk"
	"github.com/boxctl/boxctl/sdk/usernet"
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
	// Network is the guest's: none (""), boxctl's user-mode network
	// (netUser, UserNet) or libkrun's TSI (netTSI, with Ports as
	// krun_set_port_map's "host:guest" entries).
	Network string       `json:"network,omitempty"`
	UserNet *netSettings `json:"user_net,omitempty"`
	Ports   []string     `json:"ports"`
	// Shares are host directories served by libkrun's virtio-fs.
	Shares []launchShare `json:"shares,omitempty"`
}

// launchShare is a host directory share: krun_add_virtiofs, or
// krun_add_virtiofs3 with read_only for a read-only one.
type launchShare struct {
	Tag      string `json:"tag"`
	HostPath string `json:"host_path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Networks of a launch config.
const (
	// netUser: a virtio-net device (krun_add_net_unixstream) on the
	// launcher's sdk/usernet stack, the guest boot contract's addresses,
	// published ports bound by the launcher: what the qemu plugin gives.
	netUser = "user"
	// netTSI: libkrun's transparent socket impersonation, for a library
	// without krun_add_net_unixstream; it needs a TSI-aware guest kernel.
	netTSI = "tsi"
)

// netSettings is what the launcher's user-mode network needs.
type netSettings struct {
	AllowHostLoopback bool              `json:"allow_host_loopback,omitempty"`
	Ports             []sdk.PortForward `json:"ports,omitempty"`
	// Allow is the egress allow-list the launcher's stack enforces.
	Allow []sdk.NetworkAllow `json:"allow,omitempty"`
	// StatsFile is where the launcher keeps the network's counters for
	// the plugin's Metrics.
	StatsFile string `json:"stats_file,omitempty"`
}

// guestMAC is the guest NIC's address (QEMU's default, as under the qemu
// plugin).
var guestMAC = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

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
	// The network first: a published port that is in use fails the start
	// before the VM is configured, with the reason in vm.log.
	var link *netLink
	if lc.Network == netUser {
		link, err = newNetLink(lc.UserNet, stderr)
		if err != nil {
			return fail(exitSetup, "network: %v", err)
		}
		defer link.close()
	}
	ctx, err := configure(lib, lc, link)
	if err != nil {
		return fail(exitConfig, "%v", err)
	}
	if link != nil {
		go link.serve(stderr)
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
		if err := atomicfile.Write(lc.StateFile, []byte(`{"state":"running"}`), 0o644); err != nil {
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
func configure(lib *krun.Lib, lc launchConfig, link *netLink) (*krun.Ctx, error) {
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
	for _, sh := range lc.Shares {
		if sh.ReadOnly {
			steps = append(steps, func() error { return ctx.AddVirtiofsReadOnly(sh.Tag, sh.HostPath) })
		} else {
			steps = append(steps, func() error { return ctx.AddVirtiofs(sh.Tag, sh.HostPath) })
		}
	}
	steps = append(steps, func() error { return ctx.SetKernel(lc.Kernel, lc.KernelFormat, lc.Initrd, lc.Cmdline) })
	if link != nil {
		// No offloads: the user-mode stack takes whole, checksummed frames.
		steps = append(steps, func() error { return ctx.AddNetUnixstream(int(link.vmEnd.Fd()), guestMAC, 0, 0) })
	}
	steps = append(steps, func() error { return vsockDevice(lib, ctx, lc.Network == netTSI) })
	if lc.Network != netUser {
		// Always an array: NULL would publish every listening guest port.
		steps = append(steps, func() error { return ctx.SetPortMap(lc.Ports) })
	}
	steps = append(steps,
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

// vsockDevice sets up the vsock device: it carries the agent's port, and
// with tsi the guest's inet sockets too. A library older than 1.17 has only
// the implicit device, which uses TSI unless the VM has a network device
// (Plan refuses such a library for a box without network).
func vsockDevice(lib *krun.Lib, ctx *krun.Ctx, tsi bool) error {
	if !lib.Has("krun_disable_implicit_vsock") || !lib.Has("krun_add_vsock") {
		if !tsi {
			return lib.CheckSymbols("a VM whose vsock device carries only the agent", krun.Isolation())
		}
		return nil
	}
	if !tsi {
		if err := ctx.DisableImplicitVsock(); err != nil {
			return err
		}
		return ctx.AddVsock(0)
	}
	if err := ctx.DisableImplicitVsock(); err != nil {
		return err
	}
	return ctx.AddVsock(krun.TSIHijackInet)
}

// netLink is the guest's link to the launcher's user-mode network: a
// stream socket pair whose VM end libkrun's virtio-net device uses.
type netLink struct {
	network *usernet.Network
	vmEnd   *os.File
	mine    net.Conn
	// stopStats ends the writing of the network's counters.
	stopStats context.CancelFunc
}

func newNetLink(s *netSettings, stderr io.Writer) (*netLink, error) {
	level := slog.LevelWarn
	if v := os.Getenv("BOXCTL_LOG"); v == "debug" || v == "trace" {
		level = slog.LevelDebug
	}
	n, err := usernet.New(usernet.Config{AllowHostLoopback: s.AllowHostLoopback, Ports: s.Ports, Allow: s.Allow,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[1]), "usernet")
	mine, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		n.Close()
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	l := &netLink{network: n, vmEnd: os.NewFile(uintptr(fds[0]), "usernet-vm"), mine: mine, stopStats: func() {}}
	if s.StatsFile != "" {
		// krun_start_enter exits the process when the guest ends, so the
		// file is as fresh as the last interval.
		ctx, cancel := context.WithCancel(context.Background())
		l.stopStats = cancel
		go n.ReportStats(ctx, s.StatsFile, time.Second)
	}
	return l, nil
}

func (l *netLink) serve(stderr io.Writer) {
	if err := l.network.Serve(context.Background(), l.mine); err != nil {
		fmt.Fprintf(stderr, "boxctl-plugin-libkrun launch: user-mode network: %v\n", err)
	}
}

func (l *netLink) close() {
	l.stopStats()
	l.network.Close()
	l.vmEnd.Close()
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
