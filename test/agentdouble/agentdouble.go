// Package agentdouble is a TEST DOUBLE of the boxctl guest agent for VMM test doubles whose
// "VM" is a host process (test/plugins/procvmm, and later a libkrun double): it serves the
// agent's gRPC protocol (guest/proto/agentv1) on a unix socket, with no VM, no kernel and no
// isolation, so that the core's whole start path — waiting for the agent, exec, copy, stats,
// a clean shutdown — runs against it in fast tests.
//
// It is the real agent service (package guest/agent) run on the host with two differences,
// which are what makes it a double:
//
//   - The box root is a scratch directory (Config.Root). Upload and Download work inside it
//     (with the agent's own guest/tarsafe rules), and Ping reports it mounted.
//   - Exec runs the command as an ordinary host process, not chrooted: argv[0] is looked up
//     in the host's PATH and a working_dir is taken inside the scratch directory. The user
//     is ignored: commands run as the double's own user.
//
// Reidentify validates like the real agent and records the identity (Identities) instead
// of touching the host's random pool, clock, host name or network; Ping then reports its box
// ID, and Config.BoxID before any. Shutdown answers, then calls Config.PowerOff (the "VM" exits). Quiesce and Thaw succeed
// without freezing anything (the double has no filesystem of its own); Frozen says whether a
// Quiesce is waiting for its Thaw, as the quiesce bracket's tests need to know.
package agentdouble

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/boxctl/boxctl/guest/agent"
	"github.com/boxctl/boxctl/guest/proto/agentv1"
	"github.com/boxctl/boxctl/internal/proc"
)

// Version is what Ping reports as the agent's version.
const Version = "agentdouble"

// Config configures a double.
type Config struct {
	// Root is the scratch directory standing in for the box root; created if missing.
	Root string
	// Console is a file the output of detached commands is appended to (the box's console
	// log); empty discards it.
	Console string
	// PowerOff is called shortly after a Shutdown call was answered, as a guest powers off
	// then; nil does nothing.
	PowerOff func()
	// Logger receives the agent's log; nil discards it.
	Logger *slog.Logger
	// BoxID is the box ID Ping reports until a Reidentify (a real guest's comes from its
	// kernel command line).
	BoxID string
}

// Agent is a running double.
type Agent struct {
	srv     *grpc.Server
	console *os.File // write end of the pipe the agent's detached output goes to

	mu         sync.Mutex
	started    []int // PIDs of the commands Exec started
	frozen     bool
	identities []agent.Identity
}

// New returns a double serving nothing yet.
func New(cfg Config) (*Agent, error) {
	if cfg.Root == "" {
		return nil, errors.New("agentdouble: Config.Root is empty")
	}
	if err := os.MkdirAll(cfg.Root, 0o755); err != nil {
		return nil, fmt.Errorf("agentdouble: %w", err)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("agentdouble: %w", err)
	}
	d := &Agent{srv: grpc.NewServer()}
	consolePath, err := d.openConsole(cfg.Console)
	if err != nil {
		return nil, err
	}
	var shutdown func(context.Context, time.Duration) (func(), error)
	if cfg.PowerOff != nil {
		shutdown = func(context.Context, time.Duration) (func(), error) { return cfg.PowerOff, nil }
	}
	// Files move in and out of the scratch root; commands run on the host ("/").
	files := agent.New(agent.Config{Root: root, Version: Version, Logger: cfg.Logger, Shutdown: shutdown,
		BoxID: cfg.BoxID, Reidentify: d.reidentify})
	cmds := agent.New(agent.Config{Root: "/", Version: Version, Logger: cfg.Logger, Console: consolePath})
	agentv1.RegisterAgentServer(d.srv, &service{Agent: files, cmds: cmds, root: root, d: d})
	return d, nil
}

// openConsole gives the agent a console to open for detached output: a pipe whose other end
// appends to the console log (the agent opens its console without O_APPEND, as a device).
func (d *Agent) openConsole(logPath string) (string, error) {
	if logPath == "" {
		return os.DevNull, nil
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return "", fmt.Errorf("agentdouble: console: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		logf.Close()
		return "", fmt.Errorf("agentdouble: console: %w", err)
	}
	go func() {
		defer logf.Close()
		defer r.Close()
		_, _ = io.Copy(logf, r)
	}()
	d.console = w
	return "/proc/self/fd/" + strconv.Itoa(int(w.Fd())), nil
}

// Serve serves the agent protocol on l until Close.
func (d *Agent) Serve(l net.Listener) error { return d.srv.Serve(l) }

// Close stops serving and kills the commands Exec started that still run (with their
// process groups), as a VM that powers off takes its processes with it.
func (d *Agent) Close() {
	d.srv.Stop()
	d.mu.Lock()
	pids := d.started
	d.started = nil
	d.mu.Unlock()
	for _, pid := range pids {
		// Only a process that is still this process's child: its PID cannot have been
		// reused, and neither can its process group (it leads it: the agent runs every
		// command in a session of its own).
		if proc.ParentOf(pid) == os.Getpid() {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if d.console != nil {
		d.console.Close()
	}
}

func (d *Agent) record(pid int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.started = append(d.started, pid)
}

// service is the agent over the scratch root, with Exec handed to the host-rooted agent.
type service struct {
	*agent.Agent
	cmds *agent.Agent
	root string
	d    *Agent
}

func (s *service) Quiesce(context.Context, *agentv1.QuiesceRequest) (*agentv1.QuiesceResponse, error) {
	s.d.mu.Lock()
	s.d.frozen = true
	s.d.mu.Unlock()
	return &agentv1.QuiesceResponse{}, nil
}

func (s *service) Thaw(context.Context, *agentv1.ThawRequest) (*agentv1.ThawResponse, error) {
	s.d.mu.Lock()
	s.d.frozen = false
	s.d.mu.Unlock()
	return &agentv1.ThawResponse{}, nil
}

func (d *Agent) reidentify(_ context.Context, id agent.Identity) (agent.Reidentified, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := ""
	if n := len(d.identities); n > 0 {
		prev = d.identities[n-1].Hostname
	}
	d.identities = append(d.identities, id)
	return agent.Reidentified{EntropyBits: 8 * len(id.Entropy), PreviousHostname: prev}, nil
}

// Identities returns the identities Reidentify was given, in call order.
func (d *Agent) Identities() []agent.Identity {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]agent.Identity(nil), d.identities...)
}

// Frozen reports whether a Quiesce has not been thawed yet.
func (d *Agent) Frozen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frozen
}

func (s *service) Exec(stream agentv1.Agent_ExecServer) error {
	return s.cmds.Exec(&hostExec{Agent_ExecServer: stream, root: s.root, d: s.d})
}

// hostExec rewrites the start message for a host process: the working directory inside the
// scratch root, the double's own user. It records the PID the agent reports.
type hostExec struct {
	agentv1.Agent_ExecServer
	root  string
	d     *Agent
	first bool
}

func (h *hostExec) Recv() (*agentv1.ExecRequest, error) {
	m, err := h.Agent_ExecServer.Recv()
	if err != nil || h.first {
		return m, err
	}
	h.first = true
	if st := m.GetStart(); st != nil {
		st.WorkingDir = filepath.Join(h.root, path.Clean("/"+st.WorkingDir))
		st.User = fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid())
	}
	return m, nil
}

func (h *hostExec) Send(m *agentv1.ExecResponse) error {
	if st := m.GetStarted(); st != nil {
		h.d.record(int(st.GetPid()))
	}
	return h.Agent_ExecServer.Send(m)
}
