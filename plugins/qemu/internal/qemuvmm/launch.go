package qemuvmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/boxctl/boxctl/internal/atomicfile"
	"github.com/boxctl/boxctl/sdk/agentmux"
	"github.com/boxctl/boxctl/sdk/usernet"
)

// launchConfig is what Plan writes for the launcher.
type launchConfig struct {
	QEMU string `json:"qemu"`
	// Args refer to FDs by number (fd 3 is FDs[0]).
	Args       []string `json:"args"`
	FDs        []fdSpec `json:"fds"`
	RunDir     string   `json:"run_dir"`
	SerialSock string   `json:"serial_sock"`
	AgentSock  string   `json:"agent_sock"`
	QMPSock    string   `json:"qmp_sock"`
	ConsoleLog string   `json:"console_log"`
	// PIDFile is where the launcher records QEMU's PID.
	PIDFile string `json:"qemu_pid_file"`
	// StateFile is kept current with the VM's run state (see state.go).
	StateFile string `json:"state_file"`
	Jail      jail   `json:"jail"`
	// Network is the guest's user-mode network; nil for none.
	Network *netSettings `json:"network,omitempty"`
	// Restore is a saved state QEMU loads instead of booting; the
	// launcher runs the VM once it is loaded.
	Restore string `json:"restore,omitempty"`
	// VirtioFS are the virtiofsd daemons of the VM's virtio-fs shares,
	// started before QEMU and stopped with it.
	VirtioFS []virtiofsDaemon `json:"virtiofs,omitempty"`
}

// statsInterval is how often the launcher writes the network's counters
// for Metrics while they change.
const statsInterval = time.Second

// Launch runs QEMU as described by the config file and serves the agent
// socket until QEMU exits. It returns QEMU's exit code (128+N when QEMU was
// killed by signal N), so the box monitor records how the VM ended.
//
// The launcher keeps the privileges of whoever started it (root, for a
// root boxctl): it opens every file and socket QEMU needs and hands them
// over as descriptors, then starts QEMU confined (an unprivileged user, no
// new privileges, QEMU's syscall filter, the box's cgroup). QEMU dies with
// the launcher (parent-death signal), so killing the launcher — which is
// what the core sees as the VM process — stops the VM.
func Launch(cfgFile string, stderr io.Writer) int {
	b, err := os.ReadFile(cfgFile)
	if err != nil {
		fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: %v\n", err)
		return 125
	}
	var lc launchConfig
	if err := json.Unmarshal(b, &lc); err != nil {
		fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: %s: %v\n", cfgFile, err)
		return 125
	}
	level := slog.LevelWarn
	if os.Getenv("BOXCTL_LOG") == "debug" || os.Getenv("BOXCTL_LOG") == "trace" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	defer removeSockets(lc)
	// The network first: a published port that is in use fails the start
	// before QEMU runs, with the reason in vm.log.
	var network *usernet.Network
	if lc.Network != nil {
		network, err = usernet.New(usernet.Config{AllowHostLoopback: lc.Network.AllowHostLoopback, Ports: lc.Network.Ports, Allow: lc.Network.Allow, ResolvConf: lc.Network.ResolvConf, Logger: log})
		if err != nil {
			fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: network: %v\n", err)
			return 125
		}
		defer network.Close()
	}
	// The box's cgroup holds QEMU and the share daemons; removed (empty)
	// once they are all gone, so this runs after their stops.
	var cg *os.File
	if lc.Jail.Cgroup != "" {
		cg, err = os.Open(lc.Jail.Cgroup)
		if err != nil {
			fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: the box's cgroup: %v\n", err)
			return 125
		}
		defer cg.Close()
		defer func() { _ = os.Remove(lc.Jail.Cgroup) }()
	}
	// The share daemons before QEMU, which connects to them (through the
	// descriptors openFDs opens) and may not start processes itself.
	exe, _ := os.Executable()
	for _, d := range lc.VirtioFS {
		stop, err := startVirtiofsd(exe, d, cg, !lc.Jail.Disabled, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: %v\n", err)
			return 125
		}
		defer stop()
	}
	files, ends, err := openFDs(lc.FDs)
	if err != nil {
		fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: %v\n", err)
		return 125
	}
	events := ends.events
	closeEvents := func() { ends.close() }
	cmd := exec.Command(lc.QEMU, lc.Args...)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.ExtraFiles = files
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if lc.Jail.UID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: lc.Jail.UID, Gid: lc.Jail.GID, Groups: append([]uint32{}, lc.Jail.Groups...)}
	}
	if cg != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
	}
	// The launcher's SIGTERM means "stop now"; QEMU gets it too via the
	// forwarding below, not via the process group.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	waited, err := startLocked(cmd, !lc.Jail.Disabled)
	for _, f := range files {
		f.Close() // QEMU has its copies
	}
	if err != nil {
		closeEvents()
		fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: start %s: %v\n", lc.QEMU, err)
		return 126
	}
	if lc.PIDFile != "" {
		if err := atomicfile.Write(lc.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
			log.Warn("record QEMU's PID", "err", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	states := newStateWriter(lc.StateFile, log)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		watchEvents(ctx, events, states, log)
	}()
	if network != nil && ends.net != nil {
		go func() {
			if err := network.Serve(ctx, ends.net); err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("user-mode network", "err", err)
			}
		}()
		// The plugin's Metrics (another process) reads the counters here.
		go network.ReportStats(ctx, filepath.Join(lc.RunDir, usernet.StatsFileName), statsInterval)
	}
	// A VM restored from a state it cannot run (its disks refused, say)
	// must not linger paused: QEMU is stopped and the launcher exits 1.
	restoreFailed := make(chan error, 1)
	if lc.Restore != "" {
		go func() {
			started := time.Now()
			if err := continueIncoming(ctx, lc.QMPSock); err != nil {
				if ctx.Err() == nil {
					restoreFailed <- err
				}
				return
			}
			log.Debug("state loaded, VM running", "state", lc.Restore, "took", time.Since(started))
		}()
	}
	failed := false
	mux := agentmux.New(agentmux.UnixDialer(lc.SerialSock), lc.AgentSock, agentmux.Options{Logger: log})
	muxDone := make(chan error, 1)
	go func() { muxDone <- mux.Run(ctx) }()

	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-restoreFailed:
			fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: the VM cannot run from its saved state %s: %v\n", lc.Restore, err)
			failed = true
			_ = cmd.Process.Kill()
		case err := <-muxDone:
			if err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: agent channel: %v\n", err)
			}
			muxDone = nil
		case err := <-waited:
			cancel()
			<-watchDone
			states.exited()
			if lc.PIDFile != "" {
				_ = os.Remove(lc.PIDFile)
			}
			if failed {
				return 1
			}
			return exitCode(err)
		}
	}
}

// startLocked starts cmd from a thread of its own and waits for it there.
// no-new-privileges is set on that thread only, and it must stay alive
// while QEMU runs: the parent-death signal fires when the thread that
// forked the child exits, not the process.
func startLocked(cmd *exec.Cmd, noNewPrivs bool) (<-chan error, error) {
	started := make(chan error, 1)
	waited := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, and with it
		// the no-new-privileges flag that the rest of the launcher lacks.
		runtime.LockOSThread()
		if noNewPrivs {
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				started <- fmt.Errorf("set no-new-privileges: %w", err)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return waited, nil
}

func removeSockets(lc launchConfig) {
	for _, s := range []string{lc.SerialSock, lc.AgentSock, lc.QMPSock} {
		if s != "" {
			_ = os.Remove(s)
		}
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 125
}
