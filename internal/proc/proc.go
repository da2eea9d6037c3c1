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
	st, err := ReadStat(pid)
	if err != nil {
		return Ident{}, err
	}
	if st.State == 'Z' || st.State == 'X' {
		return Ident{}, fmt.Errorf("process %d has exited: %w", pid, os.ErrNotExist)
	}
	boot, err := BootID()
	if err != nil {
		return Ident{}, err
	}
	return Ident{PID: pid, StartTicks: st.StartTicks, BootID: boot}, nil
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
	st, err := ReadStat(id.PID)
	if err != nil {
		return false
	}
	return st.StartTicks == id.StartTicks && st.State != 'Z' && st.State != 'X'
}

// Stat is what boxctl reads of /proc/<pid>/stat.
type Stat struct {
	State      byte   // field 3: R, S, D, Z, ...
	PPID       int    // field 4
	UserTicks  uint64 // field 14, in clock ticks
	SysTicks   uint64 // field 15, in clock ticks
	StartTicks uint64 // field 22, clock ticks since boot
	RSSPages   uint64 // field 24
}

// clockTick is the unit of /proc's times: USER_HZ, 100 on every Linux
// architecture boxctl runs on.
const clockTick = time.Second / 100

// CPUUser is the time the process has run in user mode.
func (s Stat) CPUUser() time.Duration { return time.Duration(s.UserTicks) * clockTick }

// CPUSystem is the time the process has run in the kernel.
func (s Stat) CPUSystem() time.Duration { return time.Duration(s.SysTicks) * clockTick }

// RSS is the process's resident set in bytes.
func (s Stat) RSS() uint64 { return s.RSSPages * uint64(os.Getpagesize()) }

// ReadStat reads /proc/<pid>/stat. A process that is gone is an error that
// wraps fs.ErrNotExist.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, fmt.Errorf("process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may contain spaces
	// and parentheses; fields after the last ')' are plain.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return Stat{}, fmt.Errorf("process %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3.
	if len(f) < 22 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("process %d: malformed stat", pid)
	}
	st := Stat{State: f[0][0]}
	nums := []struct {
		field int
		into  *uint64
	}{{14, &st.UserTicks}, {15, &st.SysTicks}, {22, &st.StartTicks}, {24, &st.RSSPages}}
	for _, n := range nums {
		if *n.into, err = strconv.ParseUint(f[n.field-3], 10, 64); err != nil {
			return Stat{}, fmt.Errorf("process %d: malformed stat field %d: %w", pid, n.field, err)
		}
	}
	if st.PPID, err = strconv.Atoi(f[1]); err != nil {
		return Stat{}, fmt.Errorf("process %d: malformed stat field 4: %w", pid, err)
	}
	return st, nil
}

// ParentOf returns the parent PID of pid, or -1 if pid is gone.
func ParentOf(pid int) int {
	st, err := ReadStat(pid)
	if err != nil {
		return -1
	}
	return st.PPID
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
