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
	"syscall"

	"github.com/boxctl/boxctl/guest/hostmux"
)

// launchConfig is what Plan writes for the launcher.
type launchConfig struct {
	QEMU        string   `json:"qemu"`
	Args        []string `json:"args"`
	RunDir      string   `json:"run_dir"`
	SerialSock  string   `json:"serial_sock"`
	AgentSock   string   `json:"agent_sock"`
	QMPSock     string   `json:"qmp_sock"`
	ConsoleLog  string   `json:"console_log"`
	QEMUPIDFile string   `json:"qemu_pid_file"`
}

// Launch runs QEMU as described by the config file and serves the agent
// socket until QEMU exits. It returns QEMU's exit code (128+N when QEMU was
// killed by signal N), so the box monitor records how the VM ended.
//
// QEMU dies with the launcher (parent-death signal), so killing the
// launcher — which is what the core sees as the VM process — stops the VM.
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
	for _, s := range []string{lc.SerialSock, lc.AgentSock, lc.QMPSock} {
		_ = os.Remove(s)
	}
	cmd := exec.Command(lc.QEMU, lc.Args...)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The launcher's SIGTERM means "stop now"; QEMU gets it too via the
	// forwarding below, not via the process group.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: start %s: %v\n", lc.QEMU, err)
		return 126
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	level := slog.LevelWarn
	if os.Getenv("BOXCTL_LOG") == "debug" || os.Getenv("BOXCTL_LOG") == "trace" {
		level = slog.LevelDebug
	}
	mux := hostmux.New(hostmux.UnixDialer(lc.SerialSock), lc.AgentSock, hostmux.Options{
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
	})
	muxDone := make(chan error, 1)
	go func() { muxDone <- mux.Run(ctx) }()

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case err := <-muxDone:
			if err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintf(stderr, "boxctl-plugin-qemu launch: agent channel: %v\n", err)
			}
			muxDone = nil
		case err := <-waited:
			cancel()
			for _, s := range []string{lc.SerialSock, lc.AgentSock, lc.QMPSock} {
				_ = os.Remove(s)
			}
			return exitCode(err)
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
