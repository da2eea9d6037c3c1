// Command guest is the stand-in guest of the libkrun TEST DOUBLE
// (test/libkrundouble): the double's krun_start_enter runs it on the host
// in place of a VM. It checks what a boxctl guest relies on (that the
// agent's vsock port from the kernel command line is the port mapped to a
// unix socket with listen=true), writes boot lines to the console file,
// serves the agent double (test/agentdouble) on the mapped socket, and
// powers off — exit 0 — on SIGTERM, on the agent's Shutdown, or when the
// shutdown eventfd is written. KRUN_DOUBLE_GUEST_EXIT_AFTER (a duration)
// and KRUN_DOUBLE_GUEST_EXIT_CODE make it end by itself with that code.
package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/boxctl/boxctl/sdk/guestboot"
	"github.com/boxctl/boxctl/test/agentdouble"
)

func main() { os.Exit(run()) }

func run() int {
	cmdline := os.Getenv("KRUN_DOUBLE_CMDLINE")
	consolePath := os.Getenv("KRUN_DOUBLE_CONSOLE")
	sock := os.Getenv("KRUN_DOUBLE_VSOCK_PATH")
	console := os.Stderr
	if consolePath != "" {
		f, err := os.OpenFile(consolePath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "krun double guest: console: %v\n", err)
			return 1
		}
		defer f.Close()
		console = f
	}
	fmt.Fprintf(console, "krun double guest: booted pid %d\n", os.Getpid())
	fmt.Fprintf(console, "krun double guest: kernel command line: %s\n", cmdline)
	boot, warnings := guestboot.Parse(cmdline)
	for _, w := range warnings {
		fmt.Fprintf(console, "krun double guest: kernel command line: %s\n", w)
	}
	if got := os.Getenv("KRUN_DOUBLE_VSOCK_PORT"); got != strconv.FormatUint(uint64(boot.VsockPort), 10) || sock == "" {
		fmt.Fprintf(console, "krun double guest: the agent listens on vsock port %d, but the port mapped to a socket (listen=true) is %q at %q\n", boot.VsockPort, got, sock)
		return 1
	}
	powerOff := make(chan string, 3)
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintf(console, "krun double guest: %v\n", err)
		return 1
	}
	defer os.Remove(sock)
	root := filepath.Join(filepath.Dir(sock), "root")
	if consolePath != "" {
		root = filepath.Join(filepath.Dir(consolePath), "root")
	}
	d, err := agentdouble.New(agentdouble.Config{
		Root:     root,
		Console:  consolePath,
		PowerOff: func() { powerOff <- "the agent's shutdown" },
		Logger:   slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: slog.LevelWarn})),
		BoxID:    boot.BoxID,
	})
	if err != nil {
		fmt.Fprintf(console, "krun double guest: %v\n", err)
		return 1
	}
	defer d.Close()
	go func() { _ = d.Serve(l) }()
	if fdStr := os.Getenv("KRUN_DOUBLE_SHUTDOWN_FD"); fdStr != "" {
		fd, err := strconv.Atoi(fdStr)
		if err == nil {
			go func() {
				buf := make([]byte, 8)
				for {
					n, err := syscall.Read(fd, buf)
					if err == syscall.EINTR {
						continue
					}
					if err == nil && n == 8 {
						powerOff <- "the shutdown eventfd"
					}
					return
				}
			}()
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var timeout <-chan time.Time
	code := 0
	if after := os.Getenv("KRUN_DOUBLE_GUEST_EXIT_AFTER"); after != "" {
		dur, err := time.ParseDuration(after)
		if err != nil {
			fmt.Fprintf(console, "krun double guest: KRUN_DOUBLE_GUEST_EXIT_AFTER: %v\n", err)
			return 1
		}
		timeout = time.After(dur)
		code, _ = strconv.Atoi(os.Getenv("KRUN_DOUBLE_GUEST_EXIT_CODE"))
	}
	select {
	case s := <-sigs:
		fmt.Fprintf(console, "krun double guest: powering off on %v\n", s)
		return 0
	case why := <-powerOff:
		fmt.Fprintf(console, "krun double guest: powering off on %s\n", why)
		return 0
	case <-timeout:
		fmt.Fprintf(console, "krun double guest: exiting by itself with %d\n", code)
		return code
	}
}
