// Package proc identifies processes across boxctl invocations. A PID alone
// is not an identity: after a process exits its PID can be reused by an
// unrelated one, and after a host reboot every PID is meaningless. An Ident
// pairs the PID with the process start time (in clock ticks since boot, from
// /proc/<pid>/stat) and the kernel boot ID.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Ident identifies one process instance on one boot of the host.
type Ident struct {
	PID int `json:"pid"`
	// StartTicks is field 22 of /proc/<pid>/stat.
	StartTicks uint64 `json:"start_ticks"`
	BootID     string `json:"boot_id"`
}

// IsZero reports whether id names no process.
func (id Ident) IsZero() bool { return id.PID == 0 }

func (id Ident) String() string {
	if id.IsZero() {
		return "none"
	}
	return fmt.Sprintf("pid %d (start %d)", id.PID, id.StartTicks)
}

// BootID returns the kernel's boot ID, which changes on every boot.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Of returns the identity of the running process pid.
func Of(pid int) (Ident, error) {
	ticks, state, err := stat(pid)
	if err != nil {
		return Ident{}, err
	}
	if state == 'Z' || state == 'X' {
		return Ident{}, fmt.Errorf("process %d has exited: %w", pid, os.ErrNotExist)
	}
	boot, err := BootID()
	if err != nil {
		return Ident{}, err
	}
	return Ident{PID: pid, StartTicks: ticks, BootID: boot}, nil
}

// Self returns the identity of the calling process.
func Self() (Ident, error) { return Of(os.Getpid()) }

// Alive reports whether the process id names still runs: same boot, same
// PID, same start time, and not a zombie.
func (id Ident) Alive() bool {
	if id.IsZero() {
		return false
	}
	boot, err := BootID()
	if err != nil || boot != id.BootID {
		return false
	}
	ticks, state, err := stat(id.PID)
	if err != nil {
		return false
	}
	return ticks == id.StartTicks && state != 'Z' && state != 'X'
}

// stat reads the start time and state of pid from /proc/<pid>/stat.
func stat(pid int) (startTicks uint64, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may contain spaces
	// and parentheses; fields after the last ')' are plain.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	fields := strings.Fields(string(b[i+2:]))
	// fields[0] is field 3 (state); start time is field 22 -> fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("process %d: malformed stat", pid)
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("process %d: malformed start time: %w", pid, err)
	}
	return ticks, fields[0][0], nil
}

// WaitExit blocks until the process id is gone or ctx ends. It uses a pidfd
// where the kernel has them, so it wakes at once; otherwise it polls.
func WaitExit(ctx context.Context, id Ident) error {
	if !id.Alive() {
		return nil
	}
	fd, err := unix.PidfdOpen(id.PID, 0)
	if err == nil {
		defer unix.Close(fd)
		// The PID may have been reused between Alive and PidfdOpen.
		if !id.Alive() {
			return nil
		}
		return waitPidfd(ctx, fd, id)
	}
	return pollExit(ctx, id, 50*time.Millisecond)
}

func waitPidfd(ctx context.Context, fd int, id Ident) error {
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return pollExit(ctx, id, 50*time.Millisecond)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func pollExit(ctx context.Context, id Ident, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for id.Alive() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
