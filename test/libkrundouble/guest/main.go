// Command guest is the stand-in guest of the libkrun TEST DOUBLE
// (test/libkrundouble): the double's krun_start_enter runs it on the host
// in place of a VM. It checks what a boxctl guest relies on (that the
// agent's vsock port from the kernel command line is the port mapped to a
// unix socket with listen=true), writes boot lines to the console file,
// serves the agent double (test/agentdouble) on the mapped socket, and
// powers off — exit 0 — on SIGTERM, on the agent's Shutdown, or when the
// shutdown eventfd is written. Given a network link (the socket of
// krun_add_net_unixstream) it asks, in libkrun's framing (each ethernet
// frame after its length as 4 big-endian bytes), who has the gateway's
// address, and writes the answer to the console.
// KRUN_DOUBLE_GUEST_EXIT_AFTER (a duration)
// and KRUN_DOUBLE_GUEST_EXIT_CODE make it end by itself with that code.
package main

import (
	"encoding/binary"
	"fmt"
	"io"
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
	if fdStr := os.Getenv("KRUN_DOUBLE_NET_FD"); fdStr != "" {
		if fd, err := strconv.Atoi(fdStr); err == nil {
			go probeNetwork(os.NewFile(uintptr(fd), "net"), console)
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

// guestMAC is the NIC address the plugin gives libkrun.
var guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// probeNetwork sends an ARP request for the gateway over the link and
// reports the first ARP reply from it.
func probeNetwork(link *os.File, console *os.File) {
	gw, guest := guestboot.GatewayAddr.As4(), guestboot.GuestAddr.As4()
	frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, guestMAC...)
	frame = append(frame, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1) // ethernet ARP, IPv4, request
	frame = append(frame, guestMAC...)
	frame = append(frame, guest[:]...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, gw[:]...)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(frame)))
	if _, err := link.Write(append(msg, frame...)); err != nil {
		fmt.Fprintf(console, "krun double guest: network: %v\n", err)
		return
	}
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(link, hdr[:]); err != nil {
			fmt.Fprintf(console, "krun double guest: network: %v\n", err)
			return
		}
		f := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(link, f); err != nil {
			fmt.Fprintf(console, "krun double guest: network: %v\n", err)
			return
		}
		if len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && string(f[28:32]) == string(gw[:]) {
			fmt.Fprintf(console, "krun double guest: network: %s is at %s\n", guestboot.GatewayAddr, net.HardwareAddr(f[22:28]))
			return
		}
	}
}
