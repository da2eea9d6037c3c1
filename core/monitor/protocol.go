// Package monitor is the per-box supervisor process (`boxctl monitor`, a
// hidden subcommand; think conmon or Lima's hostagent). It starts the VM
// from the VMM plugin's launch plan as its child, records the VM's identity
// and exit, stops the VM when its owning process dies (non-detached boxes),
// and serves a control socket that later boxctl processes use to ask for
// status or a stop. This package also holds the client of that socket and
// the launch file the runtime hands the monitor.
package monitor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/boxctl/boxctl/core/model"
	"github.com/boxctl/boxctl/internal/proc"
)

// Launch is what the runtime writes to the box directory for the monitor.
type Launch struct {
	BoxID string `json:"box_id"`
	RunID string `json:"run_id"`
	// The VM process to start, from the VMM plugin's launch plan.
	Argv        []string `json:"argv"`
	Env         []string `json:"env"`
	Dir         string   `json:"dir"`
	Handle      []byte   `json:"handle,omitempty"`
	AgentSocket string   `json:"agent_socket,omitempty"`
	ConsoleLog  string   `json:"console_log,omitempty"`
	// StateFile is the VM run-state file the VM process keeps current
	// (LaunchPlan.state_file); empty when the VMM cannot report.
	StateFile string `json:"state_file,omitempty"`
	VMM       string `json:"vmm"`
	// Detached runs ignore their owner; others stop when Owner exits.
	Detached bool       `json:"detached"`
	Owner    proc.Ident `json:"owner"`
	// Config is the runtime's effective configuration as HCL, so the
	// monitor reaches the same plugins; PluginDirs are the plugin search
	// directories.
	Config     string   `json:"config"`
	PluginDirs []string `json:"plugin_dirs,omitempty"`
	// StopTimeout is the grace period when the monitor stops the VM on its
	// own (owner exited).
	StopTimeout time.Duration `json:"stop_timeout"`
	// BootTimeout bounds the wait for the guest agent.
	BootTimeout time.Duration      `json:"boot_timeout"`
	Health      *model.HealthCheck `json:"health,omitempty"`
	// LogLevel for the monitor's own log file.
	LogLevel string `json:"log_level,omitempty"`
	// Identity, for a VM restored from a saved state, is who its guest is
	// to become once its agent answers (Agent.WaitReady).
	Identity *Identity `json:"identity,omitempty"`
}

// Identity is a box's identity in its guest: its ID and host name.
type Identity struct {
	BoxID    string `json:"box_id"`
	Hostname string `json:"hostname"`
}

// WriteLaunch writes l to path atomically.
func WriteLaunch(path string, l *Launch) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write launch file: %w", err)
	}
	return os.Rename(tmp, path)
}

// ReadLaunch reads a launch file.
func ReadLaunch(path string) (*Launch, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read launch file: %w", err)
	}
	var l Launch
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("decode launch file %s: %w", path, err)
	}
	return &l, nil
}

// Ready is the line a monitor writes to its ready pipe: OK once the VM runs
// (and its agent answers), else the error that stopped it.
type Ready struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	VMPID int    `json:"vm_pid,omitempty"`
}

// request and response are the control socket's JSON lines.
type request struct {
	Op        string `json:"op"` // "status", "stop", "hold" or "release"
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
}

type response struct {
	OK     bool         `json:"ok"`
	Error  string       `json:"error,omitempty"`
	Status model.Status `json:"status,omitempty"`
	VM     proc.Ident   `json:"vm"`
	Exit   *model.Exit  `json:"exit,omitempty"`
}

// Hold guards a quiesce bracket: the monitor resumes the VM (and thaws the
// guest) should the caller die, ctx end, or release not come within limit.
// The caller pauses the VM only after Hold returns, and calls release once
// the VM runs again. A killed boxctl closes the connection, as does the end
// of ctx, so a paused or frozen guest is never left behind.
func Hold(ctx context.Context, socket string, limit time.Duration) (release func() error, err error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	conn, err := d.DialContext(dctx, "unix", socket)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w (%s): %v", ErrNoMonitor, socket, err)
	}
	r := bufio.NewReader(conn)
	exchange := func(req request) error {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if err := json.NewEncoder(conn).Encode(req); err != nil {
			return fmt.Errorf("monitor %s: send %s: %w", socket, req.Op, err)
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("monitor %s: %s: no answer: %w", socket, req.Op, err)
		}
		var resp response
		if err := json.Unmarshal(line, &resp); err != nil {
			return fmt.Errorf("monitor %s: %s: bad answer: %w", socket, req.Op, err)
		}
		if !resp.OK {
			return fmt.Errorf("monitor: %s", resp.Error)
		}
		return nil
	}
	if err := exchange(request{Op: "hold", TimeoutMS: limit.Milliseconds()}); err != nil {
		conn.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return func() error {
		defer conn.Close()
		if !stop() {
			return fmt.Errorf("monitor %s: the hold ended with its context (%w): the monitor resumed the VM", socket, context.Cause(ctx))
		}
		return exchange(request{Op: "release"})
	}, nil
}

// ErrNoMonitor: nothing answers on the monitor socket (the monitor is gone).
var ErrNoMonitor = errors.New("box monitor is not running")

// Status asks the monitor behind socket for the VM's status.
func Status(ctx context.Context, socket string) (model.Status, proc.Ident, error) {
	resp, err := roundTrip(ctx, socket, request{Op: "status"})
	if err != nil {
		return "", proc.Ident{}, err
	}
	return resp.Status, resp.VM, nil
}

// Stop asks the monitor to stop the VM gracefully, escalating to a forced
// stop after timeout (0 means force at once), and waits until the VM has
// exited and its exit is recorded.
func Stop(ctx context.Context, socket string, timeout time.Duration) (*model.Exit, error) {
	resp, err := roundTrip(ctx, socket, request{Op: "stop", TimeoutMS: timeout.Milliseconds()})
	if err != nil {
		return nil, err
	}
	return resp.Exit, nil
}

func roundTrip(ctx context.Context, socket string, req request) (*response, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	conn, err := d.DialContext(dctx, "unix", socket)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w (%s): %v", ErrNoMonitor, socket, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("monitor %s: send %s: %w", socket, req.Op, err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("monitor %s: %s: %w", socket, req.Op, ctx.Err())
		}
		return nil, fmt.Errorf("monitor %s: %s: no answer: %w", socket, req.Op, err)
	}
	var resp response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("monitor %s: %s: bad answer: %w", socket, req.Op, err)
	}
	if !resp.OK {
		return &resp, fmt.Errorf("monitor: %s", resp.Error)
	}
	return &resp, nil
}
